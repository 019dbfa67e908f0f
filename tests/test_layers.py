"""Who may import whom (design brief §1): each package loads none of the layers it must not know."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


# the flow is wiring: it calls tasks, which call auditing; it imports no auditing module itself
DIRECT_IMPORTS_FORBIDDEN = {"flows/audit.py": ("auditing",)}


@pytest.mark.parametrize("path", sorted(DIRECT_IMPORTS_FORBIDDEN))
def test_a_module_names_none_of_the_packages_it_must_not_import_itself(path):
    root = Path(__file__).resolve().parents[1]
    tree = ast.parse((root / path).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    packages = {name.split(".")[0] for name in imported}
    assert not packages & set(DIRECT_IMPORTS_FORBIDDEN[path]), f"{path} imports {sorted(packages)}"
