"""Defaults that several layers share: stated once here, the leaf package every layer imports (the
explainer's engine and the run settings alike). A leaf module: it imports nothing."""

# answer length limit of a generated answer: the engine's `explain(..., max_new_tokens=...)` default and
# `AuditConfig.max_new_tokens`'s (docs/pipeline.md documents 32 for runs)
DEFAULT_MAX_NEW_TOKENS = 32
