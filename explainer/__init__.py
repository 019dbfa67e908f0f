"""Per-token relevance for Gemma3-family vision-language models (MedGemma): torch and transformers only.

The public names load on first use (PEP 562), so the numpy-only modules (`explainer.regions`,
`explainer.map_stats`) can be imported by code that must not load torch, such as the auditing package.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from explainer.engine import Explainer
    from explainer.methods import METHODS
    from explainer.targets import Target

_PUBLIC = {"Explainer": "explainer.engine", "METHODS": "explainer.methods", "Target": "explainer.targets"}
__all__ = ["METHODS", "Explainer", "Target"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'explainer' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)
