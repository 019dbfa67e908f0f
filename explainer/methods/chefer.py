"""Chefer et al. (arXiv 2103.15679): gradient-weighted attention relevance for a decoder-only VLM.

For the target y and every language layer l with attention A_l [heads, L, L]:

    Ā_l = mean over heads of (∂y/∂A_l ⊙ A_l)⁺
    R = I;  for l = 1..n:  R ← R + Ā_l · R
    relevance of token p = row p-1 of R

Only row p-1 is needed, so a row vector is propagated from the last layer down,
v ← e_{p-1};  for l = n..1:  v ← v + v · Ā_l   (O(L²) per layer instead of O(L³)),
and all targets share one forward: their vector-Jacobian products (activation gradients only,
parameters frozen) are batched, in chunks bounded by the memory budget (`explainer.memory`).
Several sequences share that forward too (`relevance_batch`, right-padded): target k of every
sequence is one vector-Jacobian product.

On the blockwise path (`explainer.blockwise`, for long sequences) no map is kept: each target's
backward forms Ā block by block and applies it to the row as it passes each layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from explainer import memory
from explainer._forward import embed_inputs, forward_embeddings
from explainer.blockwise import RelevanceTap, chefer_rows, tapping
from explainer.methods.base import ExplainBatch, ExplainContext, RelevanceMethod
from explainer.targets import Target, logit_rows, start_rows, target_scores


def gradient_weighted_attention(gradients: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Ā = mean over heads of (gradient ⊙ attention)⁺, in float32.

    Args:
        gradients: [T, 1, heads, L, L], one gradient per target; overwritten when already float32.
        attention: [1, heads, L, L].
    Returns:
        [T, L, L].
    """
    return gradients.float().mul_(attention.float()).clamp_(min=0).mean(dim=(1, 2))


def propagate_rows(start: torch.Tensor, cams: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rows of R = (I + Ā_n)···(I + Ā_1) picked by `start` [T, L]; `cams[l]` is Ā_{l+1} [T, L, L].

    Each Ā may live on its own device (a model split with device_map); the result is on CPU.
    """
    rows = start
    for cam in reversed(cams):
        rows = rows.to(cam.device)
        rows = rows + torch.bmm(rows.unsqueeze(1), cam).squeeze(1)
    return rows.float().cpu()


def _eager_rows(batch: ExplainBatch, targets: Sequence[Sequence[Target]]) -> list[torch.Tensor]:
    """Rows of every sequence's targets from one eager forward over the right-padded batch:
    [T_b, L_b] float32 on CPU each (a single sequence is a batch of one).

    Sequences do not interact in a batch, so the gradient of Σ_b y_b (target k of each) holds each
    y_b's gradient in row b: target k of every sequence shares one vector-Jacobian product.
    """
    inputs = batch.padded_inputs()  # [B, L]
    lengths = batch.lengths
    embeddings = embed_inputs(batch.model, inputs).detach().requires_grad_(True)  # the graph's only leaf
    with torch.enable_grad(), batch.recording() as maps:
        rows_read = logit_rows([target for item_targets in targets for target in item_targets])
        logits = forward_embeddings(batch.model, embeddings, inputs, rows_read)  # [B, R, vocab]
        scores = [  # [T_b] each
            target_scores(logits[b : b + 1], inputs["input_ids"][b], item_targets, rows_read)[0]
            for b, item_targets in enumerate(targets)
        ]
        n_slots = max(len(item_targets) for item_targets in targets)
        slots = torch.stack([sum(score[k] for score in scores if k < len(score)) for k in range(n_slots)])
        seq_len = inputs["input_ids"].shape[1]
        chunk = memory.targets_per_chunk(batch.model, seq_len, batch.max_chunk_bytes, len(lengths))
        starts = [start_rows(item_targets, seq_len) for item_targets in targets]  # [T_b, L] each
        rows: list[list[torch.Tensor]] = [[] for _ in lengths]
        for first in range(0, n_slots, chunk):
            chunk_slots = slots[first : first + chunk]
            basis = torch.eye(chunk_slots.numel(), device=chunk_slots.device)
            gradients = torch.autograd.grad(  # each [K, B, heads, L, L]
                chunk_slots, maps, grad_outputs=basis, is_grads_batched=True, retain_graph=True
            )
            counts = [
                (b, min(len(item_targets), first + chunk) - first) for b, item_targets in enumerate(targets)
            ]
            counts = [(b, n) for b, n in counts if n > 0]  # the sequences with targets in this chunk
            cams = [  # Ā_l [n, L, L] per layer, per sequence
                [
                    gradient_weighted_attention(g[:n, b : b + 1], a[b : b + 1].detach())
                    for g, a in zip(gradients, maps, strict=True)
                ]
                for b, n in counts
            ]
            del gradients  # before propagating: the peak is the gradients and Ā, not the rows
            for (b, n), item_cams in zip(counts, cams, strict=True):
                rows[b].append(propagate_rows(starts[b][first : first + n], item_cams)[:, : lengths[b]])
    return [torch.cat(item_rows) for item_rows in rows]


def _blockwise_rows(context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
    """The same rows without any L×L map: one backward per target (`explainer.blockwise`)."""
    embeddings = context.embeddings().detach().requires_grad_(True)
    tap = RelevanceTap(context.block_rows())
    with torch.enable_grad(), tapping(tap):
        rows_read = logit_rows(targets)
        logits = context.logits(embeddings, rows_read)
        scores = target_scores(logits, context.input_ids, targets, rows_read)[0]  # [T]
        return chefer_rows(tap, scores, embeddings, start_rows(targets, context.layout.seq_len))


class Chefer(RelevanceMethod):
    def relevance(self, context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        if context.blockwise:
            return _blockwise_rows(context, targets)
        [rows] = _eager_rows(ExplainBatch([context]), [targets])
        return rows

    def relevance_batch(self, batch: ExplainBatch, targets: Sequence[Sequence[Target]]) -> list[torch.Tensor]:
        if batch.blockwise:  # one backward per target whatever the batch: one sequence at a time
            return super().relevance_batch(batch, targets)
        return _eager_rows(batch, targets)


RELEVANCE_METHOD = Chefer
