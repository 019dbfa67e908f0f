"""Image occlusion, the study-level perturbation reference: which of a prompt's images the answer needs.

For every image k of the prompt: drop_k = y(x) - y(x with all of image k's token embeddings replaced by
their mean), one forward per image, however many tokens each holds; the drop is spread evenly over
the image's tokens, so a row's sum over image k is drop_k. For a CT study of 85 slices it is 85
forwards where token occlusion needs one per image token (21,760). Non-image positions are 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from explainer.methods.base import ExplainContext, RelevanceMethod
from explainer.targets import Target


class ImageOcclusion(RelevanceMethod):
    def relevance(self, context: ExplainContext, targets: Sequence[Target]) -> torch.Tensor:
        relevance = torch.zeros(len(targets), context.layout.seq_len)
        runs = context.layout.image_token_runs
        drops = context.occlusion_drops(targets, runs)  # [images, T]
        for image, run in enumerate(runs):
            relevance[:, run] = (drops[image] / run.numel()).unsqueeze(1)
        return relevance


RELEVANCE_METHOD = ImageOcclusion
