"""Shared fixtures. Nothing in the test suite downloads: models are built from configs."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect keeps its profile, SQLite database and logs under PREFECT_HOME: never the developer's ~/.prefect
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="vlm-audit-prefect-home-"))

import pytest
from PIL import Image

from explainer.runtime import keep_freed_memory
from phantom.build import TinyGemma3Spec
from tests.models import TinyVLM, random_image
from tests.s3_fixtures import (  # noqa: F401  (shared fixtures)
    make_dicom,
    make_series,
    s3_auth,
    s3_bucket,
    s3_env,
    s3_server,
)

keep_freed_memory()  # page faults on fresh mmap pages dominate autograd on VMs (explainer/runtime.py)


@pytest.fixture(scope="session")
def tiny() -> TinyVLM:
    """6 layers (5 sliding, window 8, then 1 full), 4 query / 2 KV heads, 2×2 image grid."""
    return TinyVLM(TinyGemma3Spec(initializer_range=0.2))


@pytest.fixture(scope="session")
def tiny_grid4() -> TinyVLM:
    """Like `tiny` with a 4×4 image grid."""
    return TinyVLM(TinyGemma3Spec(mm_tokens_per_image=16, initializer_range=0.2), seed=1)


@pytest.fixture(scope="session")
def medgemma_pattern() -> TinyVLM:
    """MedGemma 1.5's exact layer pattern at reduced width: 34 layers, full attention at 5/11/17/23/29,
    sliding window, 8 query / 4 KV heads, 16×16 image grid."""
    spec = TinyGemma3Spec(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=34,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=8,
        sliding_window=64,
        image_size=64,
        patch_size=4,
        vision_hidden_size=16,
        vision_intermediate_size=32,
        vision_layers=1,
        mm_tokens_per_image=256,
    )
    return TinyVLM(spec, seed=2)


@pytest.fixture
def image() -> Image.Image:
    return random_image(0)
