"""Faithfulness of each attention method on phantom cases, and what each check costs per item.

For every case the whole answer is explained, then `explainer.checks.check_explanation` scores the
chefer, rollout and raw-attention maps (occlusion is the reference, and its own removal curves are
the ceiling) by:

- agreement with occlusion: Spearman rank correlation over the image cells, and whether the peak
  cells coincide (the audit's trust rule uses the peak-cell rate);
- deletion (MoRF) and insertion-like (LeRF) curves: mean log-probability of the answer while image
  tokens are replaced by the occlusion baseline, most- or least-relevant first; gap = LeRF − MoRF;
- model randomisation: Spearman between the map and the map after re-initialising the top two
  language layers (high = the map does not depend on what the model learned).

Costs are seconds per item (one whole-answer target) for each method's map, its removal curves and
its randomisation map; the two references' map costs are printed as a ratio (pixel occlusion reruns
the vision tower for every cell). Everything runs in one process on
the same cases.

    python bench/faithfulness.py                       # 100 cases, the honest (positive) model
    python bench/faithfulness.py --models positive pooling --n 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explainer import Explainer
from explainer.checks import check_explanation
from explainer.methods import IMAGE_REFERENCE, METHODS, REFERENCE_METHODS
from phantom import MODEL_PATH, POOLING_MODEL_PATH, sample

PATHS = {"positive": MODEL_PATH, "pooling": POOLING_MODEL_PATH}
SEED = 22_000  # held out: training uses seeds < 10_000, reports 20_000, the pointing game 21_000


def score_model(name: str, n: int, seed: int) -> dict:
    explainer = Explainer.from_pretrained(PATHS[name])
    cases = sample(n, seed, finding_prob=1.0, distractor_prob=0.8)
    per_method: dict[str, dict[str, list[float]]] = {m: {} for m in METHODS if m != IMAGE_REFERENCE}
    explain_seconds, correct = [], []
    for index, case in enumerate(cases):
        started = time.perf_counter()
        explanation = explainer.explain(case.image, case.question, targets="answer")
        explain_seconds.append(time.perf_counter() - started)
        correct.append(explanation.answer == case.answer)
        answer_target = [t for t in explanation.targets if t.kind == "answer"]
        for check in check_explanation(explainer, explanation, answer_target):
            values = per_method[check.method]
            for key, value in (
                ("spearman_vs_occlusion", check.spearman_vs_occlusion[0]),
                ("top_cell_agrees", float(check.top_cell_agrees[0])),
                ("morf_auc", check.morf_auc),
                ("lerf_auc", check.lerf_auc),
                ("auc_gap", check.auc_gap),
                (
                    "randomization_spearman",
                    check.randomization_spearman[0] if check.randomization_spearman else None,
                ),
                ("map_seconds", check.seconds),
                ("removal_seconds", check.removal_seconds),
                ("randomization_seconds", check.randomization_seconds),
            ):
                if value is not None:
                    values.setdefault(key, []).append(float(value))
        if (index + 1) % 25 == 0:
            print(f"  {name}: {index + 1}/{len(cases)} cases", flush=True)

    def summary(values: list[float]) -> dict:
        array = np.asarray([v for v in values if np.isfinite(v)])
        if array.size == 0:
            return {"mean": None, "median": None, "se": None, "n": 0}
        return {
            "mean": float(array.mean()),
            "median": float(np.median(array)),
            "se": float(array.std(ddof=1) / np.sqrt(array.size)) if array.size > 1 else None,
            "n": int(array.size),
        }

    return {
        "cases": len(cases),
        "answer_accuracy": float(np.mean(correct)),
        "explain_seconds_per_item": float(np.mean(explain_seconds)),
        "methods": {m: {k: summary(v) for k, v in values.items()} for m, values in per_method.items()},
    }


def print_table(name: str, result: dict) -> None:
    columns = [
        ("spearman_vs_occlusion", "median", "ρ vs occl"),
        ("top_cell_agrees", "mean", "peak agree"),
        ("morf_auc", "mean", "MoRF AUC"),
        ("lerf_auc", "mean", "LeRF AUC"),
        ("auc_gap", "mean", "gap"),
        ("randomization_spearman", "median", "ρ random"),
        ("map_seconds", "mean", "map s"),
        ("removal_seconds", "mean", "removal s"),
        ("randomization_seconds", "mean", "random s"),
    ]
    print(
        f"\n{name}: {result['cases']} cases, answers {result['answer_accuracy']:.1%} right, "
        f"explain (generate + chefer) {result['explain_seconds_per_item']:.3f} s/item"
    )
    print(f"{'method':<14}" + "".join(f"{label:>12}" for _, _, label in columns))
    for method, stats in result["methods"].items():
        cells = []
        for key, statistic, _ in columns:
            value = stats.get(key, {}).get(statistic)
            cells.append(f"{value:>12.3f}" if value is not None else f"{'—':>12}")
        print(f"{method:<14}" + "".join(cells))
    token, pixel = (result["methods"][m].get("map_seconds", {}).get("mean") for m in REFERENCE_METHODS)
    if token and pixel:
        print(f"pixel occlusion costs {pixel / token:.2f}× token occlusion per target (same items, same run)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["positive"], choices=list(PATHS))
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--json", type=Path, default=Path("docs/faithfulness.json"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.models:
        print(f"{name}: faithfulness checks on {args.n} cases", flush=True)
        results[name] = score_model(name, args.n, args.seed)
        print_table(name, results[name])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seed": args.seed, "results": results}, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
