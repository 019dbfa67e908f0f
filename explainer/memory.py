"""The explainer's memory model: every byte estimate it plans with, and the plans made from them.

The memory budget (`max_chunk_bytes`, 2 GiB by default) bounds what one step of an explanation may
add on top of the model: the attention maps and their gradients on the eager path, one block of
attention scores on the blockwise path, the perturbed copies of a forward. The device's total memory
bounds what a path needs at all. Estimates count values, not allocator overheads: they are the
terms that grow with sequence length, targets or copies (docs/performance.md compares them with
measured peaks).

    eager maps              layers · heads · L² · (dtype bytes + 3 · 4)
    targets per chunk       budget // (batch · layers · heads · L² · 3 · 4)
    blockwise               layers · L · (per-token activations) · dtype bytes + one block
    one attention block     8 · 4 · heads · L · rows
    one perturbed copy      16 · L · hidden · dtype bytes (+ 16 · patches · width · dtype bytes per image)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from vocabulary.names import ATTENTION_PATHS

DEFAULT_MAX_CHUNK_BYTES = 2 * 1024**3
DEFAULT_BLOCK_ROWS = 256  # query rows per blockwise attention block (see `block_rows`)
FLOAT32_BYTES = 4
GRADIENT_COPIES = 3  # per map entry and target: ∂y/∂A, its product with A, and Ā, in float32
BLOCK_VALUES = 8  # per head, query row and key of a block: scores, probabilities, their gradients (float32)
ACTIVATION_VALUES = 16  # per token and hidden unit: what one forward keeps alive (a rough upper bound)
MAX_COPIES_PER_FORWARD = 64


class RelevanceMemoryError(MemoryError):
    """A sequence whose explanation cannot fit in the device's memory on the chosen path."""


def _text(model: nn.Module):
    return model.config.get_text_config()


def attention_map_entries(model: nn.Module, seq_len: int) -> int:
    """Entries of every language layer's attention maps for one sequence: layers · heads · L²."""
    text = _text(model)
    return text.num_hidden_layers * text.num_attention_heads * seq_len * seq_len


def eager_attention_bytes(model: nn.Module, seq_len: int) -> int:
    """Memory the eager path needs beyond the forward's activations: every language layer's maps
    [heads, L, L] in the model's dtype, and one target's gradients, products and Ā in float32."""
    return attention_map_entries(model, seq_len) * (model.dtype.itemsize + GRADIENT_COPIES * FLOAT32_BYTES)


def targets_per_chunk(model: nn.Module, seq_len: int, max_chunk_bytes: int, batch: int = 1) -> int:
    """How many targets' attention gradients fit in the budget at once (at least one): each target
    of a batch of `batch` sequences padded to `seq_len` holds `GRADIENT_COPIES` float32 values per
    map entry of every sequence (one vector-Jacobian product serves target k of all of them)."""
    per_target = GRADIENT_COPIES * attention_map_entries(model, seq_len) * batch * FLOAT32_BYTES
    return max(1, max_chunk_bytes // per_target)


def eager_batch_fits(model: nn.Module, lengths: Sequence[int], max_chunk_bytes: int) -> bool:
    """Whether sequences of `lengths`, padded to the longest, fit in the budget as one eager batch."""
    return len(lengths) * eager_attention_bytes(model, max(lengths)) <= max_chunk_bytes


def _block_bytes_per_row(model: nn.Module, seq_len: int) -> int:
    return BLOCK_VALUES * FLOAT32_BYTES * _text(model).num_attention_heads * seq_len


def block_rows(model: nn.Module, seq_len: int, max_chunk_bytes: int) -> int:
    """Query rows per blockwise attention block: at most `DEFAULT_BLOCK_ROWS`, and within the budget.

    Without the row bound a sequence of a few thousand tokens is one block: every layer then
    computes full L×L scores (sliding layers too) and, on CPU, each layer's block-sized temporaries
    fragment the heap (`explainer.runtime.keep_freed_memory`), so memory grows with L²; 256-row
    blocks were as fast or faster there (docs/performance.md, "Long prompts")."""
    budget_rows = max_chunk_bytes // _block_bytes_per_row(model, seq_len)
    return max(1, min(seq_len, DEFAULT_BLOCK_ROWS, budget_rows))


def blockwise_bytes(model: nn.Module, seq_len: int, max_chunk_bytes: int) -> int:
    """Memory the blockwise path needs: what autograd keeps per layer for the backward, linear in
    L (≈ 14 hidden-size and 3 intermediate-size vectors per token, queries, keys and values), plus
    one block of attention scores (`block_rows` rows)."""
    text = _text(model)
    head_dim = getattr(text, "head_dim", text.hidden_size // text.num_attention_heads)
    per_token = 14 * text.hidden_size + 3 * text.intermediate_size
    per_token += 2 * (text.num_attention_heads + 2 * text.num_key_value_heads) * head_dim
    block = _block_bytes_per_row(model, seq_len) * block_rows(model, seq_len, max_chunk_bytes)
    return text.num_hidden_layers * seq_len * per_token * model.dtype.itemsize + block


def vision_bytes_per_image(model: nn.Module) -> int:
    """Activation memory of one image through the vision tower (≈ 16 × patches × width values)."""
    vision = model.config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return ACTIVATION_VALUES * patches * vision.hidden_size * model.dtype.itemsize


def copies_per_forward(
    model: nn.Module, seq_len: int, max_chunk_bytes: int, extra_bytes_per_copy: int = 0
) -> int:
    """Perturbed copies of a sequence per forward within the budget (activations of one copy ≈
    16 × L × hidden values, plus `extra_bytes_per_copy`), at most `MAX_COPIES_PER_FORWARD`."""
    per_copy = ACTIVATION_VALUES * seq_len * _text(model).hidden_size * model.dtype.itemsize
    return max(1, min(MAX_COPIES_PER_FORWARD, max_chunk_bytes // (per_copy + extra_bytes_per_copy)))


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of `device` (None where unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def check_attention(attention: str) -> None:
    """Raise `ValueError` unless `attention` is one of `ATTENTION_PATHS`."""
    if attention not in ATTENTION_PATHS:
        raise ValueError(f"attention {attention!r} is not one of {', '.join(ATTENTION_PATHS)}")


def attention_path(
    model: nn.Module, seq_len: int, attention: str, max_chunk_bytes: int, batch: int = 1
) -> str:
    """ "eager" or "blockwise" for `batch` sequences of at most `seq_len` tokens.

    "auto" takes eager attention while the batch's maps fit in the budget: it is faster for short
    prompts. Beyond, the blockwise path, whose memory grows linearly with length (it explains one
    sequence at a time). A path that cannot fit in the device's memory at all raises
    `RelevanceMemoryError` saying how long the sequence is, what it would need, what to change.
    """
    check_attention(attention)
    eager = batch * eager_attention_bytes(model, seq_len)
    if attention == "auto":
        attention = "eager" if eager <= max_chunk_bytes else "blockwise"
    device = model.get_input_embeddings().weight.device
    available = device_memory_bytes(device)
    need = eager if attention == "eager" else blockwise_bytes(model, seq_len, max_chunk_bytes)
    if available is not None and need > available:
        advice = (
            "use attention='blockwise' (or 'auto'), whose memory grows linearly with length"
            if attention == "eager"
            else "explain fewer images or slices per prompt, a shorter answer (max_new_tokens), "
            "or run on a device with more memory"
        )
        raise RelevanceMemoryError(
            f"the sequence is {seq_len:,} tokens: {attention} relevance needs about "
            f"{need / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} GiB of {device}; {advice}"
        )
    return attention
