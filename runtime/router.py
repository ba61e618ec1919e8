"""Request -> Route: which deployment, engine and adapter answer, and why. Pure: no I/O, no engines.

The request's ``model`` may be a task (generation, completion, review, summarization), a deployment, a
``deployment/task`` pair, an adapter name, or ``auto`` (the classifier picks the task from the text). A
deployment without a task gets its task from the classifier too, since experts need one to pick an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.classifier import classify
from runtime.config import TASKS
from runtime.errors import ModelNotFoundError


@dataclass(frozen=True)
class Target:
    engine: str  # engine key (the served model's path)
    adapter: str | None = None  # LoRA adapter name on that engine; None = the engine's own weights


@dataclass(frozen=True)
class Route:
    deployment: str
    task: str | None
    engine: str
    adapter: str | None
    reason: str


@dataclass(frozen=True)
class RoutingTable:
    primary: str  # the deployment that tasks and `auto` go to
    deployments: dict[str, dict[str, Target]]  # deployment -> task (or "*") -> target
    adapters: dict[str, Target] = field(default_factory=dict)  # adapter name -> target
    fallbacks: dict[str, list[str]] = field(default_factory=dict)  # deployment -> deployments to try next

    def target(self, deployment: str, task: str | None) -> Target:
        per_task = self.deployments[deployment]
        return per_task.get(task or "*") or per_task["*"]


def route(table: RoutingTable, model: str, text: str = "") -> Route:
    """Decide the route for one request (raises ModelNotFoundError listing what exists)."""
    name = model.strip()
    if name == "auto":
        task = classify(text)
        return _to(table, table.primary, task, f"auto: classifier chose {task}")
    if name in TASKS:
        return _to(table, table.primary, name, f"task {name} on {table.primary}")
    if name in table.deployments:
        task = classify(text)
        return _to(table, name, task, f"deployment {name}; classifier chose {task}")
    if "/" in name:
        deployment, _, task = name.partition("/")
        if deployment in table.deployments and task in TASKS:
            return _to(table, deployment, task, f"deployment {deployment}, task {task}")
    if name in table.adapters:
        t = table.adapters[name]
        return Route(table.primary, None, t.engine, t.adapter, f"adapter {name}")
    raise ModelNotFoundError(f"unknown model '{model}'", fix=f"use one of: {', '.join(known_models(table))}",
                             param="model")


def fallback_routes(table: RoutingTable, first: Route) -> list[Route]:
    """Where to go when ``first`` fails: the deployment's fallbacks for the same task, in order."""
    out = []
    for deployment in table.fallbacks.get(first.deployment, []):
        if deployment in table.deployments:
            r = _to(table, deployment, first.task, f"fallback from {first.deployment} to {deployment}")
            if (r.engine, r.adapter) != (first.engine, first.adapter):
                out.append(r)
    return out


def known_models(table: RoutingTable) -> list[str]:
    pairs = [f"{d}/{t}" for d in table.deployments for t in TASKS]
    return ["auto", *TASKS, *table.deployments, *table.adapters, *pairs[:2], "..."]


def _to(table: RoutingTable, deployment: str, task: str | None, reason: str) -> Route:
    t = table.target(deployment, task)
    return Route(deployment, task, t.engine, t.adapter, reason)
