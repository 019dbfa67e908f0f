"""Loading a Gemma3-family vision-language model (MedGemma) and its processor for relevance."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Eager attention for the language model only, the one implementation that returns attention
# probabilities. The vision tower keeps the library's default (SDPA where available): on MedGemma's
# 4,096-patch images eager attention would materialise 16 × 4,096² scores in each of 27 layers.
ATTENTION_IMPLEMENTATION = {"text_config": "eager"}


class ModelNotSupported(TypeError):
    """The model is not a Gemma3-style vision-language model."""


@dataclass(frozen=True)
class ModelInfo:
    """Which weights are being explained, for provenance in every output."""

    model_id: str
    revision: str | None


def check_vision_language_model(model: nn.Module) -> None:
    """Raise unless `model` looks like a Gemma3ForConditionalGeneration (image token id and grid size)."""
    config = getattr(model, "config", None)
    missing = [
        name for name in ("image_token_id", "mm_tokens_per_image") if getattr(config, name, None) is None
    ]
    if missing:
        raise ModelNotSupported(
            f"{type(model).__name__} has no {', '.join(missing)} in its config; the explainer supports "
            "Gemma3ForConditionalGeneration checkpoints such as google/medgemma-1.5-4b-it"
        )


def freeze(model: nn.Module) -> None:
    """Eval mode and no parameter gradients: relevance needs activation gradients only."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def model_info(model: nn.Module) -> ModelInfo:
    config = model.config
    return ModelInfo(
        model_id=str(getattr(config, "_name_or_path", "") or type(model).__name__),
        revision=getattr(config, "_commit_hash", None),
    )


def load_pretrained(
    name_or_path: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    revision: str | None = None,
):
    """Model (eager language-model attention, eval, frozen) and processor from a hub id or a local folder.

    `device_map` goes through accelerate, so a model larger than one GPU (MedGemma 27B multimodal)
    loads across devices; `device` moves a single-device model after loading.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs: dict = {"attn_implementation": ATTENTION_IMPLEMENTATION, "revision": revision}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
    check_vision_language_model(model)
    if device is not None and device_map is None:
        model.to(device)
    freeze(model)
    processor = AutoProcessor.from_pretrained(name_or_path, revision=revision)
    return model, processor
