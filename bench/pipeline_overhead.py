"""What the pipeline costs on top of the explainer, and whether its memory stays flat with run size.

One run, same model, same items, same process for the throughput figures:
  1. the explainer alone: read + decode each image, `Explainer.explain`, in a plain loop;
  2. `flows.audit` on a local output folder under a temporary local Prefect server (rows, overlays,
     Parquet parts, run.json included; a new output folder per pass, so nothing is resumed).
The two alternate `--repeats` times and the fastest pass of each is compared (the least disturbed
by other load on a shared machine; every pass is printed). Model loading and Prefect server
start-up are excluded from both (printed separately).
Then peak RSS of the flow in fresh processes for 200 and 2,000 items (goal: flat, because outputs
are streamed per shard and never accumulated).

    python bench/pipeline_overhead.py                   # phantom model; 200 items; RSS for 200 vs 2,000
    python bench/pipeline_overhead.py --large 0         # skip the 2,000-item RSS run
    python bench/pipeline_overhead.py --threads 1       # one torch thread (shared or small CPUs)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from phantom.demo import write_demo_dataset
from tasks.config import AuditConfig, OverlaysPolicy


def bench_model(folder: Path) -> tuple[str, str]:
    """The phantom model if it is built, else a tiny random Gemma3 saved to `folder` (and say so)."""
    from phantom import MODEL_PATH

    if (MODEL_PATH / "config.json").is_file():
        return str(MODEL_PATH), "phantom model (phantom.MODEL_PATH)"
    from phantom.build import TinyGemma3Spec, random_gemma3

    spec = TinyGemma3Spec(mm_tokens_per_image=16, initializer_range=0.2)
    corpus = ["Where is the nodule? The nodule is in the right upper zone. Yes. No."]
    model, processor = random_gemma3(spec, corpus, vocab_size=160)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder), "TINY RANDOM Gemma3 (4×4 grid): the phantom model is not built yet"


def bare_loop(manifest: str, model: str, device: str, max_new_tokens: int, targets) -> float:
    """Seconds to explain every manifest item with the explainer alone (model already loaded)."""
    from storage import StoreCache, decode_image, read_manifest
    from tasks import cache

    explainer = cache.get_explainer(model, device)
    reader = StoreCache()
    items = read_manifest(manifest).items
    started = time.perf_counter()
    for item in items:
        image = decode_image(reader.read_uri(item.image_uri), item.image_uri)
        explainer.explain(image, item.question, max_new_tokens=max_new_tokens, targets=targets)
    return time.perf_counter() - started


def flow_run(manifest: str, out: str, model: str, args: argparse.Namespace) -> dict:
    from flows.audit import audit

    config = AuditConfig(
        manifest=manifest,
        out=out,
        model=model,
        device=args.device,
        shard_size=args.shard_size,
        max_new_tokens=args.max_new_tokens,
        overlays=args.overlays,
        aggregate=False,
    )
    started = time.perf_counter()
    result = audit(config)
    return {"seconds": time.perf_counter() - started, "counts": result.counts}


def rss_child(args: argparse.Namespace) -> None:
    """Run the flow on `--rss-child` items in this fresh process; print seconds and RSS figures as JSON."""
    import torch

    from bench._memory import _rss_bytes, peak_memory
    from tasks import cache

    work = Path(tempfile.mkdtemp(prefix="vlm-audit-rss-"))
    manifest = write_demo_dataset(work / "data", args.rss_child, seed=1)
    cache.get_explainer(args.model, args.device)
    before = _rss_bytes()
    with peak_memory(torch.device("cpu")) as peak:  # sampled resident set size, peak above entry
        result = flow_run(str(manifest), str(work / "out"), args.model, args)
    print(
        json.dumps(
            {
                "items": args.rss_child,
                "seconds": result["seconds"],
                "rss_before_mib": before / 2**20,
                "peak_above_mib": peak["peak_bytes"] / 2**20,
                "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="items for the throughput comparison")
    parser.add_argument("--large", type=int, default=2000, help="items of the second RSS run (0: skip)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--shard-size", type=int, default=AuditConfig.model_fields["shard_size"].default)
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternated passes of each; the best of each is compared"
    )
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument(
        "--overlays",
        default=AuditConfig.model_fields["overlays"].default,
        choices=typing.get_args(OverlaysPolicy),
    )
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    from explainer.runtime import keep_freed_memory

    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.rss_child:
        return rss_child(args)

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tasks.config import DEFAULT_FINDINGS

    work = Path(tempfile.mkdtemp(prefix="vlm-audit-bench-"))
    model, model_note = bench_model(work / "model")
    args.model = model
    manifest = str(write_demo_dataset(work / "data", args.n, seed=0))
    print(f"model: {model_note}\ndevice: {args.device}, torch threads: {torch.get_num_threads()}, items: {args.n}, "
          f"shard size: {args.shard_size}, max new tokens: {args.max_new_tokens}, overlays: {args.overlays}")  # fmt: skip
    started = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=240):  # a temporary local server, as in ephemeral mode
        print(f"prefect server start-up (excluded): {time.perf_counter() - started:.1f} s")
        from tasks import cache

        loading = time.perf_counter()
        cache.get_explainer(model, args.device)
        print(f"model load (excluded, once per process): {time.perf_counter() - loading:.1f} s")
        bares, flows = [], []
        for attempt in range(args.repeats):  # alternated, so both see the same machine conditions
            bares.append(bare_loop(manifest, model, args.device, args.max_new_tokens, list(DEFAULT_FINDINGS)))
            flows.append(flow_run(manifest, str(work / f"out-{attempt}"), model, args))
        flow_seconds = [run["seconds"] for run in flows]
        bare, flow = min(bares), flows[flow_seconds.index(min(flow_seconds))]
        print(f"explainer alone : {args.n / bare:7.2f} items/s ({bare:.1f} s; passes "
              f"{', '.join(f'{b:.1f}' for b in bares)} s)")  # fmt: skip
        print(f"flows.audit     : {args.n / flow['seconds']:7.2f} items/s ({flow['seconds']:.1f} s; "
              f"{flow['counts']['ok']} ok, {flow['counts']['targets']} token rows; passes "
              f"{', '.join(f'{f:.1f}' for f in flow_seconds)} s)")  # fmt: skip
        print(f"ratio           : {bare / flow['seconds']:.2f} (goal >= 0.80)")
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
        for n in [args.n] + ([args.large] if args.large else []):
            command = [
                sys.executable,
                __file__,
                "--rss-child",
                str(n),
                "--model",
                model,
                "--device",
                args.device,
            ]
            command += ["--shard-size", str(args.shard_size), "--max-new-tokens", str(args.max_new_tokens)]
            command += ["--overlays", args.overlays] + (
                ["--threads", str(args.threads)] if args.threads else []
            )
            child = json.loads(
                subprocess.run(
                    command, env=env, check=True, capture_output=True, text=True
                ).stdout.splitlines()[-1]
            )
            print(f"RSS, {n:5d} items: {child['rss_before_mib']:6.1f} MiB with the model loaded, peak "
                  f"{child['peak_above_mib']:+6.1f} MiB during the flow; process max {child['max_rss_mib']:.1f} MiB; "
                  f"{n / child['seconds']:.2f} items/s")  # fmt: skip


if __name__ == "__main__":
    main()
