"""The deployment files a bench run writes beside its report: ``base.yaml`` (the untuned control) and
``hybrid.yaml`` (the per-task plan it recommends), served with the engine settings the other options share."""

from __future__ import annotations

from pathlib import Path

import yaml

from runtime.bench.compare import BASE
from runtime.bench.config import BenchConfig
from runtime.config import configs_dir
from runtime.deploy import load_deployment


def engine_template(config: BenchConfig) -> dict:
    """The engine settings the options share (dtype, batch size, ...): the first listed option's. The base
    control and the hybrid plan are served with them, so they differ from the others in weights only."""
    for option in config.deployments:
        if option not in (BASE, "hybrid"):
            return load_deployment(str(configs_dir() / "deployments" / f"{option}.yaml")).engine.model_dump(
                exclude_defaults=True)
    return {}


def write_base(config: BenchConfig, out: Path) -> Path:
    """OUT/base.yaml: the untuned ``base_model`` answering every task, the control of every run."""
    doc = {"name": BASE, "option": "base", "base_model": config.base_model,
           "description": "the untuned base model: the control every option is measured against",
           "engine": engine_template(config)}
    return _write(out / "base.yaml", doc, "the untuned base model, the bench's control")


def write_hybrid(config: BenchConfig, out: Path, routes: dict[str, str], engine: str) -> Path:
    """OUT/hybrid.yaml: ``routes`` (task -> option), the base control as this run's base.yaml beside it."""
    base = write_base(config, out).name  # a relative .yaml route names the file beside the deployment
    doc = {"name": "hybrid", "option": "hybrid", "base_model": config.base_model,
           "description": "the per-task plan runtime bench recommended",
           "routes": {t: base if o == BASE else o for t, o in routes.items()},
           "fallback": [base], "engine": engine_template(config) | {"kind": engine}}
    return _write(out / "hybrid.yaml", doc, "the per-task plan with the best normalized gain within the budget "
                                            "(see report.md)")


def _write(path: Path, doc: dict, what: str) -> Path:
    path.write_text(f"# runtime serve --deployment {path.name}   (from this folder; a route to a .yaml file names "
                    f"one beside this)\n# Written by `runtime bench`: {what}.\n" + yaml.safe_dump(doc, sort_keys=False))
    return path
