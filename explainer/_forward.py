"""The one forward pass that every relevance method explains.

The input embeddings are built here, exactly as Gemma3's own forward builds them (text embeddings
with the projected image features scattered into the image token slots), so that methods can make
them require grad (Chefer) or replace image tokens (occlusion) without touching the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from explainer._sequence import SequenceError, token_type_ids_for


def embed_inputs(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Input embeddings of the language model: [1, L, hidden], image features merged in.

    The vision tower runs without gradients: the relevance contract covers the language model only.
    """
    config = model.config
    input_ids = inputs["input_ids"]
    embedding = model.get_input_embeddings()
    is_image = input_ids == config.image_token_id
    # same guard as Gemma3Model.forward: an out-of-vocabulary image id must not index the table
    text_ids = (
        input_ids.masked_fill(is_image, 0) if config.image_token_id >= embedding.num_embeddings else input_ids
    )
    embeds = embedding(text_ids.to(embedding.weight.device))
    pixel_values = inputs.get("pixel_values")
    n_image_tokens = int(is_image.sum())
    if pixel_values is None:
        if n_image_tokens:
            raise SequenceError(
                f"the sequence has {n_image_tokens} image tokens but inputs carry no pixel_values"
            )
        return embeds
    features = image_features(model, pixel_values)
    if features.numel() != n_image_tokens * embeds.shape[-1]:
        raise SequenceError(
            f"image features and image tokens do not match: tokens {n_image_tokens}, "
            f"features {features.shape[0] * features.shape[1]}"
        )
    mask = is_image.to(embeds.device).unsqueeze(-1)
    return embeds.masked_scatter(mask, features.to(embeds.device, embeds.dtype))


def image_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """[n_images, tokens per image, hidden]: the vision tower and projector's output, without gradients."""
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixel_values)
    return features.pooler_output


def forward_embeddings(
    model: nn.Module,
    inputs_embeds: torch.Tensor,
    inputs: Mapping[str, torch.Tensor],
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits [B, R, vocab] of a cache-free forward from `inputs_embeds` [B, L, hidden].

    `rows` (1-D positions) selects the rows whose logits are computed, R = len(rows); None keeps
    all L. Gemma's vocabulary is 262k tokens, so logits of every row of a long sequence (and their
    gradients) would cost more than the rest of the forward. `attention_mask` and `token_type_ids`
    of the batch-1 `inputs` are repeated over the batch; the token types keep the image block
    bidirectional, as during generation.
    """
    batch = inputs_embeds.shape[0]
    token_type_ids = token_type_ids_for(inputs, model.config).expand(batch, -1)
    attention_mask = inputs.get("attention_mask")
    if attention_mask is not None:
        attention_mask = attention_mask.expand(batch, -1)
    output = model(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        use_cache=False,
        logits_to_keep=0 if rows is None else rows.to(inputs_embeds.device),
    )
    return output.logits
