"""Prefect flows (`flows.audit.audit`, `flows.sweep.sweep`) and the `vlm-audit` CLI (`flows.cli`)."""
