"""Phantom encoding matches the Gemma3Processor's own output."""

import torch

from phantom import sample
from phantom.training.data import build_phantom_processor, encode, prompt_text


def test_encoded_cases_equal_the_processors_own_output():
    processor = build_phantom_processor()
    cases = sample(6, 11)
    encoded = encode(cases, processor)
    for i, case in enumerate(cases):
        text = prompt_text(processor, case.question) + case.answer + "<end_of_turn>"
        expected = processor(text=[text], images=[[case.image]], return_tensors="pt")
        length = expected["input_ids"].shape[1]
        batch = encoded.batch(slice(i, i + 1))
        assert torch.equal(batch["input_ids"][0, :length], expected["input_ids"][0])
        assert torch.equal(batch["token_type_ids"][0, :length], expected["token_type_ids"][0])
        assert torch.allclose(batch["pixel_values"], expected["pixel_values"], atol=1e-6)
        answer = batch["labels"][0][batch["labels"][0] != -100]
        assert processor.tokenizer.decode(answer, skip_special_tokens=True).strip() == case.answer
