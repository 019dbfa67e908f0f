"""Attention relevance in memory linear in sequence length: no L×L map is ever kept.

The language model runs with an attention implementation registered with transformers under
`IMPLEMENTATION`. Its forward attends one block of query rows at a time and keeps only the queries,
keys and values (post-norm, post-RoPE; what autograd would keep for the projections anyway) and a
description of the mask. Its backward recomputes each block's probabilities, forms the exact
gradients of queries, keys and values (FlashAttention's backward), and, in the same pass, the
block's share of Chefer's gradient-weighted map,

    Ā_block = mean_h (A_block ⊙ ∂y/∂A_block)⁺,   ∂y/∂A_block = dO_block · Vᵀ,

which it applies at once to the relevance row being propagated (`RelevanceTap.rows`):
v ← v + v·Ā_l. The backward visits layers top first, the order in which the row is propagated, so
no layer's Ā is ever stored. One backward explains one target.

The mask is transformers' own: a mask creator registered under the same name records the arguments
the model asked for (its composed mask function: causal, sliding window, bidirectional image blocks,
padding) and `MaskDescription.rows` evaluates them for a block with `sdpa_mask`, the function SDPA
and eager attention are built from. Each block computes only the key columns its mask allows (the
sliding window's band plus any image block), so local layers cost O(L · window).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from explainer.memory import DEFAULT_BLOCK_ROWS

IMPLEMENTATION = "vlm_audit_blockwise"


@dataclass
class MaskDescription:
    """The arguments transformers passed to the mask creator; evaluated block by block.

    transformers evaluates a composed mask function under `torch.vmap` because it cannot know that
    a custom one is index-based; its own (causal, sliding window, image blocks, padding) are, and
    broadcasting them is ~50× faster. The first block is evaluated both ways: broadcasting is used
    from then on only if it raised nothing and agreed.

    One description serves every layer of its type in a forward, and their backwards. The first
    evaluation of a block of rows covers every key and records (`spans`) the span of key columns
    the block allows and, where each row allows one run of keys (causal, sliding window and image
    blocks do; checked on the evaluated rows), every row's run: later layers and every backward
    build the block's mask from those runs with two comparisons, else evaluate the mask function
    over the span only. A sliding layer's block then costs O(window) per row, not O(L).
    """

    arguments: dict[str, Any]
    broadcastable: bool | None = None  # unknown until the first block
    # (start, stop) of a block of rows → (first_key, stop_key, runs): its allowed key columns and
    # [2, n] each row's run of allowed keys (None where a row's keys are not one run); O(L) in all
    spans: dict[tuple[int, int], tuple[int, int, torch.Tensor | None]] = field(
        default_factory=dict, repr=False
    )

    def _evaluate(
        self, start: int, stop: int, use_vmap: bool, first_key: int = 0, stop_key: int | None = None
    ) -> torch.Tensor:
        stop_key = self.arguments["kv_length"] if stop_key is None else stop_key
        mask = sdpa_mask(
            **{
                **self.arguments,
                "q_length": stop - start,
                "q_offset": self.arguments.get("q_offset", 0) + start,
                "kv_length": stop_key - first_key,
                "kv_offset": self.arguments.get("kv_offset", 0) + first_key,
                "allow_is_causal_skip": False,
                "allow_is_bidirectional_skip": False,
                "use_vmap": use_vmap,
            }
        )
        return mask.expand(self.arguments["batch_size"], 1, stop - start, stop_key - first_key)

    def rows(self, start: int, stop: int, first_key: int = 0, stop_key: int | None = None) -> torch.Tensor:
        """[B, 1, stop - start, stop_key - first_key] bool: which keys first_key..stop_key-1 (default:
        all) query rows start..stop-1 may attend."""
        if self.broadcastable is None:
            exact = self._evaluate(start, stop, True, first_key, stop_key)
            try:
                self.broadcastable = torch.equal(
                    self._evaluate(start, stop, False, first_key, stop_key), exact
                )
            except Exception:  # a mask function that only works under vmap
                self.broadcastable = False
            return exact
        return self._evaluate(start, stop, not self.broadcastable, first_key, stop_key)

    def block(self, start: int, stop: int) -> tuple[int, int, torch.Tensor]:
        """(first_key, stop_key, allowed [B, 1, stop - start, stop_key - first_key]) for query rows
        start..stop-1: the span of key columns any of them may attend, and the mask over it."""
        known = self.spans.get((start, stop))
        if known is not None:
            first_key, stop_key, runs = known
            if runs is None:
                return first_key, stop_key, self.rows(start, stop, first_key, stop_key)
            return first_key, stop_key, _run_mask(runs, first_key, stop_key, self.arguments["batch_size"])
        allowed = self.rows(start, stop)
        first_key, stop_key = _column_span(allowed)
        self.spans[(start, stop)] = (first_key, stop_key, _runs(allowed))
        return first_key, stop_key, allowed[..., first_key:stop_key]


def _runs(allowed: torch.Tensor) -> torch.Tensor | None:
    """[2, n]: (lo, hi) such that row i of `allowed` [B, 1, n, K] allows exactly keys lo_i..hi_i-1,
    the same in every batch entry (lo = hi = 0: none); None where that does not describe it."""
    rows = allowed[0, 0].to(torch.uint8)  # [n, K]
    width = rows.shape[-1]
    some = rows.any(dim=-1)
    runs = torch.stack(  # argmax: the first maximum
        [rows.argmax(dim=-1) * some, (width - rows.flip(-1).argmax(dim=-1)) * some]
    )
    return runs if torch.equal(_run_mask(runs, 0, width, allowed.shape[0]), allowed) else None


def _run_mask(runs: torch.Tensor, first_key: int, stop_key: int, batch: int) -> torch.Tensor:
    """[B, 1, n, stop_key - first_key] bool: keys first_key..stop_key-1 within each row's run."""
    keys = torch.arange(first_key, stop_key, device=runs.device)
    return ((keys >= runs[0, :, None]) & (keys < runs[1, :, None])).expand(batch, 1, -1, -1)


def describe_mask(**arguments: Any) -> MaskDescription:
    """The mask creator registered under `IMPLEMENTATION`: records, materialises nothing."""
    return MaskDescription(arguments)


@dataclass
class LayerInputs:
    """What a layer's attention needs to be recomputed later (rollout and raw attention)."""

    query: torch.Tensor
    key: torch.Tensor
    mask: MaskDescription | torch.Tensor | None
    scaling: float
    softcap: float | None


@dataclass
class RelevanceTap:
    """What the blockwise attention does besides attending, during one explanation.

    `rows` [T, L] float32: the relevance rows that backward passes propagate (Chefer); None for a
    plain backward. With `record`, each forward appends its layer's `LayerInputs` to `layers`.
    `block_rows`: query rows per block.
    """

    block_rows: int
    rows: torch.Tensor | None = None
    record: bool = False
    layers: list[LayerInputs] = field(default_factory=list)


_TAP: ContextVar[RelevanceTap | None] = ContextVar("vlm_audit_blockwise_tap", default=None)


def _mask_rows(mask: MaskDescription | torch.Tensor | None, start: int, stop: int, kv_length: int, device):
    """[B or 1, 1, n, kv_length] bool for query rows start..stop-1 (None: every key allowed)."""
    if mask is None:
        return torch.ones(1, 1, stop - start, kv_length, dtype=torch.bool, device=device)
    if isinstance(mask, MaskDescription):
        return mask.rows(start, stop)
    rows = mask[:, :, start:stop, :kv_length]
    return rows if rows.dtype == torch.bool else rows == 0  # an additive float mask: 0 where allowed


def _grouped(tensor: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[B, H, n, x] → [B, KV, G·n, x]: query heads sharing a key/value head stacked as rows."""
    batch, heads, n, width = tensor.shape
    return tensor.reshape(batch, kv_heads, (heads // kv_heads) * n, width)


def _ungrouped(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """Inverse of `_grouped`: [B, KV, G·n, x] → [B, H, n, x]."""
    batch, kv_heads, rows, width = tensor.shape
    return tensor.reshape(batch, heads, rows * kv_heads // heads, width)


@dataclass
class Span:
    """Query rows start..stop-1 of a layer's attention and the key columns first_key..stop_key-1 they
    may attend."""

    start: int
    stop: int
    first_key: int
    stop_key: int


@dataclass
class _Block(Span):
    """One block of query rows with the key columns its mask allows."""

    allowed: torch.Tensor  # [B|1, 1, n, stop_key - first_key] bool


def _column_span(allowed: torch.Tensor) -> tuple[int, int]:
    """[first, stop) of the key columns that `allowed` [..., n, K] allows anywhere ((0, 1) if none)."""
    columns = allowed.any(dim=(0, 1, 2)).nonzero()
    return (int(columns[0]), int(columns[-1]) + 1) if len(columns) else (0, 1)


def _blocks(
    mask: MaskDescription | torch.Tensor | None, q_length: int, kv_length: int, block_rows: int, device
) -> Iterator[_Block]:
    for start in range(0, q_length, block_rows):
        stop = min(start + block_rows, q_length)
        if isinstance(mask, MaskDescription):
            yield _Block(start, stop, *mask.block(start, stop))
            continue
        allowed = _mask_rows(mask, start, stop, kv_length, device)
        first_key, stop_key = _column_span(allowed)
        yield _Block(start, stop, first_key, stop_key, allowed[..., first_key:stop_key])


def _scores(
    query: torch.Tensor, key: torch.Tensor, block: _Block, scaling: float, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masked scores [B, H, n, K] (in the query's dtype, as eager computes them) and, with a soft cap,
    tanh of the capped scores (for the backward)."""
    heads, kv_heads = query.shape[1], key.shape[1]
    rows = _grouped(query[:, :, block.start : block.stop], kv_heads)
    keys = key[:, :, block.first_key : block.stop_key]
    scores = _ungrouped(rows @ keys.transpose(-1, -2), heads).mul_(scaling)  # a fresh tensor: in place
    capped = None
    if softcap is not None:
        capped = torch.tanh(scores / softcap)
        scores = capped * softcap
    return scores.masked_fill_(~block.allowed, float("-inf")), capped


def _probabilities(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Softmax in float32, cast to the model's dtype: eager attention's exact sequence."""
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)


def _attend(probabilities: torch.Tensor, value: torch.Tensor, block: _Block) -> torch.Tensor:
    """[B, H, n, dv] = A_block · V."""
    heads, kv_heads = probabilities.shape[1], value.shape[1]
    values = value[:, :, block.first_key : block.stop_key]
    return _ungrouped(_grouped(probabilities, kv_heads) @ values, heads)


@dataclass
class LayerAttention:
    """One language layer's attention probabilities for the methods that read them (rollout, raw
    attention), block by block: a map the eager path captured, [B, H, L, L], is one block; a layer the
    blockwise path recorded is recomputed from its queries and keys, `block_rows` query rows at a time."""

    source: torch.Tensor | LayerInputs
    block_rows: int = DEFAULT_BLOCK_ROWS  # recorded layers only

    @property
    def device(self) -> torch.device:
        return self.source.device if isinstance(self.source, torch.Tensor) else self.source.query.device

    def blocks(self) -> Iterator[tuple[Span, torch.Tensor]]:
        """(span, probabilities [B, H, stop - start, stop_key - first_key]) covering every allowed key."""
        if isinstance(self.source, torch.Tensor):
            length = self.source.shape[-1]
            yield Span(0, length, 0, length), self.source
            return
        layer = self.source
        q_length, kv_length = layer.query.shape[2], layer.key.shape[2]
        for block in _blocks(layer.mask, q_length, kv_length, self.block_rows, layer.query.device):
            scores, _ = _scores(layer.query, layer.key, block, layer.scaling, layer.softcap)
            yield block, _probabilities(scores, layer.query.dtype)


class _BlockwiseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, mask, scaling, softcap, tap):
        block_rows = tap.block_rows if tap is not None else DEFAULT_BLOCK_ROWS
        output = query.new_empty(*query.shape[:3], value.shape[-1])
        for block in _blocks(mask, query.shape[2], key.shape[2], block_rows, query.device):
            scores, _ = _scores(query, key, block, scaling, softcap)
            output[:, :, block.start : block.stop] = _attend(
                _probabilities(scores, query.dtype), value, block
            )
        if tap is not None and tap.record:
            tap.layers.append(LayerInputs(query.detach(), key.detach(), mask, scaling, softcap))
        ctx.save_for_backward(query, key, value)
        ctx.mask, ctx.scaling, ctx.softcap, ctx.tap, ctx.block_rows = mask, scaling, softcap, tap, block_rows
        return output

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value = ctx.saved_tensors
        heads, kv_heads = query.shape[1], key.shape[1]
        tap = ctx.tap
        relevance_rows = tap.rows if tap is not None else None
        propagated = None
        if relevance_rows is not None:
            relevance_rows = relevance_rows.to(query.device)
            propagated = torch.zeros_like(relevance_rows)
        grad_query = torch.zeros_like(query, dtype=torch.float32)
        grad_key = torch.zeros_like(key, dtype=torch.float32)
        grad_value = torch.zeros_like(value, dtype=torch.float32)
        for block in _blocks(ctx.mask, query.shape[2], key.shape[2], ctx.block_rows, query.device):
            grad_rows = grad_output[:, :, block.start : block.stop]  # dO [B, H, n, dv]
            if not grad_rows.any():
                continue  # rows this target does not depend on: every term below is zero
            keys = key[:, :, block.first_key : block.stop_key]
            values = value[:, :, block.first_key : block.stop_key]
            scores, capped = _scores(query, key, block, ctx.scaling, ctx.softcap)
            exact = torch.softmax(scores, dim=-1, dtype=torch.float32)  # [B, H, n, K]
            probabilities = exact.to(query.dtype)  # the A eager attention multiplies V by
            # ∂y/∂A = dO · Vᵀ
            grad_probabilities = _ungrouped(_grouped(grad_rows, kv_heads) @ values.transpose(-1, -2), heads)
            grad_probabilities = grad_probabilities.float()
            weighted = grad_probabilities * exact  # ∂y/∂A ⊙ A in float32
            if propagated is not None:  # Ā_block, applied to the rows it maps: v·Ā over this block
                if probabilities is not exact:  # Ā weights the map eager attention holds (its dtype)
                    cam = (grad_probabilities * probabilities.float()).clamp_(min=0).mean(dim=1)[0]
                else:
                    cam = weighted.clamp(min=0).mean(dim=1)[0]
                propagated[:, block.first_key : block.stop_key] += (
                    relevance_rows[:, block.start : block.stop] @ cam
                )
            # softmax backward in float32, as autograd differentiates eager's upcast softmax:
            # A ⊙ (∂y/∂A - Σ_k A ∂y/∂A), in place
            grad_scores = weighted.addcmul_(exact, weighted.sum(dim=-1, keepdim=True), value=-1)
            if capped is not None:
                grad_scores = grad_scores * (1 - capped.float() ** 2)
            grad_scores = grad_scores.to(query.dtype).mul_(ctx.scaling)
            grouped_scores = _grouped(grad_scores, kv_heads)  # [B, KV, G·n, K]
            rows = _grouped(query[:, :, block.start : block.stop], kv_heads)
            grad_query[:, :, block.start : block.stop] = _ungrouped(grouped_scores @ keys, heads).float()
            grad_key[:, :, block.first_key : block.stop_key] += (
                grouped_scores.transpose(-1, -2) @ rows
            ).float()
            grad_value[:, :, block.first_key : block.stop_key] += (
                _grouped(probabilities, kv_heads).transpose(-1, -2) @ _grouped(grad_rows, kv_heads)
            ).float()
        if propagated is not None:
            tap.rows = relevance_rows + propagated  # v ← v + v·Ā_l
        return (
            grad_query.to(query.dtype),
            grad_key.to(key.dtype),
            grad_value.to(value.dtype),
            None,
            None,
            None,
            None,
        )


def blockwise_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: MaskDescription | torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **_kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: ([B, L, H, dv], no weights)."""
    if dropout:
        raise ValueError("blockwise attention explains models in eval mode (no attention dropout)")
    scaling = module.head_dim**-0.5 if scaling is None else scaling
    output = _BlockwiseAttention.apply(query, key, value, attention_mask, scaling, softcap, _TAP.get())
    return output.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the blockwise attention and its mask creator with transformers under `IMPLEMENTATION`
    (idempotent); returns the name. Called when a model switches to it, not at import: transformers'
    attention registry lives in `modeling_utils`, whose import loads accelerate (and boto3)."""
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, blockwise_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, describe_mask)
    return IMPLEMENTATION


@contextmanager
def tapping(tap: RelevanceTap) -> Iterator[RelevanceTap]:
    """Blockwise attention run inside the block (forwards, and the backwards of their graphs) reports
    to `tap`."""
    token = _TAP.set(tap)
    try:
        yield tap
    finally:
        _TAP.reset(token)


def chefer_rows(
    tap: RelevanceTap, scores: torch.Tensor, leaf: torch.Tensor, start: torch.Tensor
) -> torch.Tensor:
    """Rows of R = (I + Ā_n)···(I + Ā_1) for each target: [T, L] float32 on CPU.

    `scores` [T] are the targets' scores from a forward run under `tapping(tap)` from `leaf` (the
    graph's input, requiring grad); `start` [T, L] their one-hot start rows. One backward per target
    (the graph is kept between them), each propagating that target's row through every layer.
    """
    rows = []
    for index in range(len(scores)):
        tap.rows = start[index : index + 1]
        torch.autograd.grad(scores[index], leaf, retain_graph=index < len(scores) - 1)
        rows.append(tap.rows.float().cpu())
    tap.rows = None
    return torch.cat(rows)
