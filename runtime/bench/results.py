"""The bench's results as typed records: one server's phase (``PhaseResult``), the recommendation and the report.
These models ARE report.json's schema (``Report.model_json_schema()`` prints it); runtime/bench/report.py renders
them for people.

Files on disk outlive the code that wrote them (``OUT/phases/*.json``, the accuracy cache
``$MIXMERGE_HOME/cache/bench-accuracy/*.json``, the committed reports under benchmarks/results/), so every record
allows extra fields (``extra="allow"``: a field another version wrote is kept and written back, never refused) and
a field added after schema_version 1 defaults to None, so a file written before it still loads. A field of the
wrong type is refused: ``read_record`` names the file and the field in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.errors import ConfigError

SCHEMA_VERSION = 1  # new fields may be added; a removed or renamed field bumps the version

R = TypeVar("R", bound="Record")


class Record(BaseModel):
    # fields another version of the bench wrote survive a round trip; an assigned field is validated (and a
    # dict assigned to a record field becomes the record)
    model_config = ConfigDict(extra="allow", validate_assignment=True)


def read_record(path: Path, model: type[R]) -> R:
    """``path``'s JSON as ``model``; a wrong or missing field is a ConfigError naming the file and the field."""
    try:
        return model.model_validate_json(path.read_text())
    except ValidationError as e:
        problems = [f"{'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}" for err in e.errors()[:5]]
        raise ConfigError(str(path), problems) from None


def top_level(result: PhaseResult | dict) -> str:
    """The highest fixed concurrency a phase's load ran at (the summary table's and the cost's level)."""
    latency = result.latency if isinstance(result, PhaseResult) else result["latency"]
    return max((k for k in latency if k.isdigit()), key=int)


# ---------------------------------------------------------------------------------------------- one phase
UNDER_LOAD_SHARE = 0.10  # other processes above this share of all cores: a timing was measured under load
# a part shorter than this is not judged: its share is a few CPU ticks (the 2026-11-27 report flagged "12% over 0 s"
# for hybrid's accuracy part, whose 404 answers were all shared with other options)
UNDER_LOAD_MIN_S = 5.0


class MachineLoad(Record):
    """What else used the machine while a timed part ran (runtime/bench/load.py's MachineLoadMeter, from /proc)."""

    wall_s: float
    cores: int
    load1_start: float = Field(description="1-minute load average when the part started")
    load1_end: float
    other_cpu_share: float = Field(description="share of all cores' time (0-1) used by processes outside the "
                                               "served process tree and the bench process")
    own_cpu_share: float = Field(description="share of all cores' time used by the server's tree and the bench")

    @property
    def under_load(self) -> bool:
        return self.wall_s >= UNDER_LOAD_MIN_S and self.other_cpu_share > UNDER_LOAD_SHARE


class LatencyStats(Record):
    """One load level, vllm bench serve's fields (runtime/bench/load.py)."""

    completed: int
    failed: int
    duration_s: float
    request_throughput: float = Field(description="completed requests per second")
    output_throughput: float = Field(description="output tokens per second")
    total_output_tokens: int
    empty_answers: int = Field(0, description="completed with no text: counted in E2EL, not in TTFT")
    short_answers: int = Field(0, description="fixed-length requests that came back shorter than max_tokens")
    errors: list[str] = Field(default_factory=list, description="up to 5 distinct request errors")
    mean_ttft_ms: float
    median_ttft_ms: float
    p90_ttft_ms: float
    p99_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    p90_tpot_ms: float
    p99_tpot_ms: float
    mean_itl_ms: float
    median_itl_ms: float
    p90_itl_ms: float
    p99_itl_ms: float
    mean_e2el_ms: float
    median_e2el_ms: float
    p90_e2el_ms: float
    p99_e2el_ms: float
    concurrency: int | None = None
    request_rate: float | None = None
    machine_load: MachineLoad | None = Field(None, description="what else used the cores during the level")


class TaskAccuracy(Record):
    """One scored set (a task, or humaneval) of one option (runtime/bench/compare.py's score_answers)."""

    n: int
    headline: str = Field(description="the set's headline metric")
    value: float = Field(description="the headline metric, 0-100")
    ci95: list[float] = Field(description="95% interval over items [low, high]")
    ci_method: str | None = Field(None, description="clopper-pearson for a 0/1 headline, else bootstrap")
    metrics: dict[str, Any] = Field(description="all of the task's metrics, with format_failures {empty, "
                                                "off_format, unparseable} (runtime/tasks/scoring.py) and ci95; "
                                                "humaneval's: pass_at_1, passed, timeouts, sandbox")
    truncated_share: float | None = None
    completion_tokens: int | None = None


class AgentSummary(Record):
    """The coding agent on HumanEval's first n problems through one server (runtime/bench/agent.py)."""

    problems: int
    solved: int
    solved_share: float
    ci95: list[float] = Field(description="exact (Clopper-Pearson) interval of solved_share")
    first_try: int = Field(description="solved by the first generation: a single generation's pass@1")
    first_try_share: float
    loop_adds: float = Field(description="points the review -> revise loop adds")
    mean_calls: float
    mean_wall_s: float = Field(description="per problem, with `workers` agents at once")
    mean_tokens: float
    errors: int
    calls_per_route: dict[str, int]
    max_revisions: int
    workers: int


class Agreement(Record):
    """Greedy answers on the agreement sample identical to the scoring engine's (second engine only)."""

    matched: int
    n: int
    per_task: dict[str, dict[str, int]]


class PhaseResult(Record):
    """One option served on one engine: what OUT/phases/OPTION-ENGINE.json caches and report.json's results
    list. ``accuracy``, ``accuracy_engine`` and ``mean_accuracy`` are added after the phase (scoring and the
    report); ``same_as`` only on a hybrid that routes every task to one option (its measurements repeated)."""

    deployment: str
    engine: str
    models: dict[str, str] = Field(description="every model and adapter served, name -> manifest hash")
    adapters: list[str] = Field(default_factory=list)
    dtype: str | None = Field(None, description="what its engines computed in, auto resolved")
    cold_start_s: float = Field(description="launch to first healthy answer")
    accuracy_wall_s: float | None = Field(None, description="scoring, where it ran")
    accuracy_machine_load: MachineLoad | None = Field(None, description="what else used the cores meanwhile")
    agent: AgentSummary | None = Field(None, description="scoring engine only, where agent.n > 0")
    agent_machine_load: MachineLoad | None = Field(None, description="what else used the cores during the agent")
    agreement: Agreement | None = None
    latency: dict[str, LatencyStats] = Field(description='"1" | "4" | "8" | "poisson-RATE" -> the level\'s stats')
    adapter_load_ms: float | dict[str, str] | None = Field(
        None, description="null when the option serves no adapter; {error} when the engine refused")
    wall_s: float = Field(description="this server's whole phase")
    peak_rss_mb: float = Field(description="serving process tree, sampled every 0.2 s during the load runs")
    gpu_memory_mb: float | None = Field(None, description="null without a GPU")
    answers_file: str = Field(description="the accuracy cache file whose answers were scored")
    accuracy: dict[str, TaskAccuracy] | None = None
    accuracy_engine: str | None = Field(None, description="the engine whose answers were scored")
    mean_accuracy: float | None = Field(None, description="mean of the ranked sets' headline values, 0-100")
    same_as: str | None = None
    score_wall_s: float | None = Field(None, description="scoring its answers in this run (HumanEval's programs "
                                                        "in the sandbox, the intervals); on its scoring engine's row")
    cached: bool | None = Field(None, description="read from OUT/phases in this run: its walls are the run that "
                                                  "measured it")
    git_sha: str | None = Field(None, description="the commit that measured this phase (a cached phase keeps its "
                                                   "own; the report's environment names the rendering run's)")
    resumed_answers: int | None = Field(None, description="answers kept from a run stopped midway (the accuracy "
                                                          "wall covers only the rest)")
    shared_answers: int | None = Field(None, description="answers taken from options that route those tasks to "
                                                         "the same weights (not asked again; not in the wall)")
    resumed_agent: int | None = Field(None, description="agent problems kept from a run stopped midway (the agent "
                                                        "wall and its mean_wall_s cover two runs)")


class PhaseFile(Record):
    """OUT/phases/OPTION-ENGINE.json: a phase's result and the key (config, option, engine, models) it holds for."""

    key: str
    result: PhaseResult


class ServedAnswer(Record):
    answer: str
    finish_reason: str | None = None
    completion_tokens: int = 0


class SharedAnswer(ServedAnswer):
    id: str


class TaskAnswers(Record):
    """$MIXMERGE_HOME/cache/bench-accuracy/task/KEY.json: one task's answers, shared by every option that routes it
    to the same weights (``runtime/bench/answers.py``)."""

    task: str
    option: str  # the option that answered them
    engine: str
    answers: list[SharedAnswer]


class AnswersFile(Record):
    """$MIXMERGE_HOME/cache/bench-accuracy/KEY.json: one option's served answers per set, in item order."""

    option: str
    engine: str
    answers: dict[str, list[ServedAnswer]]

    def as_dicts(self) -> dict[str, list[dict[str, Any]]]:
        return {t: [a.model_dump() for a in answers] for t, answers in self.answers.items()}


# ------------------------------------------------------------------------------------------ recommendation
class PlanCandidate(Record):
    routes: dict[str, str]
    mean_accuracy: float
    fits: bool
    memory_mb: float
    p90_e2el_ms: float
    engines: int
    normalized_gain: float | None = None


class Comparison(Record):
    """A paired difference (95% bootstrap), Holm-adjusted over its family: headline points, or normalized-gain units
    in ``Recommendation.option_gains``."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float | None = None
    significant: bool = Field(description="Holm's verdict at 5%")


class Evidence(Record):
    option: str
    value: float
    headline: str
    scored_on: str | None = Field(None, description="the set that judged the task")
    versus: dict[str, Comparison]


class Tie(Record):
    options: list[str] = Field(description="options within the noise of the best one (on the normalized gain for "
                                           "single options; on one task's set for a route)")
    chosen: str = Field(description="the cheapest of them")
    best_estimate: str = Field(description="the option ranked first (single options) or planned (a route) before "
                                           "the tie was settled")


class Simplified(Record):
    option: str
    instead_of: dict[str, str] = Field(description="the per-task plan the single option replaced")
    mean_accuracy: float


class Budget(Record):
    memory_mb: float
    p90_e2el_ms: float
    engine: str | None = None


class Recommendation(Record):
    """The hybrid plan (runtime/bench/recommend.py): routes {task: option} and the evidence for them."""

    routes: dict[str, str]
    engine: str | None = Field(None, description="whose measurements costed the plan")
    mean_accuracy: float
    normalized_gain: float | None = Field(None, description="mean over ranking_tasks of (score - base) / "
                                                            "(best - base)")
    ranking_tasks: list[str] | None = Field(None, description="ranked sets where some option beats base by >= 1")
    tie: Tie | None = None
    route_ties: dict[str, Tie] | None = Field(None, description="per task of a per-task plan: the options within "
                                              "the noise of the planned route there (best_estimate), and the one "
                                              "the cheapest tied plan routes it to (only the routes that changed)")
    option_gains: dict[str, Comparison] | None = Field(None, description="each single option's normalized gain "
                                                       "over base on ranking_tasks (0 = base, 1 = the best option on "
                                                       "every task): paired bootstrap interval, Holm over the options")
    estimated_memory_mb: float
    estimated_p90_e2el_ms: float
    budget: Budget
    fits_budget: bool
    unconstrained_best: PlanCandidate
    evidence: dict[str, Evidence]
    why: list[str]
    simplified_from: Simplified | None = None
    plans_considered: int
    plans_in_budget: int


# ---------------------------------------------------------------------------------------------- the report
class Environment(Record):
    cpu: str
    cpu_count: int | None
    memory_gb: float
    gpu: str | None
    platform: str
    versions: dict[str, str] = Field(description="python, torch, transformers, vllm")
    git_sha: str | None
    config_hash: str = Field(description="of the bench config after overrides")
    command: str | None = Field(None, description="the command line that ran the bench (None outside the CLI)")


class Sampling(Record):
    max_tokens: int
    stop: list[str]


class TaskRows(Record):
    """One task's rows in a training run (training/budget.py's record in the manifest)."""

    rows: int | None = None
    tokens: int | None = None
    dropped: int | None = Field(None, description="items whose prompt did not fit max_length (replaced by others)")
    cut: int | None = Field(None, description="responses cut at max_length")
    cropped: int | None = Field(None, description="inputs shown as a window (tasks.views), not dropped")
    val_rows: int | None = None
    val_dropped: int | None = None
    val_cut: int | None = None


class TrainingBudget(Record):
    """What a zoo model's training cost and saw, from its manifest."""

    seed: int | None = None
    tasks: list[str]
    steps: int
    batch_size: int | None = Field(None, description="rows per optimizer step")
    rows: int | None = None
    epochs: float | None = None
    tokens_seen: int | None = None
    learning_rate: float | None = None
    max_length: int | None = None
    val_loss_before: float | None = None
    val_loss_after: float | None = Field(None, description="on the weights kept (the last step's since 461913a)")
    best_val_loss: float | None = Field(None, description="the lowest val loss of the run, at best_checkpoint_step")
    best_checkpoint_step: int | None = None
    resumed_from: str | None = None
    per_task: dict[str, TaskRows] = Field(default_factory=dict)


class ZooModel(Record):
    kind: str
    built_this_run: bool
    wall_s: float | None = Field(None, description="its build's wall as its manifest recorded it (the last "
                                                   "session's, where training resumed)")
    created: str | None = None
    peak_rss_mb: float | None = None
    training: TrainingBudget | None = None
    sweep: dict[str, Any] | None = Field(None, description="a merge sweep's summary (merge/sweep.py's sweep.json)")


class Zoo(Record):
    built: dict[str, float] = Field(description="name -> seconds")
    reused: list[str]
    wall_s: float
    models: dict[str, ZooModel] | None = Field(None, description="every zoo model from its manifest")


class Retention(Record):
    """The paper's headline: how much of the expert's gain over base an option keeps on a task."""

    value: float | None = Field(description="(option - base) / (experts - base) in %, null where the expert did "
                                            "not beat base")
    option_gain: float
    expert_gain: float
    note: str | None = None


class Failure(Record):
    deployment: str
    engine: str
    error: str


class Skip(Record):
    deployment: str
    engine: str
    reason: str


class Gain(Record):
    diff: float
    ci95: list[float]
    p_value: float
    at_or_below_base: bool
    below_base: bool


class Difference(Record):
    diff: float
    ci95: list[float]
    p_value: float


class SeedDifference(Difference):
    p_holm: float = Field(description="Holm-adjusted over every pair and task of the seed table")
    seed_alone: bool = Field(description="Holm's verdict at 5%: the seed alone moved this score")


class SeedSpread(Record):
    of: str = Field(description="the option this one retrains with another seed")
    per_task: dict[str, SeedDifference] = Field(description="this option minus that one, headline points, paired "
                                                            "95% bootstrap on the same items")


class Baseline(Record):
    value: float
    ci95: list[float]
    ci_method: str | None = None


class Report(Record):
    """report.json."""

    schema_version: int = SCHEMA_VERSION
    name: str
    environment: Environment
    config: dict[str, Any] = Field(description="the bench config as run")
    engines_skipped: dict[str, str] = Field(default_factory=dict, description="engine -> why")
    n_per_task: dict[str, int] = Field(description="scored set -> N (humaneval where accuracy.humaneval_n > 0)")
    sampling: dict[str, Sampling]
    headline_metrics: dict[str, str]
    ranked_by: dict[str, str] | None = Field(None, description="the sets that rank the options -> the task whose "
                                                               "route answers them")
    zoo: Zoo
    results: list[PhaseResult]
    failures: list[Failure] = Field(default_factory=list)
    skipped: list[Skip] = Field(default_factory=list, description="pairs the config's skip left out")
    recommendation: Recommendation | None = None
    baselines: dict[str, dict[str, Baseline]] | None = Field(None, description="trivial answers on the same items")
    gains_over_base: dict[str, dict[str, Gain]] | None = Field(None, description="headline points over base")
    detectable_difference: dict[str, float | None] | None = Field(
        None, description="smallest difference from base a two-sided 5% test on this N finds with 80% power")
    seed_spread: dict[str, SeedSpread] | None = Field(None, description="config seed_twins: each twin against the "
                                                      "option it retrains with another seed (training noise)")
    wall_s: float | None = Field(None, description="the whole run")
    retention: dict[str, dict[str, Retention]] | None = Field(
        None, description="option -> scored set -> retention of the experts' gain over base")
    experts_option: str | None = Field(None, description="the option retention is measured against")
