from __future__ import annotations

from fastapi.testclient import TestClient

from runtime.config import DeploymentConfig
from runtime.deploy import ServingPlan
from runtime.engines.fake import FakeEngine
from runtime.router import RoutingTable, Target
from runtime.server import build_app
from runtime.serving import ServerSettings

ADAPTERS = {"gen-lora": "/adapters/gen", "rev-lora": "/adapters/rev"}


def experts_table() -> RoutingTable:
    base, merged = "/models/base", "/models/merged"
    return RoutingTable(
        primary="experts",
        deployments={
            "experts": {"*": Target(base), "generation": Target(base, "gen-lora"), "review": Target(base, "rev-lora")},
            "merged": {"*": Target(merged)},
            "experts:base": {"*": Target(base)},
            "merged:base": {"*": Target(base)},
        },
        adapters={"gen-lora": Target(base, "gen-lora"), "rev-lora": Target(base, "rev-lora")},
        fallbacks={"experts": ["merged", "experts:base"], "merged": ["merged:base"]},
    )


def make_client(settings: ServerSettings | None = None, **fake) -> tuple[TestClient, dict[str, FakeEngine]]:
    engines = {"/models/base": FakeEngine("base", dict(ADAPTERS), **fake), "/models/merged": FakeEngine("merged")}
    deployments = {n: DeploymentConfig(name=n, option="base", base_model="b") for n in ("experts", "merged")}
    plan = ServingPlan(experts_table(), engines={}, deployments=deployments, models={})
    return TestClient(build_app(plan, engines, settings)), engines
