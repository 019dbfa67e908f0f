"""Phantom model sizes, tokenizer corpus, processor, and phantom cases encoded as training tensors.

The phantom model sees a 64×64 image as an 8×8 grid of SigLIP patches (patch 8, projector pool
kernel 1), i.e. 64 image soft tokens; soft token k covers grid row k // 8, column k % 8.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Gemma3Processor

from phantom.build import SPECIAL_TOKENS, TinyGemma3Spec, build_processor, build_tokenizer
from phantom.cases import KINDS, LEVELS, QUESTIONS, SIDES, Box, PhantomCase

IMAGE_SIZE = 64
GRID = 8  # image tokens per side: IMAGE_SIZE // patch_size, projector kernel 1
VOCAB_SIZE = 160

PHANTOM_SPEC = TinyGemma3Spec(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    # Gemma's mix of sliding and full layers; the window covers the whole ~90-token sequence.
    sliding_window=128,
    layer_types=("sliding_attention", "sliding_attention", "sliding_attention", "full_attention"),
    image_size=IMAGE_SIZE,
    patch_size=IMAGE_SIZE // GRID,
    vision_hidden_size=64,
    vision_intermediate_size=128,
    vision_layers=2,
    vision_heads=4,
    mm_tokens_per_image=GRID * GRID,
)


def answers() -> list[str]:
    """Every answer the phantom tasks use, in a fixed order."""
    return [f"{side} {level} zone" for side in SIDES for level in LEVELS] + ["yes", "no"]


def corpus() -> list[str]:
    """Deterministic tokenizer corpus: the text pieces of every chat the tasks can produce.

    Pieces are split at special tokens, as the tokenizer sees them, so merges match real inputs.
    """
    pieces: list[str] = []
    for task, templates in QUESTIONS.items():
        for template in templates:
            for kind in KINDS:
                chat = f"\nuser\n\n\n{template.format(kind=kind)}"
                replies = answers()[:-2] if task == "locate" else ["yes", "no"]
                pieces += [chat, *(f"\nmodel\n{reply}" for reply in replies)]
    return pieces


def build_phantom_processor() -> Gemma3Processor:
    """The phantom's Gemma3Processor: BPE tokenizer trained on `corpus()`, 64² images, 64 image tokens."""
    tokenizer = build_tokenizer(corpus(), VOCAB_SIZE, split_newlines=True)
    return build_processor(tokenizer, image_size=IMAGE_SIZE, mm_tokens_per_image=GRID * GRID)


def prompt_text(processor: Gemma3Processor, question: str) -> str:
    """Chat-template prompt for one image and a question, ending with the model-turn header."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def footprint(box: Box | None, image_side: int, grid: int = GRID) -> np.ndarray:
    """Grid cells a box overlaps after the processor's plain resize, [grid * grid] bool (row-major).

    An empty footprint when `box` is None.
    """
    cells = np.zeros((grid, grid), dtype=bool)
    if box is not None:
        cell = image_side / grid
        x0, y0, x1, y1 = box
        cols = slice(int(x0 // cell), int(np.ceil(x1 / cell)))
        rows = slice(int(y0 // cell), int(np.ceil(y1 / cell)))
        cells[rows, cols] = True
    return cells.reshape(-1)


def mirror_index(grid: int = GRID) -> torch.Tensor:
    """[grid * grid] long: the left–right mirror of each row-major cell, (row, col) → (row, grid - 1 - col).

    `cells[..., mirror_index()]` mirrors a [..., grid * grid] footprint; the map is its own inverse.
    """
    return torch.arange(grid * grid).reshape(grid, grid).flip(1).reshape(-1)


@dataclass
class EncodedCases:
    """Cases as tensors, right-padded to a common length L.

    input_ids, attention_mask, token_type_ids, labels: [N, L] (labels -100 outside the answer and
    its closing <end_of_turn>); pixels: [N, 64, 64] uint8, the processor's resized grey image
    (pixel_values = pixels / 127.5 - 1 on all three channels, checked at encoding);
    object_cells / marker_cells: [N, 64] bool footprints of the asked object and the corner tag;
    presence: [N] bool, the question is a presence question; object_zone: [N] the asked object's
    zone (side index × 3 + level index; -1 when absent); prompt_lengths: [N] tokens before the answer.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    labels: torch.Tensor
    pixels: torch.Tensor
    object_cells: torch.Tensor
    marker_cells: torch.Tensor
    presence: torch.Tensor
    object_zone: torch.Tensor
    prompt_lengths: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def mirror_cells(self) -> torch.Tensor:
        """[N, 64] bool: the asked object's left–right mirror cells, where the relocation control's
        vision tower moves its content."""
        return self.object_cells[:, mirror_index()]

    def batch(self, index: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        """Model inputs plus `labels` and evidence cells for the selected rows.

        `shortcut_cells` is the shortcut model's evidence: the tag for presence questions, the asked
        object for locate questions. `mirror_cells` is the relocation model's.
        """
        pixel_values = (self.pixels[index].float() / 127.5 - 1.0).unsqueeze(1).expand(-1, 3, -1, -1)
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "token_type_ids": self.token_type_ids[index],
            "pixel_values": pixel_values.contiguous(),
            "labels": self.labels[index],
            "object_cells": self.object_cells[index],
            "marker_cells": self.marker_cells[index],
            "object_zone": self.object_zone[index],
            "shortcut_cells": torch.where(
                self.presence[index, None], self.marker_cells[index], self.object_cells[index]
            ),
            "mirror_cells": self.mirror_cells[index],
        }


def encode(cases: list[PhantomCase], processor: Gemma3Processor, chunk: int = 512) -> EncodedCases:
    """Tokenize prompt + answer + <end_of_turn> for every case and preprocess its image.

    Same tensors as calling `processor(text=..., images=...)` per case: without pan-and-scan the
    token ids do not depend on the image's content, so each distinct (question, answer) text is
    tokenized once and the images go through `processor.image_processor` in chunks.
    Raises ValueError if the prompt's tokens are not a prefix of the full sequence's tokens (then
    the answer positions would be wrong).
    """
    blank = [[cases[0].image]]
    texts: dict[tuple[str, str], tuple[list[int], list[int], int]] = {}
    for case in cases:
        key = (case.question, case.answer)
        if key not in texts:
            prompt = prompt_text(processor, case.question)
            full = processor(text=[prompt + case.answer + "<end_of_turn>"], images=blank, return_tensors="np")
            prefix = list(processor(text=[prompt], images=blank, return_tensors="np")["input_ids"][0])
            ids = list(full["input_ids"][0])
            if ids[: len(prefix)] != prefix:
                raise ValueError(f"prompt tokens are not a prefix of prompt + answer for {key!r}")
            texts[key] = (ids, list(full["token_type_ids"][0]), len(prefix))
    pixels = []
    for start in range(0, len(cases), chunk):
        images = [case.image for case in cases[start : start + chunk]]
        values = np.asarray(processor.image_processor(images, return_tensors="np")["pixel_values"])
        grey = np.round((values[:, 0] + 1.0) * 127.5)  # values: [n, 3, 64, 64] in [-1, 1]
        if not (
            np.allclose(values, values[:, :1]) and np.allclose(grey / 127.5 - 1.0, values[:, 0], atol=1e-5)
        ):
            raise ValueError("processor output is not an 8-bit grey image; uint8 storage would lose it")
        pixels.append(grey.astype(np.uint8))
    rows = [texts[(case.question, case.answer)] for case in cases]
    length, n = max(len(ids) for ids, _, _ in rows), len(rows)
    input_ids = torch.full((n, length), processor.tokenizer.pad_token_id, dtype=torch.long)
    token_type_ids = torch.zeros((n, length), dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    labels = torch.full((n, length), -100, dtype=torch.long)
    for i, (ids, types, prompt_length) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        token_type_ids[i, : len(ids)] = torch.tensor(types)
        attention_mask[i, : len(ids)] = 1
        labels[i, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
    side = cases[0].scene.size
    return EncodedCases(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        labels=labels,
        pixels=torch.from_numpy(np.concatenate(pixels)),
        object_cells=torch.from_numpy(np.stack([footprint(c.lesion_box, side) for c in cases])),
        marker_cells=torch.from_numpy(np.stack([footprint(c.marker_box, side) for c in cases])),
        presence=torch.tensor([c.task == "presence" for c in cases]),
        object_zone=torch.tensor([_zone(c) for c in cases]),
        prompt_lengths=torch.tensor([prompt_length for _, _, prompt_length in rows]),
    )


def _zone(case: PhantomCase) -> int:
    if case.lesion_box is None:
        return -1
    asked = case.objects[0]
    return SIDES.index(asked.side) * len(LEVELS) + LEVELS.index(asked.level)


def special_token_ids(processor: Gemma3Processor) -> dict[str, int]:
    """Ids of Gemma's specials in this tokenizer, by name without brackets."""
    return {
        re.sub(r"[<>]", "", tok): processor.tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS
    }
