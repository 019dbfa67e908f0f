import torch
from transformers import AutoProcessor

from phantom.build import (
    TinyGemma3Spec,
    build_processor,
    build_tokenizer,
    gemma3_config,
    random_gemma3,
)


def test_processor_round_trips_offline(tmp_path):
    tokenizer = build_tokenizer(["Where is the nodule? The nodule is in the right upper zone."], 120)
    processor = build_processor(tokenizer, image_size=32, mm_tokens_per_image=4)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert reloaded.image_seq_length == 4
    config = gemma3_config(TinyGemma3Spec(), tokenizer)
    assert reloaded.tokenizer.convert_tokens_to_ids("<image_soft_token>") == config.image_token_id
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1 and tokenizer.bos_token_id == 2


def test_padded_vocabulary_extends_the_model_past_the_tokenizer():
    tokenizer = build_tokenizer(["Where is the nodule? The nodule is in the right upper zone."], 120)
    assert gemma3_config(TinyGemma3Spec(), tokenizer).text_config.vocab_size == len(tokenizer)
    padded = gemma3_config(TinyGemma3Spec(padded_vocab_size=1_000), tokenizer)
    assert padded.text_config.vocab_size == 1_000
    smaller = gemma3_config(TinyGemma3Spec(padded_vocab_size=10), tokenizer)
    assert smaller.text_config.vocab_size == len(tokenizer)  # never below the tokenizer's ids


def test_random_models_are_created_on_the_requested_device_and_dtype():
    corpus = ["Where is the nodule? The nodule is in the right upper zone."]
    model, _ = random_gemma3(TinyGemma3Spec(), corpus, vocab_size=120, dtype=torch.bfloat16)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    projection = model.model.multi_modal_projector.mm_input_projection_weight.float()
    assert 0.4 < projection.std().item() < 0.6  # drawn from N(0, 0.5²), not Gemma3's zeros
    on_meta, _ = random_gemma3(TinyGemma3Spec(), corpus, vocab_size=120, device="meta")
    assert {parameter.device.type for parameter in on_meta.parameters()} == {"meta"}
