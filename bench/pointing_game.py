"""Pointing game on the shipped phantoms: do relevance maps land where the evidence is?

For each model and method, on held-out cases whose evidence is known (the asked nodule for the
positive, negative and relocation controls; the burned-in corner tag for the shortcut model), the
whole-answer map from `Explainer.explain` is scored by:

- hit: the map's peak cell overlaps the evidence's cells (pointing game);
- hit_distractor: the peak overlaps another object instead (a device/catheter for the controls, the
  nodule for the shortcut model), among cases that have one;
- hit_mirror: the peak overlaps the evidence's left–right mirror cells, (row, col) → (row, 7 - col),
  where the relocation control's vision tower moves it;
- mass: share of the map's positive relevance on the evidence's cells;
- chance: the expected hit rate of a uniformly random peak cell (evidence cells / grid cells);
- seconds per case (generation + explanation).

Every method of the engine's registry is scored, both references included: token occlusion
(image-token embeddings replaced at the language model's input) and pixel occlusion (each grid
cell's pixels set to the image's mean, the whole model rerun), which also sees what the vision tower
moves between tokens.

An attention-blocking check runs beside it (`--blocking`): accuracy of each answer word when the
answer rows' attention to the evidence cells is removed in every language layer, against removing
as many random image cells instead (for the relocation control, the mirror cells it reads).
`--into-reports` also stores each model's figures in its folder's `training_report.json`.

`--studies` plays the game over images instead, on the study control (`phantom.STUDY_MODEL_PATH`)
and held-out `phantom.sample_studies` cases, prompted with their image labels as in training:

- volumes with a nodule (presence questions, all "yes", and "which third" questions): slice hit =
  the slice whose whole-answer map holds the most positive relevance (sum of the map's positive
  part) is one of the nodule's slices; chance = nodule slices / 9; mass = share of the positive
  relevance over all slices on the nodule's slices; peak hit = that slice's peak cell is on the nodule;
- prior/current pairs (grown and stable): each image's own peak cell on that image's nodule, and both.

    python bench/pointing_game.py                    # 200 cases per model, every method
    python bench/pointing_game.py --n 40 --models positive --methods chefer
    python bench/pointing_game.py --studies --n 100  # chefer, rollout, raw attention by default
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explainer import Explainer
from explainer.explanation import Explanation
from explainer.methods import IMAGE_REFERENCE
from explainer.methods import METHODS as ENGINE_METHODS
from explainer.overlay import heatmap_overlay
from phantom import (
    MODEL_PATH,
    POOLING_MODEL_PATH,
    RELOCATION_MODEL_PATH,
    SHORTCUT_MODEL_PATH,
    STUDY_MODEL_PATH,
    StudyCase,
    sample,
    sample_studies,
)
from phantom.training.data import encode
from phantom.training.evaluate import blocking_test
from vocabulary.map_stats import pointing_hit
from vocabulary.regions import box_region, mass_share

PATHS = {
    "positive": MODEL_PATH,
    "pooling": POOLING_MODEL_PATH,
    "shortcut": SHORTCUT_MODEL_PATH,
    "relocation": RELOCATION_MODEL_PATH,
}
METHODS = tuple(m for m in ENGINE_METHODS if m != IMAGE_REFERENCE)  # a single image's maps: cell by cell
STUDY_METHODS = ("chefer", "rollout", "raw_attention")  # occlusion would rerun 576 tokens per volume
SEED = 21_000  # held out: training uses seeds < 10_000, the shipped reports 20_000, tests 20_000-20_013


def bench_cases(name: str, n: int, seed: int) -> list:
    """Cases whose evidence is present: the nodule (controls) or the tag (shortcut model)."""
    if name == "shortcut":
        return sample(n, seed, tasks=("presence",), marker_prob=1.0, finding_prob=0.5, answer_rule="marker")
    return sample(n, seed, finding_prob=1.0, distractor_prob=0.8)


def evidence_and_distractor(name: str, case) -> tuple[tuple, tuple | None]:
    if name == "shortcut":
        return case.marker_box, case.lesion_box
    distractors = case.distractors
    return case.lesion_box, (distractors[0].box if distractors else None)


def score_model(name: str, n: int, seed: int, methods: tuple[str, ...]) -> tuple[dict, dict]:
    """Pointing-game numbers per method, and one example's maps per method for the figure."""
    explainer = Explainer.from_pretrained(PATHS[name])
    cases = bench_cases(name, n, seed)
    rows: dict[str, dict[str, list]] = {
        m: {"hit": [], "hit_distractor": [], "hit_mirror": [], "mass": [], "chance": [], "seconds": []}
        for m in methods
    }
    correct, example = [], {}
    for index, case in enumerate(cases):
        evidence_box, distractor_box = evidence_and_distractor(name, case)
        for method in methods:
            started = time.perf_counter()
            explanation = explainer.explain(case.image, case.question, targets="answer", method=method)
            cell_map, answer = explanation.answer_map(), explanation.answer
            seconds = time.perf_counter() - started
            weights = box_region(evidence_box, case.image.size, cell_map.shape)
            row = rows[method]
            row["hit"].append(pointing_hit(cell_map, weights))
            row["hit_mirror"].append(pointing_hit(cell_map, weights[:, ::-1]))
            row["mass"].append(mass_share(cell_map, weights))
            row["chance"].append(float((weights > 0).mean()))
            row["seconds"].append(seconds)
            if distractor_box is not None:
                row["hit_distractor"].append(
                    pointing_hit(cell_map, box_region(distractor_box, case.image.size, cell_map.shape))
                )
            if method == methods[0]:
                correct.append(answer == case.answer)
            if index == 0:
                example[method] = (cell_map, answer)
        if (index + 1) % 50 == 0:
            print(f"  {name}: {index + 1}/{len(cases)} cases", flush=True)
    summary = {
        "cases": len(cases),
        "answer_accuracy": float(np.mean(correct)),
        "methods": {
            method: {
                "hit": float(np.mean(r["hit"])),
                "hit_distractor": float(np.mean(r["hit_distractor"])) if r["hit_distractor"] else None,
                "distractor_cases": len(r["hit_distractor"]),
                "hit_mirror": float(np.mean(r["hit_mirror"])),
                "mass": float(np.mean(r["mass"])),
                "chance": float(np.mean(r["chance"])),
                "seconds_per_case": float(np.mean(r["seconds"])),
            }
            for method, r in rows.items()
        },
    }
    return summary, {"case": cases[0], "explanations": example}


def blocking(name: str, n: int, seed: int) -> dict:
    """Per-word accuracy with the answer rows' attention to the evidence cells blocked (vs random cells)."""
    explainer = Explainer.from_pretrained(PATHS[name])
    model, processor = explainer.model, explainer.processor
    end_of_turn = processor.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    out = {}
    if name == "shortcut":
        groups = {"presence (tag)": (bench_cases(name, n, seed + 1), "marker_cells")}
    else:
        groups = {
            "locate": (sample(n, seed + 1, tasks=("locate",)), "object_cells"),
            "presence (yes)": (sample(n, seed + 2, tasks=("presence",), finding_prob=1.0), "object_cells"),
        }
    if name == "relocation":  # its answer rows read the mirror cells, where the tower moved the nodule
        groups = {label: (cases, "mirror_cells") for label, (cases, _) in groups.items()}
    for label, (cases, evidence) in groups.items():
        with torch.no_grad():
            out[label] = blocking_test(
                model, encode(cases, processor), end_of_turn, seed=seed, evidence=evidence
            )
    return out


def store_in_report(name: str, summary: dict, seed: int, argv: list[str]) -> None:
    """Put a model's pointing-game figures into its training_report.json under "pointing_game"."""
    path = Path(PATHS[name]) / "training_report.json"
    report = json.loads(path.read_text())
    report["pointing_game"] = {
        "command": "python bench/pointing_game.py " + " ".join(argv),
        "seed": seed,
        **summary,
    }
    path.write_text(json.dumps(report, indent=2, default=list) + "\n")


def figure(examples: dict, path: Path, methods: tuple[str, ...]) -> None:
    """One row per model: the phantom with the evidence box (green; the relocation control's mirror box in
    orange), then each method's whole-answer map."""
    tile, pad, header = 192, 6, 34
    width = (len(methods) + 1) * (tile + pad) + pad
    height = len(examples) * (tile + header + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (name, example) in enumerate(examples.items()):
        case, y = example["case"], pad + row * (tile + header + pad)
        box = case.marker_box if name == "shortcut" else case.lesion_box
        image = case.image.resize((tile, tile)).copy()
        scale = tile / case.image.size[0]
        ImageDraw.Draw(image).rectangle([v * scale for v in box], outline=(0, 255, 0), width=2)
        if name == "relocation":  # where its vision tower moves the nodule, in orange
            x0, y0, x1, y1 = box
            mirrored = (case.image.size[0] - x1, y0, case.image.size[0] - x0, y1)
            ImageDraw.Draw(image).rectangle([v * scale for v in mirrored], outline=(255, 160, 0), width=2)
        canvas.paste(image, (pad, y + header))
        draw.text((pad, y + 2), f"{name}: {case.question}", fill="black")
        draw.text((pad, y + 16), f"expected: {case.answer}", fill="black")
        for col, method in enumerate(methods, start=1):
            cell_map, answer = example["explanations"][method]
            overlay = heatmap_overlay(case.image, cell_map).resize((tile, tile))
            x = pad + col * (tile + pad)
            canvas.paste(overlay, (x, y + header))
            draw.text((x, y + 16), f"{method}: '{answer}'", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def image_masses(explanation: Explanation) -> np.ndarray:
    """Positive relevance of each image's whole-answer map, [n_images]."""
    return np.array(
        [np.clip(explanation.answer_map(k), 0, None).sum() for k in range(len(explanation.images))]
    )


def score_study(explainer: Explainer, case: StudyCase, method: str) -> tuple[dict, Explanation]:
    """One study's pointing-game scores (see the module docstring) and its explanation."""
    started = time.perf_counter()
    explanation = explainer.explain(
        case.images, case.question, image_labels=case.image_labels, targets="answer", method=method
    )
    scores: dict = {"seconds": time.perf_counter() - started, "right": explanation.answer == case.answer}
    grid = explanation.grid
    peak_hits = [
        pointing_hit(explanation.answer_map(k), box_region(box, case.images[k].size, grid))
        if box is not None
        else None
        for k, box in enumerate(case.evidence_boxes)
    ]
    if case.kind == "volume":
        masses = image_masses(explanation)
        top = int(np.argmax(masses))
        scores.update(
            slice_hit=top in case.nodule_images,
            chance=len(case.nodule_images) / len(case.images),
            mass=float(masses[list(case.nodule_images)].sum() / masses.sum()) if masses.sum() > 0 else 0.0,
            peak_hit=bool(peak_hits[top]),
        )
    else:
        scores.update(prior_hit=peak_hits[0], current_hit=peak_hits[1], both_hit=all(peak_hits))
        scores["chance"] = float(
            np.mean(
                [
                    (box_region(b, i.size, grid) > 0).mean()
                    for b, i in zip(case.evidence_boxes, case.images, strict=True)
                ]
            )
        )
    return scores, explanation


def study_groups(n: int, seed: int) -> dict[str, list[StudyCase]]:
    """Held-out studies whose evidence is present: volumes with a nodule, pairs grown and stable."""
    volumes = sample_studies(n, seed, "volume", finding_prob=1.0)
    pairs = sample_studies(n, seed, "longitudinal")
    return {
        "volume presence (yes)": [c for c in volumes if c.task == "presence"],
        "volume locate (third)": [c for c in volumes if c.task == "locate"],
        "longitudinal grown (yes)": [c for c in pairs if c.answer == "yes"],
        "longitudinal stable (no)": [c for c in pairs if c.answer == "no"],
    }


def score_studies(n: int, seed: int, methods: tuple[str, ...]) -> tuple[dict, dict]:
    """Per group and method, the mean of every score; one volume and one grown pair for the figure."""
    explainer = Explainer.from_pretrained(STUDY_MODEL_PATH)
    summary, examples = {}, {}
    for group, cases in study_groups(n, seed).items():
        summary[group] = {"cases": len(cases), "methods": {}}
        for method in methods:
            rows = []
            for case in cases:
                scores, explanation = score_study(explainer, case, method)
                rows.append(scores)
                if case is cases[0] and group in ("volume presence (yes)", "longitudinal grown (yes)"):
                    examples.setdefault(group, {"case": case, "explanations": {}})["explanations"][method] = (
                        explanation
                    )
            summary[group]["methods"][method] = {
                key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key != "right"
            }
            if method == methods[0]:
                summary[group]["answer_accuracy"] = float(np.mean([r["right"] for r in rows]))
            print(f"  {group} / {method}: {json.dumps(summary[group]['methods'][method])}", flush=True)
    return summary, examples


def study_figure(examples: dict, path: Path, method: str) -> None:
    """One row per example study: each image's map from `method`, all on the study's colour scale (its
    largest cell), the nodule's box in green, and under it the label and the image's share of the
    study's positive relevance."""
    tile, pad, header = 128, 4, 30
    width = max(len(e["case"].images) for e in examples.values()) * (tile + pad) + pad
    canvas = Image.new("RGB", (width, len(examples) * (tile + header + 14 + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for row, example in enumerate(examples.values()):
        case, explanation = example["case"], example["explanations"][method]
        y = pad + row * (tile + header + 14 + pad)
        draw.text(
            (pad, y), f"{case.question} expected: {case.answer}, answered: {explanation.answer}", fill="black"
        )
        draw.text((pad, y + 14), f"{method}, whole answer; green: the nodule", fill="black")
        masses = image_masses(explanation)
        shares = masses / masses.sum() if masses.sum() > 0 else masses
        top = max(float(explanation.answer_map(k).max()) for k in range(len(case.images)))
        for k, (image, label, box) in enumerate(
            zip(case.images, case.image_labels, case.evidence_boxes, strict=True)
        ):
            overlay = heatmap_overlay(image, explanation.answer_map(k), scale=top).resize((tile, tile))
            if box is not None:
                ratio = tile / image.size[0]
                ImageDraw.Draw(overlay).rectangle([v * ratio for v in box], outline=(0, 255, 0), width=2)
            x = pad + k * (tile + pad)
            canvas.paste(overlay, (x, y + header))
            draw.text((x, y + header + tile), f"{label}: {shares[k]:.0%}", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def run_studies(args: argparse.Namespace, argv: list[str] | None) -> None:
    methods = tuple(args.methods or STUDY_METHODS)
    print(f"study control: pointing game over images, {args.n} volumes and {args.n} pairs", flush=True)
    summary, examples = score_studies(args.n, args.seed, methods)
    out_json = args.json or Path("docs/pointing_game_studies.json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"seed": args.seed, "results": summary}, indent=2) + "\n")
    study_figure(examples, args.figure or Path("docs/pointing_game_studies.png"), methods[0])
    if args.into_reports:
        path = Path(STUDY_MODEL_PATH) / "training_report.json"
        report = json.loads(path.read_text())
        command = "python bench/pointing_game.py " + " ".join(argv if argv is not None else sys.argv[1:])
        report["pointing_game"] = {"command": command, "seed": args.seed, "results": summary}
        path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_json}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument(
        "--methods", nargs="+", default=None, choices=list(METHODS), help="default: every method"
    )
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--blocking", type=int, default=200, help="cases per blocking group (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="default: docs/pointing_game[_studies].json")
    parser.add_argument("--figure", type=Path, default=None, help="default: docs/pointing_game[_studies].png")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--into-reports",
        action="store_true",
        help="also store each model's figures in its training_report.json",
    )
    parser.add_argument(
        "--studies",
        action="store_true",
        help="the study control over images (volumes, prior/current pairs) instead of the chest models",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.studies:
        run_studies(args, argv)
        return
    methods = tuple(args.methods or METHODS)
    args.json = args.json or Path("docs/pointing_game.json")
    args.figure = args.figure or Path("docs/pointing_game.png")
    results, examples = {}, {}
    for name in args.models:
        print(f"{name}: pointing game on {args.n} cases", flush=True)
        summary, examples[name] = score_model(name, args.n, args.seed, methods)
        if args.blocking:
            summary["blocking"] = blocking(name, args.blocking, args.seed)
        results[name] = summary
        print(json.dumps(summary, indent=1), flush=True)
        if args.into_reports:
            store_in_report(name, summary, args.seed, argv if argv is not None else sys.argv[1:])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seed": args.seed, "results": results}, indent=2) + "\n")
    figure(examples, args.figure, methods)
    print(f"wrote {args.json} and {args.figure}")


if __name__ == "__main__":
    main()
