"""Learning-rate sweep on one expert, whose choice every run of a recipe then uses:

    python -m training.lr_sweep --config configs/train/qwen-lora-generation.yaml \\
        [--lrs 2e-4,5e-4,1e-3] [--max-steps 20] [--eval-steps 5] [--out benchmarks/results/qwen-lr-sweep.json] \\
        [key=value ...]

Trains the expert at each rate for the same steps on the same rows (seed, data and everything else as in its
config), records the val loss per rate and step, and picks the rate with the lowest val loss and the step where
that rate's val loss was lowest. The trial adapters go to a temporary folder and leave the store; only the JSON
stays. Copy ``chosen.learning_rate`` (and ``chosen.steps`` where it is below the budget) into the recipe's configs.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.artifacts import Manifest, git_sha
from runtime.config import load_config
from runtime.errors import BadRequestError, ConfigError
from runtime.models import ModelStore
from training.config import TrainConfig

if TYPE_CHECKING:
    from training.sft import TrainingRecord

log = logging.getLogger(__name__)


def run_sweep(path: str | Path, lrs: list[float], max_steps: int, eval_steps: int, out: Path, store: ModelStore,
              overrides: list[str] | None = None, step: Callable[[str], None] = log.info) -> dict:
    """Train ``path``'s expert once per rate and write the val losses and the choice to ``out`` (JSON)."""
    from training.sft import TrainingRecord, train

    base = load_config(path, TrainConfig, overrides or [])
    if base.kind != "expert":
        raise ConfigError(str(path), [f"sweep one expert (kind: expert), not a {base.kind} run"])
    trials = []
    with tempfile.TemporaryDirectory(prefix="lr-sweep-") as tmp:
        for lr in lrs:
            name = f"{base.name}-lr-sweep-{lr:g}"
            config = load_config(path, TrainConfig, [*(overrides or []), f"name={name}", f"learning_rate={lr:.6e}",
                                                     f"max_steps={max_steps}", f"eval_steps={eval_steps}",
                                                     f"output_dir={Path(tmp) / name}"])
            step(f"sweep {base.name}: learning rate {lr:g}, {max_steps} steps")
            start = time.time()
            entry = train(config, store, step=step)
            run = TrainingRecord.model_validate(Manifest.load(entry.path).extras)
            store.remove(name)
            trials.append(_trial(lr, run, time.time() - start))
    record = {"expert": base.name, "config": str(path), "overrides": overrides or [], "base_model": base.base_model,
              "max_steps": max_steps, "eval_steps": eval_steps, "seed": base.seed,
              "rows": trials[0]["budget"]["rows"] if trials else 0, "trials": trials, "chosen": choose(trials),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_sha": git_sha()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    step(f"lr sweep written to {out}: chosen {record['chosen']}")
    return record


def _trial(lr: float, run: TrainingRecord, wall: float) -> dict:
    val = run.loss_curve["val"]
    best_step, best = min(((s, v) for s, v in val if s > 0), key=lambda sv: sv[1], default=(0, float("inf")))
    return {"learning_rate": lr, "val": val, "train": run.loss_curve["train"], "best_step": best_step,
            "best_val_loss": best, "val_loss_before": run.val_loss_before, "wall_s": round(wall, 1),
            "budget": run.mixture["budget"]}


def choose(trials: list[dict]) -> dict:
    """The rate whose best val loss is lowest, and the step it reached it at."""
    if not trials:
        raise BadRequestError("no learning rates to try", fix="give at least one with --lrs")
    best = min(trials, key=lambda t: t["best_val_loss"])
    return {"learning_rate": best["learning_rate"], "steps": best["best_step"], "val_loss": best["best_val_loss"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.lr_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="an expert's training config")
    parser.add_argument("--lrs", default="2e-4,5e-4,1e-3", help="comma-separated learning rates")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--eval-steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/qwen-lr-sweep.json"))
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    run_sweep(args.config, lrs, args.max_steps, args.eval_steps, args.out, ModelStore(), args.overrides)


if __name__ == "__main__":
    main()
