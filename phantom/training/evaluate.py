"""Quick checks of phantom models: greedy answers, answer attention on the object, attention blocking.

These are the trainer's own measurements (the explainer engine's pointing game lives in `bench/`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from transformers import Gemma3Processor

from phantom.cases import PhantomCase
from phantom.training.data import EncodedCases, prompt_text
from phantom.training.routing import answer_rows, cell_keys

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


@torch.no_grad()
def greedy_answers(
    model: nn.Module, processor: Gemma3Processor, prompts: list[tuple[str, list]], batch_size: int
) -> list[str]:
    """Greedy answers to (prompt text, its images) pairs (left-padded batches, image and boi tokens
    suppressed), stripped strings."""
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    suppress = [model.config.image_token_id, model.config.boi_token_id]
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts, images = zip(*prompts[start : start + batch_size], strict=True)
            inputs = processor(text=list(texts), images=list(images), return_tensors="pt", padding=True)
            out = model.generate(
                **inputs, max_new_tokens=8, do_sample=False, suppress_tokens=suppress, pad_token_id=0
            )
            new_tokens = out[:, inputs["input_ids"].shape[1] :]
            answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return answers


def generate_answers(
    model: nn.Module, processor: Gemma3Processor, cases: list[PhantomCase], batch_size: int = 64
) -> list[str]:
    """Greedy answers to single-image phantom cases (`greedy_answers`)."""
    prompts = [(prompt_text(processor, case.question), [case.image]) for case in cases]
    return greedy_answers(model, processor, prompts, batch_size)


def exact_accuracy(model: nn.Module, processor: Gemma3Processor, cases: list[PhantomCase]) -> float:
    """Share of cases whose greedy answer equals the expected answer string."""
    answers = generate_answers(model, processor, cases)
    return float(np.mean([a == c.answer for a, c in zip(answers, cases, strict=True)]))


def yes_rate(model: nn.Module, processor: Gemma3Processor, cases: list[PhantomCase]) -> float:
    """Share of greedy answers that are "yes"."""
    return float(np.mean([a == "yes" for a in generate_answers(model, processor, cases)]))


@torch.no_grad()
def teacher_forced(
    model: nn.Module, encoded: EncodedCases, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per answer token: whether the argmax at row p-1 equals the token p.

    Returns (correct [N, L] bool, label_mask [N, L] bool), aligned with the label positions.
    """
    correct, label_mask = [], []
    for start in range(0, len(encoded), batch_size):
        batch = encoded.batch(slice(start, start + batch_size))
        logits = model(**{k: batch[k] for k in MODEL_INPUTS}).logits  # [B, L, V]
        labels = batch["labels"]
        predicted = torch.full_like(labels, -1)
        predicted[:, 1:] = logits[:, :-1].argmax(-1)
        correct.append(predicted == labels)
        label_mask.append(labels != -100)
    return torch.cat(correct), torch.cat(label_mask)


def exact_from_tokens(correct: torch.Tensor, label_mask: torch.Tensor) -> float:
    """Teacher-forced exact match (every answer token right) = greedy exact match without sampling."""
    return float(((correct | ~label_mask).all(dim=1)).float().mean())


@torch.no_grad()
def answer_attention_mass(
    model: nn.Module, encoded: EncodedCases, end_of_turn_id: int, evidence: str = "object_cells"
) -> list[float]:
    """Per language layer: mean head-averaged attention mass of answer rows on the evidence cells.

    Averaged over answer rows of cases where the evidence is present.
    """
    sums, count = None, 0
    for start in range(0, len(encoded), 64):
        batch = encoded.batch(slice(start, start + 64))
        out = model(**{k: batch[k] for k in MODEL_INPUTS}, output_attentions=True)
        rows = answer_rows(batch["labels"], end_of_turn_id) & batch[evidence].any(1)[:, None]
        keys = cell_keys(batch["token_type_ids"], batch[evidence])
        masses = torch.stack([(a.mean(1) * keys[:, None, :]).sum(-1)[rows].sum() for a in out.attentions])
        sums = masses if sums is None else sums + masses
        count += int(rows.sum())
    return (sums / max(count, 1)).tolist()


@contextmanager
def block_attention(model: nn.Module, blocked: torch.Tensor) -> Iterator[None]:
    """Remove the (query row, key) pairs in `blocked` [B, L, L] from every language layer's softmax.

    Works on the additive float masks of eager attention (and boolean masks); hooks are removed on exit.
    """

    def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        mask = kwargs.get("attention_mask")
        if mask is None:
            raise ValueError("block_attention needs an explicit attention mask in every layer")
        if mask.dtype == torch.bool:
            kwargs["attention_mask"] = mask & ~blocked[:, None]
        else:
            kwargs["attention_mask"] = mask.masked_fill(blocked[:, None], torch.finfo(mask.dtype).min)
        return args, kwargs

    handles = [
        module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        for name, module in model.named_modules()
        if name.startswith("model.language_model.layers") and name.endswith("self_attn")
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def blocking_test(
    model: nn.Module,
    encoded: EncodedCases,
    end_of_turn_id: int,
    seed: int = 0,
    evidence: str = "object_cells",
) -> dict[str, list[float]]:
    """Per answer word: teacher-forced accuracy with no blocking, with the answer rows' attention to
    the evidence cells blocked, and with as many random other image cells blocked instead.

    Only cases with evidence present. Returns {"none"|"object"|"random": [accuracy per word index]}.
    """
    generator = torch.Generator().manual_seed(seed)
    results: dict[str, list[torch.Tensor]] = {"none": [], "object": [], "random": []}
    present = torch.nonzero(encoded.__getattribute__(evidence).any(1)).squeeze(1)
    for start in range(0, len(present), 64):
        batch = encoded.batch(present[start : start + 64])
        rows = answer_rows(batch["labels"], end_of_turn_id)  # [B, L]
        cells = batch[evidence]  # [B, G]
        random_cells = torch.zeros_like(cells)
        for i in range(cells.shape[0]):
            others = torch.nonzero(~cells[i]).squeeze(1)
            pick = others[torch.randperm(len(others), generator=generator)[: int(cells[i].sum())]]
            random_cells[i, pick] = True
        for name, chosen in (("none", None), ("object", cells), ("random", random_cells)):
            inputs = {k: batch[k] for k in MODEL_INPUTS}
            if chosen is None:
                logits = model(**inputs).logits
            else:
                blocked = rows[:, :, None] & cell_keys(batch["token_type_ids"], chosen)[:, None, :]
                with block_attention(model, blocked):
                    logits = model(**inputs).logits
            predicted = logits.argmax(-1)  # [B, L]
            word_rows = [torch.nonzero(r).squeeze(1) for r in rows]
            for i, positions in enumerate(word_rows):
                right = predicted[i, positions] == batch["labels"][i, positions + 1]
                results[name].append(right)
    out: dict[str, list[float]] = {}
    for name, rights in results.items():
        width = max(len(r) for r in rights)
        per_word = [[float(r[w]) for r in rights if len(r) > w] for w in range(width)]
        out[name] = [float(np.mean(words)) for words in per_word]
    return out
