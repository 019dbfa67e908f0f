"""Relevance methods, registered by name."""

from explainer.methods.base import ExplainContext, RelevanceMethod
from explainer.methods.chefer import Chefer
from explainer.methods.occlusion import Occlusion
from explainer.methods.raw_attention import RawAttention
from explainer.methods.rollout import Rollout

METHODS: dict[str, RelevanceMethod] = {
    method.name: method for method in (Chefer(), Rollout(), RawAttention(), Occlusion())
}


def get_method(name: str) -> RelevanceMethod:
    """The registered method called `name`."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown relevance method {name!r}; valid methods: {sorted(METHODS)}") from None


__all__ = ["METHODS", "ExplainContext", "RelevanceMethod", "get_method"]
