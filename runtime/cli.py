"""The ``runtime`` command line. Each command is thin: parse, call a component, print.

A user-facing failure (any :class:`MixmergeError`) prints one line, ``error: cause; fix``, and exits with status 2.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from runtime.errors import MixmergeError

app = typer.Typer(help="mixmerge: serve and compare data-mixed, merged and per-task-expert code LLMs.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
models_app = typer.Typer(help="The model store: pull, register, list and remove models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


console = Console()
err_console = Console(stderr=True)
UnsafeSandbox = Annotated[bool, typer.Option(
    "--unsafe-sandbox", envvar="MIXMERGE_UNSAFE_SANDBOX",
    help="Run model code even where the sandbox has no namespaces; as root it could then read every file, secret "
         "and process here (README: The sandbox).")]


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def quiet_transformers(progress: bool = False) -> None:
    """The CLI shows its own progress; transformers' per-load bars would only interleave with it. Training keeps
    the Trainer's bar (``progress=True``), which has the ETA."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if progress:
        hf_logging.enable_progress_bar()


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, "
                                                         "or a hub id (needs a reachable hub).")]):
    """Fetch a model into the store (idempotent; interrupted pulls leave nothing behind)."""
    from runtime.models import ModelStore

    quiet_transformers()
    with console.status(f"pulling {name}") as status:
        entry = ModelStore().pull(name, step=lambda msg: (status.update(msg), console.print(f"  {msg}", style="dim")))
    console.print(f"[green]ready[/green] {entry.name} ({entry.kind}, {human_size(entry.size_bytes)}) at {entry.path}")


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False):
    """Show every model: name, kind (base / expert / merged / mixed / adapter), size, path."""
    from runtime.models import ModelStore, entry_as_dict

    entries = ModelStore().list()
    if as_json:
        console.print_json(json.dumps([entry_as_dict(e) for e in entries]))
        return
    if not entries:
        console.print("no models yet; run `runtime models pull smollm2-135m`")
        return
    table = Table("name", "kind", "format", "size", "parent", "source", "path")
    table.columns[-1].overflow = "fold"
    for e in entries:
        table.add_row(e.name, e.kind, e.format, human_size(e.size_bytes), e.parent or "", e.source, str(e.path))
    console.print(table)


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="Name to use in configs and API requests.")],
    path: Annotated[Path, typer.Argument(help="A Hugging Face model or PEFT adapter directory.")],
    kind: Annotated[str | None, typer.Option(help="base, expert, merged, mixed or adapter (default: guessed).")] = None,
    parent: Annotated[str | None, typer.Option(help="For adapters: the base model they apply to.")] = None,
):
    """Name a local model directory (e.g. a Qwen2.5-Coder checkout); nothing is copied."""
    from runtime.models import ModelStore

    entry = ModelStore().register(name, path, kind, parent)
    console.print(f"registered {entry.name} ({entry.kind}) -> {entry.path}")


@models_app.command("remove")
def models_remove(names: Annotated[list[str], typer.Argument(help="One or more model names.")]):
    """Forget a registered name, or delete a model the store owns (every name is checked before any goes)."""
    from runtime.errors import ModelNotFoundError
    from runtime.models import ModelStore

    store = ModelStore()
    if unknown := [name for name in names if not store.removable(name)]:  # checked before anything goes
        raise ModelNotFoundError(f"unknown model(s) {', '.join(unknown)}; nothing was removed",
                                 fix="see `runtime models list`")
    for name in names:
        store.remove(name)
        console.print(f"removed {name}")


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Option("--config", help="A file under configs/train/.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. max_steps=2 "
                                                               "output_dir=DIR lora.r=8.")] = None,
):
    """Fine-tune an expert or a data-mixed model (LoRA or full); resumable; saves one artifact atomically."""
    from runtime.config import load_config
    from runtime.models import ModelStore
    from training.config import TrainConfig
    from training.sft import train

    cfg = load_config(config, TrainConfig, overrides or [])
    quiet_transformers(progress=True)
    entry = train(cfg, ModelStore(), step=lambda msg: console.print(f"  {msg}", style="dim"))
    console.print(f"[green]ready[/green] {entry.name} ({entry.kind}) at {entry.path}")


MERGE_ACTIONS = ("sweep", "adapters")


@app.command("merge")
def merge_cmd(
    config: Annotated[Path, typer.Option("--config", help="A file under configs/merge/ (adapters: "
                                                          "configs/merge/adapters/).")],
    args: Annotated[list[str] | None, typer.Argument(
        metavar="[sweep|adapters] [KEY=VALUE]...",
        help="Nothing: one mergekit merge. `sweep`: score a grid of weights on val, keep the best, test it. "
             "`adapters`: one LoRA from several (PEFT). Then key=value overrides, e.g. method=ties.")] = None,
    out: Annotated[Path | None, typer.Option(help="sweep: output folder (default runs/sweep-NAME).")] = None,
):
    """Merge experts with mergekit, sweep merge weights on the validation split, or merge LoRA adapters."""
    from merge.config import AdapterMergeConfig, MergeConfig
    from runtime.config import load_config
    from runtime.models import ModelStore

    store = ModelStore()
    args = list(args or [])
    action = args.pop(0) if args and args[0] in MERGE_ACTIONS else None
    quiet_transformers()
    step = lambda msg: console.print(f"  {msg}", style="dim")  # noqa: E731
    if action == "adapters":
        from merge.adapters import merge_adapters

        entry = merge_adapters(load_config(config, AdapterMergeConfig, args), store, step=step)
        console.print(f"[green]ready[/green] {entry.name} (adapter) at {entry.path}")
        return
    cfg = load_config(config, MergeConfig, args)
    if action == "sweep":
        from merge.sweep import run_sweep

        out = out or Path("runs") / f"sweep-{cfg.name}"
        summary = run_sweep(cfg, out, store, step=step)
        console.print(f"chose {summary['chosen']} ({summary['objective']}); wrote {out / 'sweep.csv'}")
        console.print_json(json.dumps({k: summary[k] for k in ("expert_val", "chosen_val", "chosen_test")}))
        return
    from merge.run import merge

    entry = merge(cfg, store, step=step)
    console.print(f"[green]ready[/green] {entry.name} (merged) at {entry.path}")


@app.command("analyze")
def analyze_cmd(
    base: Annotated[str, typer.Option(help="The base model the others were tuned from.")],
    models: Annotated[list[str], typer.Option("--models", help="Fine-tuned models or LoRA experts (repeat).")],
    out: Annotated[Path, typer.Option(help="Output folder for CSV, PNG plots and summary.json.")],
):
    """Task-vector analysis (the paper's): per-layer Pearson correlation, relative change, cosine to base."""
    from merge.analysis import analyze
    from runtime.models import ModelStore

    store = ModelStore()
    names = [n for item in models for n in item.split(",") if n]
    if len(names) < 1:
        raise typer.BadParameter("give at least one model with --models")
    with console.status("reading weights"):
        summary = analyze(store.get(base).path, {n: store.get(n).path for n in names}, out)
    console.print_json(json.dumps(summary["overall_pearson"]))
    console.print(f"wrote {out / 'analysis.csv'}, correlation.png, relative_change.png")


@app.command("serve")
def serve(
    deployment: Annotated[str | None, typer.Option(help="A deployment YAML (or its name under "
                                                         "configs/deployments/).")] = None,
    model: Annotated[str | None, typer.Option(help="Serve one model from the store, no config (every task "
                                                    "routes to it).")] = None,
    engine: Annotated[str | None, typer.Option(help="Override the engine: hf, vllm, remote or fake.")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="MIXMERGE_API_KEY", help="Require this bearer key.")] = None,
    enable_lora_updates: Annotated[bool, typer.Option(help="Allow POST /v1/load_lora_adapter.")] = False,
    lora_dir: Annotated[list[Path] | None, typer.Option(help="Where runtime-loaded adapters may live.")] = None,
):
    """Serve a deployment behind one OpenAI-compatible API with per-task routing."""
    import uvicorn

    from merge.run import fold_lora
    from runtime.deploy import build_plan, load_deployment, single_model_deployment
    from runtime.errors import BadRequestError
    from runtime.models import ModelStore
    from runtime.server import build_app
    from runtime.serving import ServerSettings, build_engines

    if (deployment is None) == (model is None):
        raise BadRequestError("give exactly one of --deployment and --model",
                              fix="e.g. --deployment configs/deployments/experts.yaml or --model smollm2-135m")
    store = ModelStore()
    primary = load_deployment(deployment) if deployment else single_model_deployment(model or "", store)
    plan = build_plan(primary, store, engine, fold=functools.partial(fold_lora, store=store))
    quiet_transformers()
    with console.status("starting engines"):  # before the port is bound: a model that fails to load exits here
        engines = build_engines(plan, engine)
    settings = ServerSettings(api_key=api_key, enable_lora_updates=enable_lora_updates,
                              lora_dirs=list(lora_dir or []))
    console.print(f"serving {primary.name} ({primary.option}) on http://{host}:{port}/v1 with "
                  f"{len(engines)} engine(s), adapters: {', '.join(plan.table.adapters) or 'none'}")
    uvicorn.run(build_app(plan, engines, settings), host=host, port=port, log_level="warning")


@app.command("agent")
def agent_cmd(
    job: Annotated[str, typer.Argument(help="What to build, in words.")],
    tests: Annotated[Path | None, typer.Option(help="A Python file of tests (asserts, or a check(fn) with "
                                                     "--entry-point) run in the sandbox.")] = None,
    entry_point: Annotated[str | None, typer.Option(help="Function name passed to check().")] = None,
    base_url: Annotated[str, typer.Option(envvar="MIXMERGE_BASE_URL", help="The runtime's /v1 URL.")]
    = "http://127.0.0.1:8000/v1",
    deployment: Annotated[str | None, typer.Option(help="Route every step through this deployment.")] = None,
    api_key: Annotated[str, typer.Option(envvar="MIXMERGE_API_KEY")] = "none",
    max_revisions: Annotated[int, typer.Option(min=0)] = 2,
    thread_id: Annotated[str, typer.Option(help="Checkpoint thread, to resume or inspect a run.")] = "default",
    sqlite: Annotated[str | None, typer.Option(help="Checkpoint to this SQLite file instead of memory.")] = None,
    unsafe_sandbox: UnsafeSandbox = False,
):
    """Run the LangGraph coding agent against a running `runtime serve`, printing each step."""
    from agents.coding_agent import build_graph, make_checkpointer, run_agent
    from agents.llm import chat_factory
    from runtime.tasks.sandbox import Sandbox

    graph = build_graph(chat_factory(base_url, api_key, deployment), sandbox=Sandbox(allow_unsafe=unsafe_sandbox),
                        checkpointer=make_checkpointer(sqlite))

    def show(step: dict) -> None:
        route = step.get("route") or {}
        where = f"{route.get('deployment', '')}/{route.get('adapter') or '-'}" if route else ""
        tokens = f"{step.get('prompt_tokens', 0)}+{step.get('completion_tokens', 0)} tok" if "task" in step else ""
        extra = step.get("status") or step.get("error") or ""
        seconds = f"{step['seconds']}s" if "seconds" in step else ""
        console.print(f"  {step['node']:<9} {step.get('task', ''):<11} {where:<32} {tokens:<12} {seconds} {extra}"
                      .rstrip(), highlight=False)

    state = run_agent(graph, job, tests=tests.read_text() if tests else None, entry_point=entry_point,
                      max_revisions=max_revisions, thread_id=thread_id, on_step=show)
    console.rule("final code")
    console.print(state.get("code", ""), highlight=False, markup=False)
    if state.get("passed") is not None:
        console.print(f"tests {'passed' if state['passed'] else 'failed'}")
    if state.get("error"):
        err_console.print(f"[red]error:[/red] {state['error']}")
        raise SystemExit(1)


@app.command("bench")
def bench_cmd(
    config: Annotated[Path | None, typer.Option(help="A file under configs/bench/ (default: the embedded "
                                                     "default, configs/bench/default.yaml).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. accuracy.n=24 "
                                                               "budget.memory_mb=3000.")] = None,
    deployments: Annotated[str | None, typer.Option(help="Comma-separated options (default: the config's; "
                                                          "hybrid, if given, is planned from the others).")] = None,
    engines: Annotated[str | None, typer.Option(help="Comma-separated engines, e.g. hf,vllm (those not "
                                                      "installed are skipped and said so).")] = None,
    quick: Annotated[bool, typer.Option(help="The same phases, smaller: a separate tiny zoo, few items.")] = False,
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/bench-NAME[-quick]).")] = None,
    fresh: Annotated[bool, typer.Option(help="Measure serving again instead of reusing OUT's cached phases.")] = False,
    unsafe_sandbox: UnsafeSandbox = False,
):
    """Accuracy, latency, throughput and memory of every deployment option in one run; recommends a hybrid."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from runtime.bench import run as bench
    from runtime.bench.config import load_bench_config

    extra = list(overrides or [])
    if deployments:
        extra.append(f"deployments=[{deployments}]")
    if engines:
        extra.append(f"engines=[{engines}]")
    cfg = load_bench_config(config, extra, quick)
    out = out or Path("runs") / f"bench-{cfg.name}{'-quick' if quick else ''}"
    quiet_transformers()  # training steps get a bench bar of their own
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops like Ctrl-C: servers stopped, phases kept
    columns = (TextColumn("{task.description:>28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console) as bars:
        report = bench.run_bench(cfg, out, _progress_bars(bars), fresh=fresh, unsafe_sandbox=unsafe_sandbox or None)
    console.print((out / "report.md").read_text().split("\n## ")[0], soft_wrap=True, highlight=False, markup=False)
    if rec := report.recommendation:
        console.print("recommended hybrid: " + ", ".join(f"{t} -> {o}" for t, o in rec.routes.items()))
    console.print(f"wrote {out / 'report.md'}, report.json and charts ({report.wall_s / 60:.1f} min)")


def _progress_bars(bars):
    """Progress of long work (the bench's phases, eval's tasks; runtime/bench/zoo.py's Progress) on rich progress
    bars: one bar per phase. Where the console is not a terminal (a log file, CI) rich draws nothing live, so each
    phase also prints a line when it starts and, at most once a minute, how far it is with the bar's ETA."""
    from runtime.bench.zoo import Progress as BenchProgress

    plain = not bars.console.is_terminal

    class Bars(BenchProgress):
        current = None
        said_at = 0.0

        def phase(self, name: str, total: int) -> None:
            if self.current is not None:
                bars.update(self.current, completed=bars.tasks[self.current].total)
            self.current = bars.add_task(name, total=total)
            if plain:
                self.said_at = time.monotonic()
                bars.console.print(f"{name}: 0/{total}", highlight=False)

        def advance(self, n: int = 1) -> None:
            if self.current is None:
                return
            bars.advance(self.current, n)
            task = bars.tasks[self.current]
            if plain and (time.monotonic() - self.said_at >= 60 or task.finished):
                self.said_at = time.monotonic()
                eta = f", ETA {task.time_remaining / 60:.1f} min" if task.time_remaining else ""
                bars.console.print(f"{task.description}: {task.completed:g}/{task.total:g} after "
                                   f"{(task.elapsed or 0) / 60:.1f} min{eta}", highlight=False)

        def say(self, message: str) -> None:
            bars.console.print(f"  {message}", style="dim", highlight=False)

    return Bars()


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Option(help="A name from `runtime models list` or a model directory.")],
    tasks: Annotated[str, typer.Option(help="Comma-separated: generation,summarization,completion,review,"
                                             "humaneval.")] = "generation,summarization,completion,review,humaneval",
    adapter: Annotated[str | None, typer.Option(help="A PEFT adapter (name or directory) to apply.")] = None,
    split: Annotated[str, typer.Option(help="train, val or test (HumanEval is always test).")] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="First N items per task (a fixed, fair sample).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/eval-MODEL).")] = None,
    dtype: Annotated[str, typer.Option(help="auto (bfloat16 where the CPU/GPU computes it natively, else "
                                            "float32), float32, bfloat16 or float16.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Rows the engine decodes at once (speed only: an answer "
                                                        "does not depend on it).")] = 16,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Cap every task's output length (faster; "
                                                                "scores drop for long answers).")] = None,
    unsafe_sandbox: UnsafeSandbox = False,
):
    """Score a model on the code tasks: greedy, on the serving engine; writes eval.json, eval.md, every answer."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from runtime.config import TasksConfig, configs_dir, load_config
    from runtime.engines.offline import OfflineRunner
    from runtime.errors import BadRequestError
    from runtime.evaluate import cap_tokens, evaluate
    from runtime.models import ModelStore
    from runtime.tasks import SPLIT_NAMES, TASKS, build_dataset
    from runtime.tasks.sandbox import Sandbox

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise BadRequestError(f"unknown task(s) {', '.join(unknown) or '(none given)'}",
                              fix=f"use a comma-separated list of: {', '.join(TASKS)}")
    if split not in SPLIT_NAMES:
        raise BadRequestError(f"unknown split '{split}'", fix=f"use one of: {', '.join(SPLIT_NAMES)}")
    # refuses now, before the model loads, where model code would run unsafely (only HumanEval runs any)
    sandbox = Sandbox(allow_unsafe=unsafe_sandbox or "humaneval" not in names)
    store = ModelStore()
    entry = store.get(model)
    adapter_path = store.get(adapter).path if adapter else None
    out = out or Path("runs") / f"eval-{entry.name}"
    quiet_transformers()
    with console.status("building task data (first run only)"):
        build_dataset()
    with console.status(f"loading {entry.name}"):
        runner = OfflineRunner(entry.path, adapter_path, dtype=dtype, max_batch_size=batch_size)
    columns = (TextColumn("{task.description:>13}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        bars, shown = _progress_bars(bar), {}  # one bar for every task's answers; a line a minute in a log

        def progress(label: str, done: int, total: int) -> None:
            if label not in shown:
                bars.phase(label, total)
            bars.advance(done - shown.get(label, 0))
            shown[label] = done

        tasks_cfg = cap_tokens(load_config(configs_dir() / "tasks.yaml", TasksConfig), max_tokens)
        with runner:
            report = evaluate(runner, names, split, limit, out, tasks=tasks_cfg, progress=progress, sandbox=sandbox)
    console.print((out / "eval.md").read_text(), soft_wrap=True, highlight=False, markup=False)
    console.print(f"wrote {out / 'eval.json'} ({report['wall_s']:.0f} s)")


def main() -> None:
    from runtime.hardware import allocator_env

    if (env := allocator_env(os.environ)) is not None:  # every child (servers, trainings, vLLM) inherits it
        try:
            os.execve(sys.executable, sys.orig_argv, env)
        except OSError as e:
            err_console.print(f"warning: could not run again on tcmalloc ({e}); carrying on with glibc's malloc")
    try:
        app()
    except MixmergeError as e:
        err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        err_console.print("interrupted; finished steps are kept, unfinished ones left nothing behind")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
