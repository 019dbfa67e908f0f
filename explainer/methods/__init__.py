"""Relevance methods, one module per method: `explainer.methods.<name>` for each name in
`vocabulary.names.METHOD_NAMES`, whose `RELEVANCE_METHOD` is the method's class.

The names live in the vocabulary, so run settings are validated and CLI choices listed in processes
that never explain anything; a method's module is imported on first use.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING

from vocabulary.names import ATTENTION_PATHS, IMAGE_REFERENCE, METHOD_NAMES, REFERENCE_METHODS

if TYPE_CHECKING:
    from explainer.methods.base import RelevanceMethod

METHODS: tuple[str, ...] = METHOD_NAMES


@cache
def get_method(name: str) -> RelevanceMethod:
    """The registered method called `name`."""
    if name not in METHODS:
        raise ValueError(f"unknown relevance method {name!r}; valid methods: {list(METHODS)}")
    return import_module(f"{__name__}.{name}").RELEVANCE_METHOD()


__all__ = ["ATTENTION_PATHS", "IMAGE_REFERENCE", "METHODS", "REFERENCE_METHODS", "get_method"]
