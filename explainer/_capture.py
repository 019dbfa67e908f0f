"""Put a model into relevance mode and record its language-model attention maps; undo everything after.

Every side effect has its undo: eval mode, frozen parameters, eager attention on the language
model and the recording hooks are all restored in a `finally`, on success and on error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from explainer.loading import ATTENTION_IMPLEMENTATION


class AttentionUnavailable(RuntimeError):
    """The model cannot return attention probabilities (for example SDPA or flash attention only)."""


def language_layers(model: nn.Module) -> nn.ModuleList:
    """The language model's decoder layers of a Gemma3ForConditionalGeneration:
    `model.model.language_model.layers`."""
    try:
        layers = model.model.language_model.layers
    except AttributeError:
        layers = None
    if not isinstance(layers, nn.ModuleList):
        raise AttentionUnavailable(
            f"{type(model).__name__} has no language-model decoder layers at .model.language_model.layers; "
            "the explainer supports Gemma3ForConditionalGeneration models such as google/medgemma-1.5-4b-it"
        )
    return layers


def _text_attn_implementation(model: nn.Module) -> str | None:
    return model.config.get_text_config()._attn_implementation


def use_attention(model: nn.Module, implementation: str) -> None:
    """Switch the language model to `implementation`: eager (the only one of transformers' that returns
    probabilities) or the blockwise one (`explainer.blockwise`)."""
    if _text_attn_implementation(model) == implementation:
        return
    try:
        model.set_attn_implementation({"text_config": implementation})
    except Exception as error:  # transformers raises several types here
        raise AttentionUnavailable(
            f"could not switch {type(model).__name__}'s language model to {implementation} attention "
            f"({error}); load it with Gemma3ForConditionalGeneration.from_pretrained(path, "
            f"attn_implementation={ATTENTION_IMPLEMENTATION}), or use Explainer.from_pretrained(path)"
        ) from error
    if _text_attn_implementation(model) != implementation:
        raise AttentionUnavailable(
            f"{type(model).__name__} kept attention '{_text_attn_implementation(model)}'; load it with "
            f"attn_implementation={ATTENTION_IMPLEMENTATION} or use Explainer.from_pretrained(path)"
        )


class AttentionRecorder:
    """Collects the post-softmax attention of every language-model layer during one forward.

    `maps[l]` is the tensor the layer multiplied by V: [batch, heads, L, L], on that layer's device,
    part of the autograd graph when the forward ran with gradients.
    """

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []
        self.active = False

    def _record(self, _module: nn.Module, _inputs: tuple, output: tuple) -> None:
        if not self.active:
            return
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise AttentionUnavailable(
                "an attention layer returned no weights: the language model is not using eager attention"
            )
        self.maps.append(weights)

    def clear(self) -> None:
        self.maps = []
        self.active = False


@contextmanager
def relevance_mode(model: nn.Module, attention: str = "eager") -> Iterator[AttentionRecorder]:
    """Eval mode, frozen parameters and the language model's attention set to `attention` ("eager",
    with hooks that record its maps, or "blockwise", which keeps none); all undone on exit."""
    was_training = model.training
    requires_grad = [parameter.requires_grad for parameter in model.parameters()]
    attn_implementation = _text_attn_implementation(model)
    recorder = AttentionRecorder()
    handles = []
    try:
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if attention == "blockwise":
            from explainer.blockwise import register

            use_attention(model, register())
        else:
            use_attention(model, "eager")
            handles = [
                layer.self_attn.register_forward_hook(recorder._record) for layer in language_layers(model)
            ]
        yield recorder
    finally:
        for handle in handles:
            handle.remove()
        recorder.clear()
        if attn_implementation is not None and _text_attn_implementation(model) != attn_implementation:
            model.set_attn_implementation({"text_config": attn_implementation})
        for parameter, flag in zip(model.parameters(), requires_grad, strict=True):
            parameter.requires_grad_(flag)
        model.train(was_training)
