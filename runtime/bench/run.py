"""`runtime bench`: build what is missing, then serve every deployment option on every installed engine and
measure accuracy, load, memory, cold start and adapter load on the same work; plan the hybrid; write the report.

Phases and their caches (Ctrl-C loses only the phase in progress); the zoo phase is `runtime/bench/zoo.py`:
- zoo: each model is built only when the store lacks it (training resumes from its last checkpoint);
- accuracy answers: under ``$MIXMERGE_HOME/cache/bench-accuracy/``, keyed by the weights that answer each task,
  shared between options task by task (`runtime/bench/answers.py`); answers in progress are journaled;
- serving measurements: ``OUT/phases/OPTION-ENGINE.json``, keyed by the config and the models; ``--fresh``
  measures them again.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from runtime.artifacts import git_sha
from runtime.bench.agent import run_on_server
from runtime.bench.answers import AnswerCache, Files
from runtime.bench.compare import (
    BASE,
    agreement,
    detectable_difference,
    gains_over_base,
    score_answers,
    score_baselines,
    seed_spread,
)
from runtime.bench.config import BenchConfig
from runtime.bench.deployments import write_base, write_hybrid
from runtime.bench.environment import environment, installed_engines, library_versions
from runtime.bench.journal import Journal
from runtime.bench.keys import adapters_of, digest, models_key
from runtime.bench.launch import ServerProcess
from runtime.bench.load import WORKLOAD, MachineLoadMeter, run_levels
from runtime.bench.recommend import recommend
from runtime.bench.report import write_report
from runtime.bench.results import (
    SCHEMA_VERSION,
    AnswersFile,
    PhaseFile,
    PhaseResult,
    Recommendation,
    Report,
    read_record,
)
from runtime.bench.zoo import Progress, build_zoo, zoo_store
from runtime.config import DeploymentConfig, TasksConfig, configs_dir, load_config
from runtime.deploy import ServingPlan, build_plan, load_deployment
from runtime.engines.hf_engine import SPEED
from runtime.errors import ConfigError, EngineUnavailableError, MixmergeError
from runtime.evaluate import cap_tokens, evaluate_served, sampling_for, write_answers
from runtime.hardware import gpu_memory_mb, served_on
from runtime.memory import TreeRSSSampler
from runtime.models import ModelStore
from runtime.tasks import TASKS, load_items, ranked_sets
from runtime.tasks.sandbox import Sandbox

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- bench
@dataclass
class Tally:
    """What the phases gather, option by option, for the report and the hybrid plan."""
    results: list[PhaseResult] = field(default_factory=list)  # one per option and engine
    accuracy: dict[str, dict] = field(default_factory=dict)  # per option, its scored accuracy
    answers: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # per option, the scored answers' texts
    failures: list[dict] = field(default_factory=list)
    not_run: list[dict] = field(default_factory=list)  # pairs the config's `skip` left out
    recommendation: Recommendation | None = None


@dataclass
class Bench:
    config: BenchConfig
    out: Path
    progress: Progress = field(default_factory=Progress)
    fresh: bool = False
    store: ModelStore = field(default_factory=ModelStore)  # where the options' models are (the zoo's store)
    serve_env: dict[str, str] = field(default_factory=dict)  # extra environment for the child servers
    git_sha: str | None = field(default_factory=git_sha)  # of the code that runs (read when the run starts)
    sandbox: Sandbox | None = None  # runs HumanEval's programs; built here (MIXMERGE_UNSAFE_SANDBOX) if not given

    def __post_init__(self) -> None:
        self.tasks = cap_tokens(load_config(configs_dir() / "tasks.yaml", TasksConfig),
                                dict(self.config.accuracy.max_tokens))
        self.items = {t: load_items(t, "test", self.config.accuracy.n_of(t)) for t in self.config.accuracy.tasks}
        if scores_humaneval(self.config):  # generation's headline: pass@1 through the generation route
            self.items["humaneval"] = load_items("humaneval", "test", self.config.accuracy.humaneval_n)
        self.agent_items = load_items("humaneval", "test", self.config.agent.n) if self.config.agent.n else []
        if runs_model_code(self.config):
            self.sandbox = self.sandbox or Sandbox()
        self.config_hash = digest(self.config.model_dump(exclude={"quick"}))
        self.versions = library_versions()
        self.answer_cache = AnswerCache(self.store.home, self.tasks, self.items, self.versions, self.progress.say)
        # what a phase's measurements depend on besides its option's weights and deployment file: the items,
        # caps, agreement sample, agent and load settings. Not which other options or engines run, the skips,
        # the budget or the bootstrap, so `--deployments` / `--engines` / a new budget reuse every cached phase
        self.phase_settings = digest(self.config.accuracy.model_dump(exclude={"bootstrap"}),
                                     self.config.agent.model_dump(), self.config.load.model_dump(), WORKLOAD)
        (self.out / "phases").mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------------------------------- one option
    def deployment(self, option: str) -> tuple[Path, DeploymentConfig]:
        if option == BASE:
            path = write_base(self.config, self.out)
            return path, load_deployment(str(path))
        if option == "hybrid":
            path = self.out / "hybrid.yaml"
            if not path.is_file():
                raise ConfigError(str(path), ["the hybrid plan is written after the other options are measured"])
            return path, load_deployment(str(path))
        path = configs_dir() / "deployments" / f"{option}.yaml"
        return path, load_deployment(str(path))

    def plan(self, option: str) -> tuple[Path, ServingPlan]:
        from merge.run import fold_lora

        path, deployment = self.deployment(option)
        fold = functools.partial(fold_lora, store=self.store, step=self.progress.say)  # (~30 s a 0.5B: said)
        return path, build_plan(deployment, self.store, fold=fold)

    def measure(self, option: str, engine: str, reference: dict | None, scorer: str | None = None) -> PhaseResult:
        """One server for one option on one engine: answers (or the agreement sample), load, memory, adapter
        load. ``reference`` is the scoring engine's answers for this option (``scorer``, default ``engine``), if
        that engine ran first."""
        path, plan = self.plan(option)
        models = models_key(plan)
        cache = self.out / "phases" / f"{option}-{engine}.json"
        answers_file = (files := self.answer_cache.files(plan, engine, scorer)).answers
        if reference is None and answers_file.is_file():  # answers made before tasks shared theirs
            self.answer_cache.share(files)
        key = self.phase_key(option, engine, plan, path, "scores" if reference is None else
                             f"agrees with {answers_file.stem}")
        if not self.fresh and (reference is not None or answers_file.is_file()) and (
                cached := self.cached_phase(cache, key)):
            self.progress.say(f"{option} on {engine}: measured before ({cache}); --fresh measures again")
            return cached.model_copy(update={"answers_file": str(answers_file), "cached": True})
        agreement_items = {t: its[: self.config.accuracy.agreement_n] for t, its in self.items.items()}
        adapters = adapters_of(plan)
        args = ["--deployment", str(path), "--engine", engine, "--enable-lora-updates",
                "--lora-dir", str(self.store.models_dir)]
        result: dict = {"deployment": option, "engine": engine, "models": models, "adapters": sorted(adapters),
                        "cached": False, "git_sha": self.git_sha,
                        "dtype": "/".join(sorted({served_on(s.config)[1] for s in plan.engines.values()}))}
        self.progress.say(f"{option} on {engine}: starting the server")
        started = time.perf_counter()
        with ServerProcess(args, env=self.serve_env) as server:
            result["cold_start_s"] = round(server.cold_start_s, 2)
            gpu_before, ours = gpu_memory_mb(), server.process.pid
            if reference is None and not answers_file.is_file():  # the scorer, its answers not cached yet
                with MachineLoadMeter.around(ours) as meter:
                    result.update(self.answer(server.url, option, engine, files))
                result["accuracy_machine_load"] = meter.result
                result["accuracy_wall_s"] = round(time.perf_counter() - started - server.cold_start_s, 1)
            if reference is None and self.agent_items:  # the scoring engine's server: the agent's column
                with MachineLoadMeter.around(ours) as meter:
                    result["agent"] = self.agent(server.url, option, engine, key)
                    result["resumed_agent"] = result["agent"].pop("resumed") or None
                result["agent_machine_load"] = meter.result
            if reference is not None and self.config.accuracy.agreement_n:
                total = sum(len(v) for v in agreement_items.values())
                self.progress.phase(f"{option}/{engine} agreement", total)
                mine = evaluate_served(server.url, self.tasks, agreement_items, self.config.accuracy.concurrency,
                                       progress=lambda *_: self.progress.advance())
                result["agreement"] = agreement(reference, mine)
            with TreeRSSSampler(server.process.pid) as rss:  # memory under the same load for every row
                result["latency"] = run_levels(server.url, self.config.load, self.progress, f"{option}/{engine}",
                                               server.process.pid)
                result["adapter_load_ms"] = self.adapter_load_ms(server.url, adapters) if adapters else None
            gpu_after = gpu_memory_mb()
        result["wall_s"] = round(time.perf_counter() - started, 1)
        result["peak_rss_mb"] = round(rss.peak_mb, 1)
        result["gpu_memory_mb"] = max(gpu_before or 0, gpu_after or 0) if gpu_after is not None else None
        result["answers_file"] = str(answers_file)
        phase = PhaseFile(key=key, result=PhaseResult.model_validate(result))
        cache.write_text(phase.model_dump_json(indent=1))
        self.agent_journal(option, engine, key).remove()
        return phase.result

    def phase_key(self, option: str, engine: str, plan: ServingPlan, path: Path, role: str) -> str:
        """What a measured phase holds for: the settings, the engine, the weights, the deployment file and the
        role (the scoring engine answers every item and runs the agent, another the agreement sample)."""
        # engines on folded LoRA (fold: true, option folded, a hybrid routing to either) serve other weights than
        # the same models as adapters: their folders (adapter key and dtype) join the key
        served = {str(entry.path) for entry in plan.models.values()}
        folds = sorted(key for key in plan.engines if key not in served)
        return digest(self.phase_settings, option, self.answer_cache.computed_by(engine), models_key(plan),
                      path.read_text(), role, *([SPEED] if engine == "hf" else []),  # (keys made before: no SPEED)
                      *([folds] if folds else []))  # (keys made before: no folds)

    def cached_phase(self, cache: Path, key: str) -> PhaseResult | None:
        """The phase measured before under the same key; None where there is none, its key differs, or the file
        no longer reads as a PhaseFile (then it is measured again, and said so)."""
        if not cache.is_file():
            return None
        try:
            phase = read_record(cache, PhaseFile)
        except (ConfigError, ValueError) as e:
            self.progress.say(f"{cache} is not a phase result this bench reads ({e}); measuring again")
            return None
        return phase.result if phase.key == key else None

    def answer(self, url: str, option: str, engine: str, files: Files) -> dict[str, int | None]:
        """Every item's answer from this server into ``files.answers`` (and each task's into its task file); a
        task whose answers another option already gave with the same weights (``files.tasks``) is not asked again.
        Each answer is journaled as it arrives (with its engine: another engine's are asked again), so a run
        stopped midway asks only the rest next time. Returns how many answers came from the journal and how many
        from other options (None for none), as the phase result records them."""
        answers_file = files.answers
        journal = Journal(answers_file.with_suffix(".partial.jsonl"), answers_file.stem)
        known = self.answer_cache.shared(option, files)
        shared = sum(len(v) for v in known.values())
        for record in journal.done():
            if record.pop("engine", engine) == engine:  # journals written before answers named their engine
                known.setdefault(record.pop("task"), {})[record["id"]] = record
        total = sum(len(v) for v in self.items.values())
        if shared:
            self.progress.say(f"{option} on {engine}: {shared} of {total} answers shared with options that route "
                              "those tasks to the same weights")
        had = sum(len(v) for v in known.values()) - shared
        if had:
            self.progress.say(f"{option} on {engine}: {had} of {total} answers kept from a run stopped midway")
        self.progress.phase(f"{option}/{engine} accuracy", total - had - shared)
        answers = evaluate_served(url, self.tasks, self.items, self.config.accuracy.concurrency,
                                  progress=lambda *_: self.progress.advance(), known=known,
                                  on_answer=lambda task, a: journal.add({"task": task, "engine": engine, **a}))
        answers_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = answers_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"option": option, "engine": engine, "answers": answers}))
        tmp.replace(answers_file)
        journal.remove()
        self.answer_cache.share(files)
        return {"resumed_answers": had or None, "shared_answers": shared or None}

    def agent(self, url: str, option: str, engine: str, key: str) -> dict:
        """The coding agent on the first ``agent.n`` HumanEval problems against this server; each problem's
        record is journaled as it finishes (a stopped run resumes with the rest; ``measure`` deletes the journal
        once the phase is written) and goes to OUT/answers/OPTION/agent.jsonl, the summary into the result."""
        journal = self.agent_journal(option, engine, key)
        if self.fresh:
            journal.remove()
        done = journal.done()
        if done:
            self.progress.say(f"{option} on {engine}: {len(done)} agent problems kept from a run stopped midway")
        self.progress.phase(f"{option}/{engine} agent", len(self.agent_items) - len(done))
        summary = run_on_server(url, self.agent_items, self.config.agent, self.tasks, self.sandbox, label=option,
                                done=done, on_record=lambda r: (journal.add(r), self.progress.advance()))
        folder = self.out / "answers" / option
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "agent.jsonl").write_text("".join(json.dumps(r) + "\n" for r in summary.pop("records")))
        return summary | {"resumed": len(done)}

    def agent_journal(self, option: str, engine: str, key: str) -> Journal:
        return Journal(self.out / "phases" / f"{option}-{engine}.agent.jsonl", key)

    def adapter_load_ms(self, url: str, adapters: dict[str, Path]) -> float | dict:
        """Time to load one of the option's adapters again under a new name (then unload it)."""
        name, path = next(iter(sorted(adapters.items())))
        root = url.removesuffix("/v1")
        probe = f"bench-probe-{int(time.time())}"
        try:
            start = time.perf_counter()
            r = httpx.post(f"{root}/v1/load_lora_adapter", json={"lora_name": probe, "lora_path": str(path)},
                           timeout=300)
            wall_ms = (time.perf_counter() - start) * 1000
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {r.text[:200]}"}
            httpx.post(f"{root}/v1/unload_lora_adapter", json={"lora_name": probe}, timeout=60)
        except httpx.HTTPError as e:
            return {"error": repr(e)}
        return round(wall_ms, 1)

    # ---------------------------------------------------------------------------------------------- run
    def run(self, engines: list[str], skipped_engines: dict[str, str], zoo: dict) -> Report:
        """Every option on every engine (the untuned base first: the control each option's gain is measured
        against; the hybrid last, planned from the others), then the report."""
        env = environment(self.config_hash, self.git_sha)
        tally = Tally()
        costed = self.config.budget.engine if self.config.budget.engine in engines else engines[0]
        for option in [BASE, *(o for o in self.config.deployments if o != BASE)]:
            if option == "hybrid" and not self.plan_hybrid(tally, costed):
                continue
            self.measure_option(option, engines, tally, gpu=env["gpu"] is not None)
        return self.report(env, skipped_engines, zoo, tally)

    def plan_hybrid(self, tally: Tally, costed: str) -> bool:
        """Recommend a per-task plan from the options measured on ``costed`` and write hybrid.yaml; False where
        the hybrid is not served (nothing to plan from, or the plan is one measured option)."""
        measured = [r for r in tally.results if r.engine == costed and r.deployment in tally.accuracy]
        if not measured:
            tally.failures.append({"deployment": "hybrid", "engine": "-", "error": "no other option was measured"})
            return False
        options = [r.deployment for r in measured]
        recommendation = recommend(
            {o: tally.accuracy[o] for o in options}, [r.model_dump() for r in measured], self.config.budget, self.items,
            {o: tally.answers[o] for o in options}, self.model_sizes_mb(options), self.config.accuracy.bootstrap)
        recommendation.engine = costed
        tally.recommendation = recommendation
        write_hybrid(self.config, self.out, recommendation.routes, costed)
        if len(chosen := set(recommendation.routes.values())) == 1:  # the plan is one measured option:
            twin = chosen.pop()  # serving it again would measure the same weights and routes twice
            tally.results += [r.model_copy(update={"deployment": "hybrid", "same_as": twin})
                              for r in tally.results if r.deployment == twin]
            self.progress.say(f"hybrid routes every task to {twin}: {twin}'s measurements stand for it")
            return False
        return True

    def measure_option(self, option: str, engines: list[str], tally: Tally, gpu: bool) -> None:
        """One option on each engine, its scoring engine first (the others' answers are checked against it)."""
        default_scorer = self.config.accuracy.engine if self.config.accuracy.engine in engines else engines[0]
        scorer = self.config.accuracy.engine_for.get(option, default_scorer)
        scorer = scorer if scorer in engines else default_scorer
        reference, scored_by = None, None
        for engine in [scorer, *(e for e in engines if e != scorer)]:
            routes = tally.recommendation.routes if option == "hybrid" and tally.recommendation else {}
            if why := self.config.skipped(option, engine, gpu) or self.config.skipped_route(routes, engine, gpu):
                self.progress.say(f"{option} on {engine}: not run (config `skip`): {why}")
                tally.not_run.append({"deployment": option, "engine": engine, "reason": why})
                continue
            try:
                result = self.measure(option, engine, reference, scored_by)
            except (MixmergeError, RuntimeError, httpx.HTTPError) as e:  # one option failing spoils no other
                self.progress.say(f"{option} on {engine} failed: {e}")
                tally.failures.append({"deployment": option, "engine": engine, "error": str(e)[:500]})
                if reference is None:
                    break  # no accuracy for this option: its other engines would have nothing to agree with
                continue
            scored = read_record(Path(result.answers_file), AnswersFile)
            if reference is None:
                scoring = time.perf_counter()
                reference, scored_by = self.score(option, scored.as_dicts(), tally), engine
                result.score_wall_s = round(time.perf_counter() - scoring, 1)
            result.accuracy = tally.accuracy[option]
            result.accuracy_engine = scored.engine  # answers are cached by content: maybe another run's
            tally.results.append(result)

    def score(self, option: str, answers: dict[str, list[dict]], tally: Tally) -> dict[str, list[str]]:
        """Score the option's answers (once, from its scoring engine) and keep them; the answers' texts."""
        texts = tally.answers[option] = {t: [a["answer"] for a in answers[t]] for t in self.items}
        tally.accuracy[option] = score_answers(self.items, answers, self.config.accuracy.bootstrap, self.sandbox)
        self.write_answers(option, answers)
        return texts

    def report(self, env: dict, skipped_engines: dict[str, str], zoo: dict, tally: Tally) -> Report:
        return Report.model_validate({
            "schema_version": SCHEMA_VERSION,
            "name": self.config.name,
            "environment": env,
            "config": self.config.model_dump(exclude={"quick"}),
            "engines_skipped": skipped_engines,
            "n_per_task": {t: len(v) for t, v in self.items.items()},
            "sampling": {t: {"max_tokens": sampling_for(self.tasks, t).max_new_tokens,
                             "stop": list(sampling_for(self.tasks, t).stop)} for t in self.items},
            "headline_metrics": {t: TASKS[t].headline for t in self.items},
            "ranked_by": ranked_sets(list(self.items)),
            "zoo": zoo,
            "results": tally.results,
            "failures": tally.failures,
            "skipped": tally.not_run,
            "recommendation": tally.recommendation,
        } | self.controls(tally.answers))

    def controls(self, answers: dict[str, dict[str, list[str]]]) -> dict:
        """The trivial baselines, each option's gain over base, the difference the chosen N can detect, and the
        seed twins' spread."""
        resamples = self.config.accuracy.bootstrap
        return {"baselines": score_baselines(self.items, resamples, self.sandbox),
                "gains_over_base": gains_over_base(self.items, answers, resamples),
                "detectable_difference": detectable_difference(self.items, answers[BASE], resamples)
                if BASE in answers else None,
                "seed_spread": seed_spread(self.items, answers, self.config.seed_twins, resamples) or None}

    def model_sizes_mb(self, options: list[str]) -> dict[str, dict[str, float]]:
        """Per option, the size on disk of each full model it serves (weights an extra engine would hold)."""
        from runtime.models import dir_size

        sizes = {}
        for option in options:
            _, plan = self.plan(option)
            sizes[option] = {key: round(dir_size(Path(key)) / 2**20, 1) for key in plan.engines}
        return sizes

    def write_answers(self, option: str, answers: dict[str, list[dict]]) -> None:
        """OUT/answers/OPTION/TASK.jsonl: every scored answer beside its reference, to check a score by eye."""
        folder = self.out / "answers" / option
        folder.mkdir(parents=True, exist_ok=True)
        for task, its in self.items.items():
            write_answers(folder / f"{task}.jsonl", its, answers[task])


def scores_humaneval(config: BenchConfig) -> bool:
    return bool(config.accuracy.humaneval_n) and "generation" in config.accuracy.tasks


def runs_model_code(config: BenchConfig) -> bool:
    """HumanEval's scoring or the agent runs model-written programs: only then is a sandbox built."""
    return scores_humaneval(config) or bool(config.agent.n)


def run_bench(config: BenchConfig, out: Path, progress: Progress, engines: list[str] | None = None,
              fresh: bool = False, unsafe_sandbox: bool | None = None) -> Report:
    """The whole bench; returns the report (also written to OUT/report.json, report.md and charts).
    ``unsafe_sandbox``: run HumanEval's programs where the sandbox has no namespaces (None: the
    MIXMERGE_UNSAFE_SANDBOX variable); the sandbox refuses before the zoo is built, not hours into the run."""
    start, sha = time.perf_counter(), git_sha()  # a commit made while the bench runs is not the code that ran
    sandbox = Sandbox(allow_unsafe=unsafe_sandbox) if runs_model_code(config) else None
    store = zoo_store(config, ModelStore())
    out.mkdir(parents=True, exist_ok=True)
    usable, skipped = installed_engines(engines or list(config.engines))
    if not usable:
        raise EngineUnavailableError(f"none of the engines {engines or config.engines} can run here: {skipped}",
                                     fix="install one, or pass --engines hf")
    zoo = build_zoo(config, out, progress, store)
    bench = Bench(config, out, progress, fresh=fresh, git_sha=sha, sandbox=sandbox, store=store,
                  serve_env={"MIXMERGE_HOME": str(store.home)})
    report = bench.run(usable, skipped, zoo)
    report.wall_s = round(time.perf_counter() - start, 1)
    write_report(report, out)
    return report

