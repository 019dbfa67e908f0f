"""Items per second, model time and peak memory against batch size (`AuditConfig.batch_size`).

The same held-out phantom cases (48, seeds from 24,500: training uses seeds < 10,000, the reports
20,000, the other benches 21,000-24,000) go through `tasks.worker.explain_shard`, what every shard
task of an audit runs (read and decode the images, generate, explain, rows, overlays on their
background thread, Parquet parts), on the positive phantom model, once per batch size and pass in one
process; passes alternate between batch sizes `--repeats` times (the machine's speed drifts) and the
fastest pass of each is compared, every pass printed. Model time is the shards' generate + explain
seconds; wall time the shards' own. Then each batch size once more in a fresh process of this
script, for its peak resident memory above the loaded model (CPU; the allocator's peak on CUDA).
Checked, batch 8 against batch 1: the same answers, maps within 1e-4, model time at least 1.8× and
wall time 1.3× lower.

    python bench/batch_throughput.py --threads 1 --json docs/batch_throughput.json
    python bench/batch_throughput.py --device cuda          # a GPU, float32
    python bench/batch_throughput.py --medgemma-shapes --json docs/batch_throughput_medgemma.json
    python bench/batch_throughput.py --medgemma-shapes --device cuda --dtype bfloat16   # bench/_medgemma_shapes.py
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEED = 24_500  # held out: training < 10_000, reports 20_000, the other benches 21_000-24_000
BATCH_SIZES = (1, 2, 4, 8)
GOALS = {"model_speedup": 1.8, "wall_speedup": 1.3, "max_map_difference": 1e-4}


def write_cases(folder: Path, n: int, seed: int) -> str:
    """`n` phantom cases (presence and location questions) as PNGs and a CSV manifest; its path."""
    from phantom import sample

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, case in enumerate(sample(n, seed)):
        image = f"images/case-{index:03d}.png"
        case.image.save(folder / image)
        rows.append({"item_id": f"case-{index:03d}", "image": image, "question": case.question})
    path = folder / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def run_pass(manifest: str, out: str, batch_size: int, args: argparse.Namespace) -> dict:
    """Every shard of the manifest through `explain_shard` at `batch_size`: seconds and counts."""
    from phantom import MODEL_PATH
    from storage import manifest_fingerprint, read_manifest
    from tasks.config import AuditConfig
    from tasks.shards import ShardJob
    from tasks.worker import explain_shard

    config = AuditConfig(
        manifest=manifest,
        out=out,
        model=str(MODEL_PATH),
        device=args.device,
        dtype=args.dtype,
        shard_size=args.shard_size,
        batch_size=batch_size,
        max_new_tokens=args.max_new_tokens,
        aggregate=False,
        report=False,
    )
    items = read_manifest(manifest)
    shards = range((len(items.items) + args.shard_size - 1) // args.shard_size)
    started = time.perf_counter()
    summaries = [
        explain_shard(ShardJob("bench", shard, manifest_fingerprint(items), config)) for shard in shards
    ]
    wall = time.perf_counter() - started
    return {
        "batch_size": batch_size,
        "wall_seconds": wall,
        "model_seconds": sum(s.generate_seconds + s.explain_seconds for s in summaries),
        "generate_seconds": sum(s.generate_seconds for s in summaries),
        "explain_seconds": sum(s.explain_seconds for s in summaries),
        "ok": sum(s.ok for s in summaries),
        "failed": sum(s.failed for s in summaries),
        "out": out,
    }


def compare(out: str, reference: str) -> dict:
    """Answers equal, and the largest difference of any map value, between two passes' tables."""
    import numpy as np

    from storage import read_table

    keys = ["item_id", "image_index", "target_kind", "target_text", "token_position"]

    def tables(root: str):
        answers = read_table(root, "answers", "bench").to_pandas().set_index("item_id").sort_index()
        tokens = read_table(root, "tokens", "bench").to_pandas()
        return answers, tokens.sort_values("item_id", kind="stable").reset_index(drop=True)

    answers, tokens = tables(out)
    want_answers, want_tokens = tables(reference)
    same_targets = tokens[keys].equals(want_tokens[keys])
    difference = 0.0
    if same_targets:
        for column in ("image_relevance", "text_relevance"):
            for got, want in zip(tokens[column], want_tokens[column], strict=True):
                difference = max(difference, float(np.abs(np.asarray(got) - np.asarray(want)).max(initial=0)))
    return {
        "same_answers": bool(answers["answer"].equals(want_answers["answer"])),
        "same_targets": bool(same_targets),
        "max_map_difference": difference if same_targets else None,
    }


def memory_child(args: argparse.Namespace) -> None:
    """One pass at `--memory-child` batch size in this fresh process; print its peak memory as JSON."""
    import torch

    from bench._memory import peak_memory
    from phantom import MODEL_PATH
    from tasks import cache

    device = torch.device(args.device if args.device != "auto" else "cpu")
    cache.get_explainer(str(MODEL_PATH), args.device, dtype=args.dtype)  # loaded before measuring
    work = Path(tempfile.mkdtemp(prefix="vlm-audit-batch-memory-"))
    with peak_memory(device) as peak:
        result = run_pass(args.manifest, str(work / "out"), args.memory_child, args)
    print(json.dumps({**result, "peak_mib": peak["peak_bytes"] / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="held-out phantom cases")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--repeats", type=int, default=3, help="alternated passes per batch size")
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="write every pass and the summary here")
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    from bench import _medgemma_shapes

    _medgemma_shapes.add_arguments(parser)
    args = parser.parse_args()
    import torch

    from explainer.runtime import keep_freed_memory

    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.memory_child:
        return memory_child(args)
    if args.medgemma_shapes:
        return _medgemma_shapes.run(args)

    from phantom import MODEL_PATH
    from tasks import cache

    work = Path(tempfile.mkdtemp(prefix="vlm-audit-batch-"))
    args.manifest = write_cases(work / "data", args.n, args.seed)
    cache.get_explainer(str(MODEL_PATH), args.device, dtype=args.dtype)
    print(f"model: positive phantom ({MODEL_PATH}); device {args.device}, dtype {args.dtype or 'checkpoint'}, "
          f"torch threads {torch.get_num_threads()}; {args.n} cases from seed {args.seed}, shards of "
          f"{args.shard_size}, max new tokens {args.max_new_tokens}")  # fmt: skip
    passes: dict[int, list[dict]] = {size: [] for size in args.batch_sizes}
    run_pass(args.manifest, str(work / "warm-up"), max(args.batch_sizes), args)  # first-call costs, excluded
    for repeat in range(args.repeats):
        order = args.batch_sizes if repeat % 2 == 0 else args.batch_sizes[::-1]
        for size in order:
            result = run_pass(args.manifest, str(work / f"out-{size}-{repeat}"), size, args)
            passes[size].append(result)
            print(f"pass {repeat + 1}, batch {size}: wall {result['wall_seconds']:.2f} s, model "
                  f"{result['model_seconds']:.2f} s ({result['ok']} ok, {result['failed']} failed)")  # fmt: skip
    best = {size: min(runs, key=lambda run: run["wall_seconds"]) for size, runs in passes.items()}
    fastest_model = {size: min(run["model_seconds"] for run in runs) for size, runs in passes.items()}
    memory = {}
    for size in args.batch_sizes:
        command = [sys.executable, __file__, "--memory-child", str(size), "--manifest", args.manifest]
        command += ["--device", args.device, "--shard-size", str(args.shard_size)]
        command += ["--max-new-tokens", str(args.max_new_tokens)]
        command += (["--dtype", args.dtype] if args.dtype else []) + (
            ["--threads", str(args.threads)] if args.threads else []
        )
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        memory[size] = json.loads(output.splitlines()[-1])["peak_mib"]

    reference = best[min(args.batch_sizes)]
    rows = []
    print("\n| batch | items/s (wall) | wall | model time (generate + explain) | median wall | peak memory |"
          " same answers | max map difference |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for size in args.batch_sizes:
        run = best[size]
        check = compare(run["out"], reference["out"])
        row = {
            "batch_size": size,
            "items_per_second": args.n / run["wall_seconds"],
            "wall_seconds": run["wall_seconds"],
            "model_seconds": fastest_model[size],
            "median_wall_seconds": statistics.median(r["wall_seconds"] for r in passes[size]),
            "peak_mib": memory[size],
            **check,
        }
        rows.append(row)
        difference = (
            "targets differ" if row["max_map_difference"] is None else f"{row['max_map_difference']:.1e}"
        )
        print(f"| {size} | {row['items_per_second']:.2f} | {row['wall_seconds']:.2f} s | "
              f"{row['model_seconds']:.2f} s | {row['median_wall_seconds']:.2f} s | {row['peak_mib']:.0f} MiB | "
              f"{'yes' if check['same_answers'] else 'NO'} | {difference} |")  # fmt: skip
    verdict = {}
    if 1 in best and 8 in best:
        one, eight = rows[args.batch_sizes.index(1)], rows[args.batch_sizes.index(8)]
        verdict = {
            "same_answers": eight["same_answers"],
            "maps_within": eight["max_map_difference"] is not None
            and eight["max_map_difference"] <= GOALS["max_map_difference"],
            "model_speedup": one["model_seconds"] / eight["model_seconds"],
            "wall_speedup": one["wall_seconds"] / eight["wall_seconds"],
        }
        print(f"\nbatch 8 against 1: same answers {verdict['same_answers']}, maps within 1e-4 "
              f"{verdict['maps_within']}, model time {verdict['model_speedup']:.2f}x lower (goal >= 1.8), "
              f"wall {verdict['wall_speedup']:.2f}x lower (goal >= 1.3)")  # fmt: skip
    if args.json:
        record = {
            "date": datetime.date.today().isoformat(),
            "device": args.device,
            "dtype": args.dtype,
            "threads": torch.get_num_threads(),
            "n": args.n,
            "seed": args.seed,
            "shard_size": args.shard_size,
            "max_new_tokens": args.max_new_tokens,
            "passes": {str(size): runs for size, runs in passes.items()},
            "rows": rows,
            "batch_8_against_1": verdict,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
