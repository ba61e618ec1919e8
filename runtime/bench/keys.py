"""What the bench's caches are keyed by: short digests of settings, and of the weights an option serves."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from runtime.deploy import ServingPlan


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_digest(path: Path) -> str:
    """Which weights a directory holds: its path and its manifest (a retrained or re-merged model changes it)."""
    manifest = path / "manifest.json"
    return digest(str(path), manifest.read_text() if manifest.is_file() else "")


def models_key(plan: ServingPlan) -> dict[str, str]:
    """Every model and adapter the plan serves, by name: cached measurements hold only while these do."""
    return {name: weights_digest(e.path) for name, e in sorted(plan.models.items())}


def adapters_of(plan: ServingPlan) -> dict[str, Path]:
    return {name: path for spec in plan.engines.values() for name, path in spec.adapters.items()}
