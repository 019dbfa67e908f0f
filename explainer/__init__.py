"""Per-token relevance for Gemma3-family vision-language models (MedGemma): torch and transformers only."""

from __future__ import annotations

from explainer.engine import Explainer
from explainer.methods import METHODS
from explainer.targets import Target

__all__ = ["METHODS", "Explainer", "Target"]
