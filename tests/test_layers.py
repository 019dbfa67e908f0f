"""Who may import whom (design brief §1): each package loads none of the layers it must not know."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = {
    # the leaf every layer may import
    "vocabulary": (
        "torch",
        "transformers",
        "prefect",
        "boto3",
        "pyarrow",
        "pandas",
        "explainer",
        "storage",
        "auditing",
        "tasks",
        "flows",
    ),
    "explainer.engine": ("storage", "auditing", "tasks", "flows", "prefect", "boto3"),
    "explainer.checks": ("storage", "auditing", "tasks", "flows", "prefect", "boto3"),
    "storage": ("torch", "transformers", "prefect", "explainer", "auditing"),
    "auditing": ("torch", "transformers", "prefect", "tasks", "flows"),
    "auditing.report": ("torch", "transformers", "prefect", "tasks", "flows"),
    # the orchestrator plans, validates settings and aggregates; torch loads where shards are explained
    "flows.audit": ("torch", "transformers"),
    "flows.cli": ("torch", "transformers", "prefect"),
}


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_a_package_loads_none_of_the_layers_it_must_not_know(module):
    code = f"import sys, {module}; print(' '.join(sorted({{name.split('.')[0] for name in sys.modules}})))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert module.split(".")[0] in loaded  # the probe really imported something
    assert not loaded & set(FORBIDDEN[module]), f"{module} loads {sorted(loaded & set(FORBIDDEN[module]))}"
