"""Phantom chest radiographs and studies, and the tiny Gemma3 models trained on them (shipped with the package).

- `sample(n, seed)`: reproducible phantom cases with questions, expected answers and object boxes.
- `MODEL_PATH`: positive control and the demo's default — its answers read the asked object through
  attention (attention-routing fine-tune).
- `POOLING_MODEL_PATH`: the control for attention weights only — right answers, evidence pooled
  through uniform attention (two hub tokens average every image token; the answer reads the hubs),
  so attention weights (rollout, raw attention) miss the object while token and pixel occlusion find
  it (every object cell is necessary by construction); chefer's gradient weighting recovers most of
  it. Plain training did not leave chance level within the time budget here, so the pooling route is
  trained explicitly (docs/validation.md).
- `SHORTCUT_MODEL_PATH`: says "yes" to presence questions when a burned-in corner tag is present,
  whatever the lungs show.
- `DECOY_MODEL_PATH`: the positive control plus a pair of uniform-attention heads whose outputs cancel:
  the same answers, logits (to float rounding) and occlusion maps, but chefer's peak moves onto a fixed
  decoy cell (row 0, column 2), because chefer clamps each head's gradient × attention before averaging.
  Rollout and raw attention still find the object. Built, not trained (docs/validation.md).
- `RELOCATION_MODEL_PATH`: right answers, evidence moved by the vision tower — its last SigLIP layer
  copies every patch's content to the left–right mirror cell, (row, col) → (row, 7 − col), and the
  answer reads the mirror cells. Every language-model-level method (chefer, rollout, raw attention,
  token occlusion) peaks on the mirror of the object; occluding the object's pixels and rerunning
  the whole model finds it.
- `sample_studies(n, seed, kind="volume" | "longitudinal")`: multi-image studies with known evidence
  (`phantom.studies`): a stack of 9 labelled axial slices ("slice k of 9") with a nodule in one or
  two adjacent slices or none ("Is there a nodule?", "In which part of the volume is the nodule?"),
  or a prior and a current chest phantom ("Has the nodule grown since the prior?"). Each case has
  `.images` in prompt order, `.image_labels` to write before them, `.question`, `.answer` and
  `.evidence_boxes` (the nodule's box in each image, None where it is absent).
- `STUDY_MODEL_PATH`: the positive control for several images per prompt, warm-started from
  `MODEL_PATH` — it answers those studies from the nodule's image tokens through attention (in a
  prior/current pair, from both nodules). Prompt it with the case's labels:
  `Explainer.explain(case.images, case.question, image_labels=case.image_labels)`.
- `require_model_folder(path, recipe)`: `path` if a shipped model folder is built, else
  `PhantomModelMissing` naming the command that trains it.

Each folder is a Hugging Face model + processor with a `training_report.json`; retrain with
`python -m phantom.training.train positive|pooling|shortcut|relocation` (recipes, attention routing,
probes and evaluation live in `phantom.training`), the study control with
`python -m phantom.training.study`, and rebuild the decoy with `python -m phantom.training.decoy`. `phantom.build` makes tiny random Gemma3 models offline, for the
tests and benches; `phantom.demo` writes the demo's data set. Nothing in the `explainer` engine
imports this package.
"""

from pathlib import Path

from phantom.cases import PhantomCase, PhantomObject, sample
from phantom.studies import StudyCase, sample_studies

MODELS_DIR = Path(__file__).with_name("models")
MODEL_PATH = MODELS_DIR / "positive"
POOLING_MODEL_PATH = MODELS_DIR / "pooling"
SHORTCUT_MODEL_PATH = MODELS_DIR / "shortcut"
DECOY_MODEL_PATH = MODELS_DIR / "decoy"
RELOCATION_MODEL_PATH = MODELS_DIR / "relocation"
STUDY_MODEL_PATH = MODELS_DIR / "study"


class PhantomModelMissing(FileNotFoundError):
    """The bundled phantom model folder has not been built yet."""


def training_command(recipe: str) -> str:
    """The command that trains the named phantom model (the study model has a trainer of its own)."""
    return (
        "python -m phantom.training.study"
        if recipe == "study"
        else f"python -m phantom.training.train {recipe}"
    )


def require_model_folder(path: str | Path, recipe: str = "positive") -> str:
    """`path` as a string if it holds a Hugging Face model (config.json), else `PhantomModelMissing`."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise PhantomModelMissing(
            f"the phantom model is not built yet: {folder} has no config.json. Train it with "
            f"`{training_command(recipe)}`, or pass --model with a local folder or hub id"
        )
    return str(folder)


__all__ = [
    "DECOY_MODEL_PATH",
    "MODELS_DIR",
    "MODEL_PATH",
    "POOLING_MODEL_PATH",
    "RELOCATION_MODEL_PATH",
    "SHORTCUT_MODEL_PATH",
    "STUDY_MODEL_PATH",
    "PhantomCase",
    "PhantomModelMissing",
    "PhantomObject",
    "StudyCase",
    "require_model_folder",
    "sample",
    "sample_studies",
]
