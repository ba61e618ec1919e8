import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from runtime.cli import app

runner = CliRunner()


def test_models_list_empty_then_registered(store_home: Path, tiny_model_dir: Path):
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0 and "runtime models pull smollm2-135m" in result.output
    result = runner.invoke(app, ["models", "register", "tiny", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["models", "list", "--json"])
    rows = json.loads(result.output)
    assert [(r["name"], r["kind"]) for r in rows] == [("tiny", "base")]
    assert rows[0]["size_bytes"] > 0


def test_cli_errors_are_one_line_with_a_fix_and_exit_2(store_home: Path):
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", "models", "pull", "nope"],
                          capture_output=True, text=True, env={"MIXMERGE_HOME": str(store_home), "PATH": ""})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'nope'; pull one of")


def test_help_lists_only_working_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "models" in result.output
