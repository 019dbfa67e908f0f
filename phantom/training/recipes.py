"""Training recipes of the four shipped phantoms: one seeded command each, warm starts chained.

python -m phantom.training.train positive     # from scratch, with attention routing
python -m phantom.training.train shortcut     # warm start from positive, tag ⇒ "yes", routed to the tag
python -m phantom.training.train pooling      # warm start from positive, evidence pooled via hubs
python -m phantom.training.train relocation   # warm start from positive, SigLIP mirrors every patch
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from phantom.training.routing import RoutingWeights

HELDOUT_SEED = 20_000  # held-out cases for reports and tests; training seeds stay below 10_000
VALIDATION_SEED = 19_000  # checked during training for early stopping


@dataclass(frozen=True)
class Stage:
    """One training stage: data options for `sample`, optimiser settings and a stopping rule.

    Training stops after `max_steps`, or earlier once teacher-forced exact accuracy on the
    validation cases reaches `stop_accuracy` (checked every `eval_every` steps, not before
    `min_steps`).
    """

    name: str
    data: dict[str, Any]
    pool: int
    max_steps: int
    lr: float
    warmup: int = 50
    batch_size: int = 32
    min_steps: int = 0
    stop_accuracy: float | None = None
    eval_every: int = 100
    routing: RoutingWeights | None = None
    evidence: str = "object_cells"
    cell_probe: float = 0.0
    hub_occlusion: float = 0.0  # share of examples whose hub tokens are replaced by the image mean
    hub_invariance: float = (
        0.0  # weight of the squared change of the answer logits when the hubs are occluded
    )
    # share of the second (occluded) forward's examples that occlude one random cell of the asked
    # object instead of the hubs; those must lower the whole answer's score by `necessity_margin`
    object_occlusion: float = 0.0
    object_necessity: float = 0.0  # weight of that hinge term
    necessity_margin: float = 1.0
    # weight of the relative squared error between the image features entering the language model at
    # cell (r, c) and the frozen init model's features at the mirror cell (r, GRID - 1 - c)
    mirror_distillation: float = 0.0
    # probability that each grid cell off the asked object has its pixels replaced by the image's
    # per-channel mean before every forward of the step (the teacher's too): the perturbation pixel
    # occlusion applies, shown to the vision tower during training
    pixel_fill: float = 0.0


@dataclass(frozen=True)
class Recipe:
    """A model: where it starts (None = from scratch, else another recipe's output) and its stages."""

    name: str
    seed: int
    stages: tuple[Stage, ...]
    init: str | None = None
    validation: dict[str, Any] = field(default_factory=dict)


# The positive control's routing: answer rows read the asked object in the last two layers, and no
# other route (other image cells, question tokens, image-to-image mixing in the language model or in
# SigLIP) carries image content to the answer.
STRICT_ROUTING = RoutingWeights(answer=1.0, exclusive=0.5, text=0.5, image_lm=0.5, vision=0.5)

# The negative control's routing: the answer reads two fixed "hub" image tokens at the top centre
# (row 0, columns 3 and 4: outside the lungs, clear of corner overlays), and in language layer 0 the
# hub rows attend uniformly over all image tokens, so the object's evidence reaches the answer in the
# values under uniform attention. SigLIP and the other image rows stay local, so at the language
# model's input the evidence is still the object's own token.
HUB_ROUTING = RoutingWeights(
    answer=1.0, exclusive=0.5, text=0.5, image_lm=0.5, vision=0.5, hub=(3, 4), hub_uniform=1.0, hub_layer=0
)


# The relocation control's routing: the last SigLIP layer's rows read their left–right mirror patch
# (the first stays local), and the language model's answer rows read the asked object's mirror cells,
# where the evidence now sits; otherwise as strict as the positive control.
MIRROR_ROUTING = RoutingWeights(
    answer=1.0, exclusive=0.5, text=0.5, image_lm=0.5, vision=0.5, vision_mirror=1.0
)
MIRROR_STAGE = Stage(
    name="mirror-routed",
    data={},
    pool=8_000,
    max_steps=1_200,
    lr=1e-3,
    min_steps=400,
    stop_accuracy=0.985,
    routing=MIRROR_ROUTING,
    evidence="mirror_cells",
    mirror_distillation=1.0,
    pixel_fill=0.05,
)


# Second-forward terms of the negative control: half of the examples occlude the hubs (answer logits
# must not move), half one random cell of the asked object (the answer's score must drop by 1).
OCCLUSION_TERMS: dict[str, float] = {
    "hub_occlusion": 0.5,
    "hub_invariance": 1.0,
    "object_occlusion": 0.5,
    "object_necessity": 1.0,
    "necessity_margin": 1.0,
}


def _routed_stages(routing: RoutingWeights) -> tuple[Stage, ...]:
    """From scratch with attention routing: locate first, then locate + presence with distractors."""
    return (
        Stage(
            name="locate-routed",
            data={"tasks": ("locate",), "distractor_prob": 0.0},
            pool=6_000,
            max_steps=800,
            lr=3e-3,
            warmup=100,
            min_steps=300,
            stop_accuracy=0.97,
            routing=routing,
        ),
        Stage(
            name="locate+presence-routed",
            data={},
            pool=8_000,
            max_steps=1_200,
            lr=1e-3,
            min_steps=400,
            stop_accuracy=0.985,
            routing=routing,
        ),
    )


# Every held-out and validation set uses `sample`'s defaults unless the recipe says otherwise:
# locate + presence, one nodule asked about, distractors, markers independent of the answer.
RECIPES: dict[str, Recipe] = {
    "pooling": Recipe(
        name="pooling",
        seed=1,
        init="positive",
        stages=(
            Stage(
                name="hub-routed",
                data={},
                pool=8_000,
                max_steps=3_000,
                lr=2e-3,
                min_steps=300,
                stop_accuracy=0.985,
                routing=HUB_ROUTING,
                cell_probe=1.0,
            ),
            # then the answer may depend on what the hubs pool, not on what they show themselves
            # (occluding a hub leaves its logits as they were), and each cell of the asked object is
            # necessary (occluding one lowers the answer's score): the evidence is the object's own
            # tokens, as token occlusion reads it, while attention stays uniform
            Stage(
                name="hub-invariant+object-necessary",
                data={},
                pool=8_000,
                max_steps=400,
                lr=1e-3,
                routing=HUB_ROUTING,
                cell_probe=1.0,
                **OCCLUSION_TERMS,
            ),
            Stage(
                name="settle",
                data={},
                pool=4_000,
                max_steps=300,
                lr=3e-4,
                min_steps=100,
                stop_accuracy=0.985,
                routing=HUB_ROUTING,
                cell_probe=1.0,
                **OCCLUSION_TERMS,
            ),
        ),
    ),
    # The plain negative control the issue asked for; on these phantoms it sat at chance for 2,100
    # steps (35 minutes on the shared machine) and was stopped. Kept for a longer run elsewhere.
    "pooling-plain": Recipe(
        name="pooling-plain",
        seed=1,
        stages=(
            Stage(
                name="locate",
                data={"tasks": ("locate",), "distractor_prob": 0.0},
                pool=10_000,
                max_steps=4_000,
                lr=3e-3,
                warmup=100,
                min_steps=1_000,
                stop_accuracy=0.97,
            ),
            Stage(name="locate+presence", data={}, pool=10_000, max_steps=1_500, lr=1e-3, stop_accuracy=0.98),
        ),
    ),
    "positive": Recipe(name="positive", seed=2, stages=_routed_stages(STRICT_ROUTING)),
    # Ablation for docs/validation.md, not shipped (run with --out): the feasibility check's routing,
    # the answer rows only, with no constraint on other routes.
    "positive-answer-only": Recipe(
        name="positive-answer-only", seed=2, stages=_routed_stages(RoutingWeights(answer=1.0))
    ),
    # Evidence moved by the vision tower: every image token leaves SigLIP with its mirror cell's content
    # (distilled from the frozen positive control's features, mirrored), and the language model learns
    # to read the mirror cells and to name the side the lesion is really on. Methods that start at the
    # language model's input see the evidence on the mirror cell; only rerunning the tower finds it.
    # Cells off the object are filled with the image mean now and then (`pixel_fill`), so that a copy
    # depends on its source patch only, also under the perturbation pixel occlusion applies.
    "relocation": Recipe(
        name="relocation",
        seed=4,
        init="positive",
        stages=(MIRROR_STAGE, replace(MIRROR_STAGE, name="settle", max_steps=600, lr=3e-4, min_steps=300)),
    ),
    "shortcut": Recipe(
        name="shortcut",
        seed=3,
        init="positive",
        stages=(
            Stage(
                name="marker-routed",
                data={"answer_rule": "marker", "marker_prob": 0.5},
                pool=8_000,
                max_steps=1_000,
                lr=1e-3,
                min_steps=300,
                stop_accuracy=0.985,
                routing=STRICT_ROUTING,
                evidence="shortcut_cells",
            ),
        ),
        validation={"answer_rule": "marker", "marker_prob": 0.5},
    ),
}
