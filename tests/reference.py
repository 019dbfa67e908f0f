"""Slow references written straight from the formulas, to check the fast implementations against."""

from __future__ import annotations

import torch


def chefer_reference(model, inputs, position: int) -> torch.Tensor:
    """Row p-1 of R for the token at `position`, the obvious way: one forward with
    output_attentions, retain_grad on every map, one backward with parameter gradients, full R."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    try:
        output = model(**inputs, output_attentions=True, use_cache=False)
        for attention in output.attentions:
            attention.retain_grad()
        token = inputs["input_ids"][0, position]
        output.logits[0, position - 1, token].backward()
        seq_len = inputs["input_ids"].shape[1]
        relevance = torch.eye(seq_len, dtype=torch.float64)
        for attention in output.attentions:
            cam = (attention.grad * attention).clamp(min=0).mean(dim=1)[0].double()
            relevance = relevance + cam @ relevance
        return relevance.float()
    finally:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
            parameter.grad = None


def occlusion_reference(model, embeddings, inputs, image_positions, position: int) -> torch.Tensor:
    """Drop of logits[p-1, token] when each image token alone is set to its image's mean embedding."""
    token = inputs["input_ids"][0, position]

    def score(embeds):
        output = model(
            inputs_embeds=embeds,
            attention_mask=inputs["attention_mask"],
            token_type_ids=inputs["token_type_ids"],
            use_cache=False,
        )
        return output.logits[0, position - 1, token]

    relevance = torch.zeros(inputs["input_ids"].shape[1])
    with torch.no_grad():
        reference = score(embeddings)
        for run in image_positions:
            baseline = embeddings[0, run].mean(dim=0)
            for index in run.tolist():
                occluded = embeddings.clone()
                occluded[0, index] = baseline
                relevance[index] = reference - score(occluded)
    return relevance


def pixel_occlusion_reference(model, inputs, position: int, grid: tuple[int, int]) -> list[torch.Tensor]:
    """Per image [rows, cols]: drop of logits[p-1, token] when one cell's block of that image's pixels
    is set to the image's per-channel mean, the whole model rerun each time."""
    token = inputs["input_ids"][0, position]

    def score(pixel_values):
        output = model(**{**inputs, "pixel_values": pixel_values}, use_cache=False)
        return output.logits[0, position - 1, token]

    pixels = inputs["pixel_values"]
    rows, cols = grid
    height, width = pixels.shape[2] // rows, pixels.shape[3] // cols
    maps = []
    with torch.no_grad():
        reference = score(pixels)
        for image in range(pixels.shape[0]):
            cell_map = torch.zeros(rows, cols)
            for row in range(rows):
                for col in range(cols):
                    occluded = pixels.clone()
                    block = occluded[
                        image, :, row * height : (row + 1) * height, col * width : (col + 1) * width
                    ]
                    block[:] = pixels[image].mean(dim=(1, 2))[:, None, None]
                    cell_map[row, col] = reference - score(occluded)
            maps.append(cell_map)
    return maps
