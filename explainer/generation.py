"""Prompting and greedy answer generation with the model's own chat template."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from explainer._sequence import pad_sequences


class GenerationError(RuntimeError):
    """Prompting or generating the answer failed; the original error is the `__cause__`."""


@dataclass(frozen=True)
class Prompt:
    """The rendered chat prompt and the processor's tensors for it (batch 1)."""

    text: str
    inputs: dict[str, torch.Tensor]
    question: str
    system_prompt: str | None

    @property
    def length(self) -> int:
        return self.inputs["input_ids"].shape[1]


def check_question(tokenizer, question: str, max_tokens: int | None = None) -> None:
    """Raise `ValueError` for a question the prompt must not carry: empty, holding one of the
    tokenizer's special tokens (a question could inject a chat turn or an image), or longer than
    `max_tokens` tokens (checked before the model sees it)."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty; pass the text the model should answer")
    # the special tokens the tokenizer names, and those only its vocabulary marks special: a
    # checkpoint's `<start_of_turn>` is often an added special token outside its special-tokens map
    specials = set(tokenizer.all_special_tokens) | {
        added.content for added in tokenizer.added_tokens_decoder.values() if added.special
    }
    controls = sorted(token for token in specials if token and token in question)
    if controls:
        raise ValueError(
            f"the question contains the chat control token(s) {controls}; remove them: a question that "
            "writes them could open a turn or an image block of its own"
        )
    if max_tokens is not None:
        n_tokens = len(tokenizer(question, add_special_tokens=False)["input_ids"])
        if n_tokens > max_tokens:
            raise ValueError(
                f"the question is {n_tokens} tokens long, over the limit of {max_tokens} "
                "(max_question_tokens); shorten it or raise the limit"
            )


def build_prompt(
    processor,
    images: Sequence[Image.Image],
    question: str,
    system_prompt: str | None = None,
    *,
    max_question_tokens: int | None = None,
    image_labels: Sequence[str | None] | None = None,
) -> Prompt:
    """One user turn with every image, then the question; the generation prompt opens the model's turn.

    `image_labels` (one per image, None for none) are written before their images ("prior",
    "current", "slice 12 of 85"): the model is told which image is which. They are checked as
    questions are (no chat control tokens), without a length limit of their own.
    """
    check_question(processor.tokenizer, question, max_question_tokens)
    labels = list(image_labels) if image_labels is not None else [None] * len(images)
    if len(labels) != len(images):
        raise ValueError(
            f"{len(labels)} image labels for {len(images)} images; give one per image (None for none)"
        )
    content = []
    for label, _image in zip(labels, images, strict=True):
        if label:
            check_question(processor.tokenizer, label)
            content.append({"type": "text", "text": label})
        content.append({"type": "image"})
    content.append({"type": "text", "text": question})
    messages = [{"role": "user", "content": content}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=list(images) or None, return_tensors="pt")
    return Prompt(text=text, inputs=dict(inputs), question=question, system_prompt=system_prompt)


def stop_token_ids(model: nn.Module) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = model.config.get_text_config().eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) - {None}


def generate_answer(
    model: nn.Module, prompt: Prompt, *, max_new_tokens: int, generation_kwargs: dict | None = None
) -> torch.Tensor:
    """Answer token ids [n] (greedy unless `generation_kwargs` say otherwise), without the stop token
    (`generate_answers` for one prompt)."""
    [answer] = generate_answers(
        model, [prompt], max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs
    )
    return answer


def generate_answers(
    model: nn.Module, prompts: Sequence[Prompt], *, max_new_tokens: int, generation_kwargs: dict | None = None
) -> list[torch.Tensor]:
    """Each prompt's answer token ids [n] without the stop token, from one `generate` call over the
    prompts left-padded into a batch (generation then derives positions from the attention mask, so
    greedy answers are those of one prompt at a time; `tests/explainer/test_batch.py` checks it).

    Image and begin-of-image tokens are suppressed: a model that emitted them would ask for image
    features that do not exist ("Image features and image tokens do not match").
    """
    config = model.config
    pad = config.get_text_config().pad_token_id
    suppress = [config.image_token_id, getattr(config, "boi_token_id", None)]
    kwargs = {"do_sample": False, "pad_token_id": pad, **(generation_kwargs or {})}
    device = model.get_input_embeddings().weight.device
    batch = (
        prompts[0].inputs if len(prompts) == 1 else pad_sequences([p.inputs for p in prompts], pad, "left")
    )
    inputs = {key: value.to(device) for key, value in batch.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            suppress_tokens=[token for token in suppress if token is not None],
            **kwargs,
        )
    stops = stop_token_ids(model) | {pad}
    answers = []
    for answer in output[:, inputs["input_ids"].shape[1] :].cpu():
        ends = [index for index, token in enumerate(answer.tolist()) if token in stops]
        answers.append(answer[: ends[0]] if ends else answer)
    return answers


def full_sequence(prompt: Prompt, answer_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Prompt + answer as one batch-1 input for the teacher-forced explanation forward."""
    answer = answer_ids.unsqueeze(0).to(prompt.inputs["input_ids"].device)
    inputs = dict(prompt.inputs)
    inputs["input_ids"] = torch.cat([prompt.inputs["input_ids"], answer], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "token_type_ids" in prompt.inputs:
        inputs["token_type_ids"] = torch.cat(
            [prompt.inputs["token_type_ids"], torch.zeros_like(answer)], dim=1
        )
    return inputs
