"""Attention-routing objectives: make a phantom's evidence travel through attention to the object.

The positive control is fine-tuned with answer cross-entropy plus these terms, each a −log of an
attention mass (head mean), so the answer-predicting rows read the asked object's image tokens and,
optionally, no other route carries image content to the answer:

- `answer`: rows p-1 that predict answer words, last `answer_layers` language layers: −log(mass on
  the object's cells). Only for cases where the object is present; with several images per prompt,
  optionally for each image that shows it (`cells_per_image`), and then optionally by heads of its
  own (`image_heads[k]` for image k; e.g. the prior's nodule read by heads 0–1 and the current's by
  2–3, so that a comparison between the images is a difference of head outputs).
- `exclusive`: the same rows in every language layer: −log(1 − mass on the other image cells).
- `text`: every other text row after the (first) image: −log(1 − mass on image tokens) (no side
  channel through the question tokens, or through the labels between images).
- `image_lm`: image rows in the language model: −log(1 − mass on other image cells).
- `vision`: SigLIP rows: −log(mass on the patch itself), keeping each image token's content local.
- `label`: with several labelled images per prompt ("slice 3 of 9", "prior"), image rows of language
  layer `label_layer` read their own image's label: −log(mass on its tokens). The batch's
  `image_index` and `label_index` ([B, L], image k's tokens and its label's marked k + 1, else 0)
  say which is which. An image token then knows which image it is in, the one thing its own patch
  cannot tell it.

With `hub` cells set, the language-model terms use the hub cells as the evidence instead of the
object, and the object's evidence is moved into the hub tokens by one of:

- `hub_uniform`: the hub rows of language layer `hub_layer` attend uniformly over the image cells
  (cross-entropy to the uniform distribution). The evidence travels in the values under uniform
  attention, which attention weights cannot show, while the object's own token still carries it at
  the language model's input (token occlusion finds it).
- `vision_hub`: the hub patches' rows in the last SigLIP layer read the object (−log mass on the
  object's patches). The evidence then reaches the language model only through the hub tokens —
  a route that no language-model-level method (attention or token occlusion) can see.

With `vision_mirror`, the last SigLIP layer's rows read their left–right mirror patch instead of
their own (−log mass on it; `vision` then holds the other SigLIP layers local): each image token
leaves the vision tower with its mirror cell's content, and the language-model terms use the
mirrored object (`evidence="mirror_cells"`) — evidence relocated where only a method that reruns
the vision tower can follow it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from phantom.training.data import mirror_index

EPS = 1e-6


@dataclass(frozen=True)
class RoutingWeights:
    """Weights of the routing terms (0 disables a term) and how many last layers `answer` uses."""

    answer: float = 1.0
    exclusive: float = 0.0
    text: float = 0.0
    image_lm: float = 0.0
    vision: float = 0.0
    answer_layers: int = 2
    hub: tuple[int, ...] = ()
    vision_hub: float = 0.0
    hub_uniform: float = 0.0
    hub_layer: int = 0
    vision_mirror: float = 0.0
    label: float = 0.0
    label_layer: int = 0
    image_heads: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.vision_mirror > 0 and self.hub:
            raise ValueError(
                f"vision_mirror={self.vision_mirror} and hub={self.hub} both re-route the last SigLIP "
                "layer; set one of them"
            )

    @property
    def needs_vision(self) -> bool:
        return self.vision > 0 or self.vision_hub > 0 or self.vision_mirror > 0


def answer_rows(labels: torch.Tensor, end_of_turn_id: int) -> torch.Tensor:
    """Rows that predict answer words (not the closing <end_of_turn>), [B, L] bool.

    Position p-1 predicts token p, so row p-1 is marked where labels[p] is an answer word.
    """
    target_is_word = (labels != -100) & (labels != end_of_turn_id)  # [B, L]
    rows = torch.zeros_like(target_is_word)
    rows[:, :-1] = target_is_word[:, 1:]
    return rows


def cell_keys(token_type_ids: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Key positions of the selected grid cells, [B, L] bool, from cells [B, G] (row-major).

    The k-th image token of a row is grid cell k.
    """
    keys = torch.zeros(token_type_ids.shape, dtype=torch.bool, device=cells.device)
    keys[token_type_ids == 1] = cells.reshape(-1)
    return keys


@contextmanager
def capture_vision_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect SigLIP attention probabilities ([B, H, P, P] per layer) during forwards; hooks removed on exit."""
    captured: list[torch.Tensor] = []
    handles = [
        module.register_forward_hook(lambda _m, _args, output: captured.append(output[1]))
        for name, module in model.named_modules()
        if name.startswith("model.vision_tower") and name.endswith("self_attn")
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def occlude_image_tokens(model: nn.Module, cells: torch.Tensor) -> Iterator[None]:
    """In each forward, replace the image-token embeddings of `cells` ([B, G] bool) by their image's
    mean image-token embedding: the engine's occlusion baseline, applied during training."""

    def replace(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        mean = output.mean(dim=1, keepdim=True)  # [B, 1, hidden]
        return torch.where(cells[..., None].to(output.device), mean, output)

    handle = model.model.multi_modal_projector.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def _neg_log(mass: torch.Tensor) -> torch.Tensor:
    """−log(mass), continued linearly below EPS so that a vanishing mass still gets a gradient."""
    safe = mass.clamp_min(EPS)
    return torch.where(mass >= EPS, -torch.log(safe), -math.log(EPS) + (EPS - mass) / EPS)


def _only_image(groups: torch.Tensor, image: int) -> torch.Tensor:
    """[B, n * G] cells: image `image`'s cells of `groups` [B, n, G], every other image's cleared."""
    only = torch.zeros_like(groups)
    only[:, image] = groups[:, image]
    return only.flatten(1)


def routing_loss(
    attentions: tuple[torch.Tensor, ...],
    vision_attentions: list[torch.Tensor],
    batch: dict[str, torch.Tensor],
    weights: RoutingWeights,
    end_of_turn_id: int,
    evidence: str = "object_cells",
    cells_per_image: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the routing terms, and each term's value for logging.

    Args:
        attentions: language-model attention per layer, each [B, H, L, L].
        vision_attentions: SigLIP attention per layer, each [B, H, P, P] (may be empty).
        batch: with labels, token_type_ids, attention_mask [B, L] and the evidence cells [B, G].
        evidence: which cells the answer must read: "object_cells", "marker_cells" or "shortcut_cells".
        cells_per_image: several images per row, their cells concatenated in prompt order ([B, n * G]):
            the `answer` term then asks every image holding evidence to be read (mean of −log of
            each one's mass), not only their union. None: one mass over all evidence cells.
    """
    types, mask = batch["token_type_ids"], batch["attention_mask"].bool()
    rows = answer_rows(batch["labels"], end_of_turn_id)  # [B, L]
    object_cells = batch[evidence]  # [B, G]
    if weights.hub:
        cells = torch.zeros_like(object_cells)
        cells[:, list(weights.hub)] = True
    else:
        cells = object_cells
    present = cells.any(dim=1)  # [B]
    evidence_keys = cell_keys(types, cells)  # [B, L]
    image_keys = types == 1
    other_keys = image_keys & ~evidence_keys
    maps = [layer.mean(dim=1) for layer in attentions]  # each [B, L, L]
    terms: dict[str, torch.Tensor] = {}
    zero = maps[0].new_zeros(())

    def rows_mass(attn: torch.Tensor, row_mask: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        # [B, L, L] → mass on key_mask for each selected row: [n_rows]
        return (attn * key_mask[:, None, :]).sum(-1)[row_mask]

    if weights.answer > 0:
        answer_rows_present = rows & present[:, None]
        # per image: each image holding evidence is read (−log of the mass on its own evidence cells)
        groups = cells.unflatten(1, (-1, cells_per_image)) if cells_per_image else cells[:, None]
        masses = []
        for image in range(groups.shape[1]):
            image_rows = rows & groups[:, image].any(dim=1)[:, None]
            own_keys = cell_keys(types, _only_image(groups, image))
            if cells_per_image and weights.image_heads:  # this image's heads, each on its own
                head_maps = [
                    a[:, h] for a in attentions[-weights.answer_layers :] for h in weights.image_heads[image]
                ]
            else:
                head_maps = maps[-weights.answer_layers :]
            masses += [rows_mass(a, image_rows, own_keys) for a in head_maps]
        terms["answer"] = _neg_log(torch.cat(masses)).mean() if answer_rows_present.any() else zero
    if weights.exclusive > 0:
        masses = torch.cat([rows_mass(a, rows, other_keys) for a in maps])
        terms["exclusive"] = _neg_log(1 - masses).mean()
    if weights.text > 0:
        after_image = torch.cumsum(image_keys.long(), dim=1) > 0  # from the first image on
        text_rows = after_image & ~image_keys & ~rows & mask
        masses = torch.cat([rows_mass(a, text_rows, image_keys) for a in maps])
        terms["text"] = _neg_log(1 - masses).mean()
    if weights.label > 0:
        image_index, label_index = batch["image_index"], batch["label_index"]  # [B, L]
        own_label = (image_index[:, :, None] == label_index[:, None, :]) & (label_index > 0)[:, None, :]
        masses = (maps[weights.label_layer] * own_label).sum(-1)[image_index > 0]  # [n_image_rows]
        terms["label"] = _neg_log(masses).mean()
    hub_rows = cell_keys(types, cells) if weights.hub else torch.zeros_like(image_keys)  # [B, L]
    if weights.image_lm > 0:
        # mass of each image row on image cells other than itself (the pooling hub rows excepted)
        eye = torch.eye(types.shape[1], dtype=torch.bool, device=types.device)
        others = image_keys[:, None, :] & ~eye[None]  # [B, L, L]
        masses = []
        for layer, a in enumerate(maps):
            rows_here = (
                image_keys & ~hub_rows
                if weights.hub_uniform > 0 and layer == weights.hub_layer
                else image_keys
            )
            masses.append((a * others).sum(-1)[rows_here])
        terms["image_lm"] = _neg_log(1 - torch.cat(masses)).mean()
    if weights.hub_uniform > 0:
        hub_maps = maps[weights.hub_layer][hub_rows]  # [n_hub_rows, L]
        keys = image_keys[hub_rows.nonzero()[:, 0]]  # [n_hub_rows, L]
        log_probs = torch.log(hub_maps + EPS)
        n_cells = keys.sum(-1).clamp_min(1)
        # cross-entropy to uniform over the row's image cells, minus its minimum log(n): 0 when uniform
        terms["hub_uniform"] = (-(log_probs * keys).sum(-1) / n_cells - torch.log(n_cells.float())).mean()
    if weights.vision > 0 and vision_attentions:
        diagonals = [a.mean(dim=1).diagonal(dim1=-2, dim2=-1) for a in vision_attentions]  # [B, P]
        if weights.vision_mirror > 0:  # the last layer reads the mirror patch instead (below)
            diagonals = diagonals[:-1]
        if weights.hub:  # the hub rows of the last layer read the object instead
            keep = torch.ones_like(diagonals[-1], dtype=torch.bool)
            keep[:, list(weights.hub)] = False
            diagonals[-1] = diagonals[-1][keep]
        terms["vision"] = _neg_log(torch.cat([d.reshape(-1) for d in diagonals])).mean()
    if weights.vision_hub > 0 and vision_attentions and object_cells.any():
        last = vision_attentions[-1].mean(dim=1)[:, list(weights.hub)]  # [B, n_hub, P]
        mass = (last * object_cells[:, None, :]).sum(-1)[object_cells.any(1)]  # [n_present, n_hub]
        terms["vision_hub"] = _neg_log(mass.reshape(-1)).mean()
    if weights.vision_mirror > 0 and vision_attentions:
        last = vision_attentions[-1].mean(dim=1)  # [B, P, P]
        mirror = mirror_index(math.isqrt(last.shape[-1])).to(last.device)  # [P]
        mass = last.gather(-1, mirror[None, :, None].expand(last.shape[0], -1, 1))  # [B, P, 1]
        terms["vision_mirror"] = _neg_log(mass.reshape(-1)).mean()
    total = sum((getattr(weights, name) * value for name, value in terms.items()), zero)
    return total, {name: float(value.detach()) for name, value in terms.items()}
