"""The commands that run model code (eval's HumanEval, the agent's tests) refuse, before any work, to run it as
root without namespaces; only ``--unsafe-sandbox`` lets them go on. (The bench scores no HumanEval: no sandbox.)"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import runtime.tasks.sandbox as sandbox_mod
from runtime.cli import app
from runtime.errors import ModelNotFoundError
from runtime.tasks.sandbox import SandboxRefusedError

runner = CliRunner()


@pytest.fixture(autouse=True)
def root_without_namespaces(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(sandbox_mod, "namespaces_available", lambda: False)
    monkeypatch.setattr(sandbox_mod.os, "geteuid", lambda: 0)
    monkeypatch.delenv("MIXMERGE_UNSAFE_SANDBOX", raising=False)
    monkeypatch.setenv("MIXMERGE_HOME", str(tmp_path / "store"))


@pytest.mark.parametrize("args", [["eval", "--model", "nope", "--tasks", "humaneval"],
                                  ["agent", "Write add.", "--base-url", "http://127.0.0.1:9/v1"]])
def test_commands_that_run_model_code_refuse_before_any_work(args: list[str]):
    result = runner.invoke(app, args)
    assert isinstance(result.exception, SandboxRefusedError), result.output
    assert "--unsafe-sandbox" in str(result.exception)


def test_unsafe_sandbox_lets_eval_go_on():
    result = runner.invoke(app, ["eval", "--model", "nope", "--tasks", "humaneval", "--unsafe-sandbox"])
    assert isinstance(result.exception, ModelNotFoundError)  # past the sandbox, on to loading the model


def test_the_environment_variable_opts_in_too(monkeypatch):
    monkeypatch.setenv("MIXMERGE_UNSAFE_SANDBOX", "1")
    result = runner.invoke(app, ["eval", "--model", "nope", "--tasks", "humaneval"])
    assert isinstance(result.exception, ModelNotFoundError)


def test_eval_of_tasks_that_run_no_code_needs_no_opt_in():
    result = runner.invoke(app, ["eval", "--model", "nope", "--tasks", "review"])
    assert isinstance(result.exception, ModelNotFoundError)
