"""Pipeline fixtures: a tiny Gemma3 saved to a folder once, one Prefect test server, manifests.

Nothing downloads: the model is built from a config (tests/models.py) and loaded by path, as the
CLI and the Dask workers load any checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from phantom.build import TinyGemma3Spec
from tasks.config import AuditConfig
from tests.images import png_header_only
from tests.models import TinyVLM

TINY_SPEC = TinyGemma3Spec(mm_tokens_per_image=16, initializer_range=0.2)  # 4×4 grid: regions mean something
FAST = {"max_new_tokens": 3, "targets": "findings", "overlays": "answer", "aggregate": False}


def fast_config(manifest: str | Path, out: str | Path, **settings: Any) -> AuditConfig:
    """A short audit's settings (`FAST`: three answer tokens, no aggregation), `settings` on top."""
    return AuditConfig(manifest=str(manifest), out=str(out), **{**FAST, **settings})


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread here and in every process these tests start (CLI, served runs; Dask workers
    already get OMP_NUM_THREADS=1): on a shared 2-core machine OpenMP spin-waiting made a tiny
    model's forward 15× slower than single-threaded."""
    import torch

    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    """A tiny random Gemma3 (model + processor) saved once per session, loaded by path."""
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    tiny = TinyVLM(TINY_SPEC, seed=1)
    tiny.model.save_pretrained(folder)
    tiny.processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """ONE temporary Prefect server (SQLite under a temp dir) for every Prefect test; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    # a loaded 2-core machine needs more than the default 30 s to start the server
    with prefect_test_harness(server_startup_timeout=240):
        yield PREFECT_API_URL.value()


def png_bytes(seed: int = 0, size: tuple[int, int] = (40, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def manifest_bytes(rows: Sequence[dict[str, Any]], fmt: str = "csv") -> bytes:
    """CSV (columns from the first row, in order) or JSONL bytes of manifest rows."""
    if fmt == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows).encode()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def local_dataset(folder: Path, n: int, *, name: str = "manifest.csv", first_seed: int = 0) -> str:
    """`n` PNGs and a CSV manifest (item_id, image, question, site, roi_box) in `folder`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n):
        image = f"images/img-{first_seed + index:03d}.png"
        (folder / "images").mkdir(exist_ok=True)
        (folder / image).write_bytes(png_bytes(first_seed + index))
        rows.append(
            {
                "item_id": f"item-{first_seed + index:03d}",
                "image": image,
                "question": "Where is the nodule?",
                "site": "north" if index % 2 else "south",
                "roi_box": "0,0,20,16" if index % 3 == 0 else "",
            }
        )
    path = folder / name
    path.write_bytes(manifest_bytes(rows))
    return str(path)


@pytest.fixture
def bad_images(make_dicom) -> dict[str, tuple[str, bytes | None, str, str]]:
    """name → (file name, bytes or None for a missing object, expected stage, expected error_type)."""
    return {
        "missing": ("missing.png", None, "image", "ObjectNotFound"),
        "truncated": ("truncated.png", png_bytes(5)[:80], "image", "CorruptImage"),
        "unsupported": ("scan.gif", b"GIF89a" + b"\0" * 32, "image", "UnsupportedImageFormat"),
        "dicom_without_pixels": (
            "empty.dcm",
            make_dicom(np.zeros((4, 4), dtype=np.uint16), pixel_data=False),
            "image",
            "MissingPixelData",
        ),
        "huge": ("huge.png", png_header_only(20000, 20000), "image", "ImageTooLarge"),
    }
