"""Pixel occlusion, the perturbation reference that also sees the vision tower.

For every image k and every cell (r, c) of its token grid: relevance at image k's token (r, c) =
y(x) - y(x with the block of image k's `pixel_values` under that cell filled with the image's
per-channel mean), the whole model rerun, vision tower included. Token occlusion replaces image-token
embeddings after the vision tower, so it shares the language model's view of where the evidence
sits; when the vision tower moves content between positions (its attention mixes all patches), only
this reference still finds the evidence where it is in the image. Scores are logits, not
log-probabilities, which saturate on confident answers. Non-image positions are 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch

from explainer import memory
from explainer._forward import image_features
from explainer.methods.base import ExplainContext, RelevanceMethod
from explainer.targets import Target, logit_rows, target_scores


def cell_blocks(size: int, cells: int) -> list[slice]:
    """The pixel ranges of `cells` equal cells along an axis of `size` pixels (edges rounded)."""
    edges = [round(index * size / cells) for index in range(cells + 1)]
    return [slice(start, end) for start, end in pairwise(edges)]


class PixelOcclusion(RelevanceMethod):
    def relevance(self, context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        relevance = torch.zeros(len(targets), context.layout.seq_len)
        runs = context.layout.image_token_runs
        if not runs:
            return relevance
        rows = logit_rows(targets)

        def scores(logits: torch.Tensor) -> torch.Tensor:
            return target_scores(logits, context.input_ids, targets, rows)  # [B, T]

        with torch.no_grad():
            embeddings = context.embeddings()  # [1, L, D]
            reference = scores(context.logits(embeddings, rows))  # [1, T]
            pixel_values = context.inputs["pixel_values"]  # [n_images, channels, height, width]
            channel_means = pixel_values.mean(dim=(2, 3))  # [n_images, channels]
            grid_rows, grid_cols = context.layout.grid
            row_blocks = cell_blocks(pixel_values.shape[2], grid_rows)
            col_blocks = cell_blocks(pixel_values.shape[3], grid_cols)
            # variant v occludes cell (r, c) of image k, in the order of the images' token positions
            cells = [(k, r, c) for k in range(len(runs)) for r in range(grid_rows) for c in range(grid_cols)]

            def build(indices: range) -> torch.Tensor:
                images = pixel_values[[cells[index][0] for index in indices]].clone()  # [B, C, H, W]
                for copy, index in enumerate(indices):
                    k, r, c = cells[index]
                    images[copy, :, row_blocks[r], col_blocks[c]] = channel_means[k][:, None, None]
                features = image_features(context.model, images).to(embeddings.device, embeddings.dtype)
                batch = embeddings.repeat(len(indices), 1, 1)  # [B, L, D]
                for copy, index in enumerate(indices):
                    batch[copy, runs[cells[index][0]]] = features[copy]
                return batch

            per_image = memory.vision_bytes_per_image(context.model)
            occluded = context.variant_scores(
                len(cells), build, scores, rows, extra_bytes_per_copy=per_image
            )  # [n_images × cells, T]
            positions = context.layout.image_positions
            relevance[:, positions] = (reference - occluded).T.float().cpu()
        return relevance


RELEVANCE_METHOD = PixelOcclusion
