"""Per-process caches: the model (loaded once per worker process and kept), stores, manifests.

A Dask worker process, a Prefect task worker or the CLI process keeps one `Explainer` per
(model, device, revision, dtype) for its whole life, so shards after the first pay no load time.
Only small values leave a worker: shard summaries and URIs, never tensors.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from storage import (
    Manifest,
    ManifestItem,
    ObjectStore,
    StoreCache,
    manifest_fingerprint,
    normalize_uri,
    open_store,
    read_manifest,
)
from tasks.shards import select_items

if TYPE_CHECKING:  # torch and transformers load in the processes that explain, not in the orchestrator
    from explainer import Explainer


class ModelLoadError(RuntimeError):
    """The model could not be loaded (missing folder, not cached offline, not a Gemma3 VLM)."""


class ManifestChanged(RuntimeError):
    """The manifest's content differs from the one the run was planned with."""


@dataclass
class LoadedModel:
    """A loaded explainer and its lock: one explanation at a time per model (hooks are process state),
    while other threads decode images, render overlays and write parts."""

    explainer: Explainer
    revision: str | None  # the hub commit, or "sha256:<16 hex>" of a local folder's files
    load_seconds: float
    pid: int
    lock: threading.Lock = field(default_factory=threading.Lock)


def local_checksum(folder: str) -> str | None:
    """`sha256:<16 hex>` over a local model folder's config and weight files; None if not a folder."""
    if not os.path.isdir(folder):
        return None
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name == "config.json" or name.endswith((".safetensors", ".bin", ".index.json")):
            digest.update(name.encode())
            with open(os.path.join(folder, name), "rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


_LOCK = threading.Lock()
_MODELS: dict[tuple, LoadedModel] = {}
_LOAD_COUNT = 0
_MEMORY_TUNED = False
_STORES: dict[tuple, ObjectStore] = {}
_READERS: dict[tuple, StoreCache] = {}
_MANIFESTS: OrderedDict[tuple[str, str], Manifest] = OrderedDict()
_MAX_MANIFESTS = 4


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when a GPU is visible (one per Dask worker: CUDA_VISIBLE_DEVICES), else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def get_loaded(
    model: str, device: str = "auto", *, revision: str | None = None, dtype: str | None = None
) -> LoadedModel:
    """The process's `LoadedModel` for these settings, loading it on first use."""
    global _LOAD_COUNT, _MEMORY_TUNED
    key = (str(model), resolve_device(device), revision, dtype)
    with _LOCK:  # two threads of one worker must not load the same weights twice
        if key not in _MODELS:
            from explainer import Explainer
            from explainer.runtime import keep_freed_memory

            if not _MEMORY_TUNED:
                keep_freed_memory()  # once per process, before the first autograd pass (explainer/runtime.py)
                _MEMORY_TUNED = True
            started = time.perf_counter()
            try:
                explainer = Explainer.from_pretrained(key[0], device=key[1], dtype=dtype, revision=revision)
            except Exception as exc:
                raise ModelLoadError(
                    f"cannot load model {key[0]!r} on {key[1]} ({type(exc).__name__}: {exc}); pass a local "
                    "folder with config.json, model weights and processor files, or a hub id that is in "
                    "the local cache (nothing is downloaded when HF_HUB_OFFLINE=1)"
                ) from exc
            revision_found = explainer.info.revision or local_checksum(key[0])
            _MODELS[key] = LoadedModel(explainer, revision_found, time.perf_counter() - started, os.getpid())
            _LOAD_COUNT += 1
        return _MODELS[key]


def get_explainer(
    model: str, device: str = "auto", *, revision: str | None = None, dtype: str | None = None
) -> Explainer:
    """The process's `Explainer` for a model, loaded once and kept (see `get_loaded`)."""
    return get_loaded(model, device, revision=revision, dtype=dtype).explainer


def model_load_count() -> int:
    """How many models this process has loaded (tests check that a worker loads once)."""
    return _LOAD_COUNT


def _credentials_marker() -> tuple[str | None, ...]:
    """Which AWS endpoint and identity the environment names: a cached client serves only those."""
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    return (
        os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
        os.environ.get("AWS_PROFILE"),
        os.environ.get("AWS_ACCESS_KEY_ID"),
        hashlib.sha256(secret.encode()).hexdigest() if secret else None,
    )


def output_store(out: str, endpoint_url: str | None, region: str | None) -> ObjectStore:
    key = (out, endpoint_url, region, *_credentials_marker())
    with _LOCK:
        if key not in _STORES:
            _STORES[key] = open_store(out, endpoint_url=endpoint_url, region=region)
        return _STORES[key]


def reader(endpoint_url: str | None, region: str | None) -> StoreCache:
    key = (endpoint_url, region, *_credentials_marker())
    with _LOCK:
        if key not in _READERS:
            _READERS[key] = StoreCache(endpoint_url=endpoint_url, region=region)
        return _READERS[key]


def remember_manifest(manifest: Manifest, fingerprint: str | None = None) -> None:
    """Seed the cache with a manifest the flow already read (in-process runs skip a second read)."""
    _remember((manifest.uri, fingerprint or manifest_fingerprint(manifest)), manifest)


def _remember(key: tuple, manifest: Manifest) -> None:
    with _LOCK:
        _MANIFESTS[key] = manifest
        while len(_MANIFESTS) > _MAX_MANIFESTS:
            _MANIFESTS.popitem(last=False)


def shard_items(
    manifest_uri: str,
    fingerprint: str,
    shard_size: int,
    shard_index: int,
    *,
    endpoint_url=None,
    region=None,
    limit: int | None = None,
    sample: int | None = None,
) -> tuple[ManifestItem, ...]:
    """The items of one shard of the run's items (all, or the `limit`/`sample` selection), reading the
    manifest once per process and checking it has not changed; a selection is cut once per process too."""
    key = (normalize_uri(manifest_uri), fingerprint)
    selection_key = (*key, limit, sample)
    with _LOCK:
        selected = _MANIFESTS.get(selection_key)
    if selected is None:
        with _LOCK:
            whole = _MANIFESTS.get(key)
        if whole is None:
            whole = read_manifest(manifest_uri, cache=reader(endpoint_url, region))
            found = manifest_fingerprint(whole)
            if found != fingerprint:
                raise ManifestChanged(
                    f"manifest {manifest_uri} changed since the run was planned (fingerprint {found[:12]}, "
                    f"expected {fingerprint[:12]}); start a new run for the new content"
                )
            remember_manifest(whole, fingerprint)
        selected = select_items(whole, limit, sample, seed=fingerprint)
        if selected is not whole:  # a first look: not re-drawn for every shard
            _remember(selection_key, selected)
    n_shards = -(-len(selected.items) // shard_size)  # storage.shard's consecutive cut, without building all
    if not 0 <= shard_index < n_shards:
        raise IndexError(f"shard {shard_index} does not exist: the manifest has {n_shards} shard(s)")
    return tuple(selected.items[shard_index * shard_size : (shard_index + 1) * shard_size])
