from __future__ import annotations

import threading
import time

import uvicorn
from fastapi.testclient import TestClient

from runtime.config import DeploymentConfig
from runtime.deploy import ServingPlan
from runtime.engines.fake import FakeEngine
from runtime.process import free_port
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


class Upstream:
    """A fake-engine server on a real 127.0.0.1 port (make_client's app under uvicorn), as a context manager."""

    def __init__(self, **fake) -> None:
        self.port = free_port()
        client, self.engines = make_client(**fake)
        self.server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Upstream:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def served(self) -> int:
        return sum(len(e.calls) for e in self.engines.values())
