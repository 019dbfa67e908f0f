"""Relevance methods, registered by name.

The registry names each method's class by its import path: the names can be read (run settings
validated, CLI choices listed) in processes that never explain anything, without loading torch.
A method's class is imported on first use.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from explainer.methods.base import RelevanceMethod

METHODS: dict[str, str] = {
    "chefer": "explainer.methods.chefer:Chefer",
    "rollout": "explainer.methods.rollout:Rollout",
    "raw_attention": "explainer.methods.raw_attention:RawAttention",
    "occlusion": "explainer.methods.occlusion:Occlusion",
    "pixel_occlusion": "explainer.methods.pixel_occlusion:PixelOcclusion",
    "image_occlusion": "explainer.methods.image_occlusion:ImageOcclusion",
}
# the perturbation references other maps are checked against, cell by cell; the first is the language
# model's own (token occlusion), the second also sees the vision tower (pixel occlusion)
REFERENCE_METHODS: tuple[str, ...] = ("occlusion", "pixel_occlusion")
# the reference for prompts of several images, image by image: which images the answer needs
IMAGE_REFERENCE = "image_occlusion"
# how the language model's attention is run while explaining: "eager" keeps every layer's maps (fast
# for short prompts), "blockwise" keeps none (memory linear in length), "auto" picks by a memory estimate
ATTENTION_PATHS: tuple[str, ...] = ("auto", "eager", "blockwise")


@cache
def get_method(name: str) -> RelevanceMethod:
    """The registered method called `name`."""
    if name not in METHODS:
        raise ValueError(f"unknown relevance method {name!r}; valid methods: {list(METHODS)}")
    module, _, class_name = METHODS[name].partition(":")
    return getattr(import_module(module), class_name)()


__all__ = ["ATTENTION_PATHS", "IMAGE_REFERENCE", "METHODS", "REFERENCE_METHODS", "get_method"]
