"""From model answers to task scores: parse each answer the way the task's prompt asked for it, then apply the
task's metrics. One scorer per task in ``SCORERS``; HumanEval runs its tests in the sandbox."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from runtime.bench import metrics as m
from runtime.bench.sandbox import Sandbox
from training.tasks import NO_ISSUES, TaskItem

_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.S)
_NUMBERED = re.compile(r"^\s*\d+\s*\|\s?")
_TOP_LEVEL = re.compile(r"^\S", re.M)


def strip_fences(text: str) -> str:
    """The first fenced code block if there is one, else the text."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


def function_body(answer: str, entry_point: str) -> str:
    """The body the model wrote, indented by 4. Accepts a bare body or a whole function (its body is taken)."""
    code = strip_fences(answer).rstrip()
    match = re.search(rf"^([ \t]*)(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(.*?:[ \t]*\n", code, re.M | re.S)
    if match:  # a whole function: keep its body, up to the first line back at the def's indentation
        rest = code[match.end():].splitlines()
        depth = len(match.group(1))
        end = next((i for i, ln in enumerate(rest) if ln.strip() and len(ln) - len(ln.lstrip()) <= depth), len(rest))
        code = _strip_docstring(textwrap.dedent("\n".join(rest[:end])))
        return textwrap.indent(code, "    ").rstrip()
    lines = code.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if first and not first[0].isspace():
        code = textwrap.indent(textwrap.dedent(code), "    ")
    top = _TOP_LEVEL.search(code)  # the body ends at the first top-level line (HumanEval's stop sequences)
    return code[: top.start()].rstrip() if top else code


def _strip_docstring(code: str) -> str:
    stripped = code.lstrip()
    for quote in ('"""', "'''"):
        if stripped.startswith(quote):
            end = stripped.find(quote, 3)
            if end != -1:
                return stripped[end + 3:].lstrip("\n")
    return code


def first_line(answer: str) -> str:
    for line in strip_fences(answer).splitlines():
        if line.strip():
            return line.strip()
    return ""


@dataclass(frozen=True)
class Review:
    clean: bool
    line: int | None = None
    kind: str | None = None
    fix: str | None = None


def parse_review(answer: str) -> Review:
    text = answer.strip()
    line = re.search(r"line\s*:?\s*(\d+)", text, re.I)
    if line is None and re.search(r"\bno (issues?|bugs?)\b", text, re.I):
        return Review(clean=True)
    kind = re.search(r"kind\s*:\s*([A-Za-z-]+)", text, re.I)
    fix = re.search(r"fix\s*:\s*(.+)", text, re.I)
    return Review(clean=False, line=int(line.group(1)) if line else None,
                  kind=kind.group(1).lower() if kind else None,
                  fix=_NUMBERED.sub("", fix.group(1)).strip().strip("`") if fix else None)


# ------------------------------------------------------------------------------------------------- scorers
# How each answer is read, shared by the scorers and by ``headline_statistic``.
def _generated_bodies(items: list[TaskItem], answers: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(bodies as written into the function, dedented bodies, dedented references)."""
    bodies = [function_body(a, str(it.meta.get("entry_point", ""))) for it, a in zip(items, answers, strict=True)]
    return bodies, [textwrap.dedent(b) for b in bodies], [textwrap.dedent(it.reference) for it in items]


def _summary(answer: str) -> str:
    return first_line(answer).strip("\"' ")


def _line_hit(item: TaskItem, review: Review) -> bool:
    return review.line == item.meta["line"]


def score_generation(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None) -> dict:
    bodies, preds, refs = _generated_bodies(items, answers)
    return {
        "chrf_pp": m.chrf_pp(preds, refs),
        "bleu4": m.bleu4(preds, refs),
        "exact_match": 100 * m.mean([m.exact_match(p, r) for p, r in zip(preds, refs, strict=True)]),
        "parse_rate": 100 * m.mean([m.parses(it.input + "\n" + b) for it, b in zip(items, bodies, strict=True)]),
    }


def score_summarization(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None) -> dict:
    preds = [_summary(a) for a in answers]
    refs = [it.reference for it in items]
    return {
        "smoothed_bleu4": 100 * m.mean([m.smoothed_bleu(p, r) for p, r in zip(preds, refs, strict=True)]),
        "chrf_pp": m.chrf_pp(preds, refs),
        "rouge_l": 100 * m.mean([m.rouge_l(p, r) for p, r in zip(preds, refs, strict=True)]),
    }


def score_completion(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None) -> dict:
    preds = [first_line(a) for a in answers]
    refs = [it.reference for it in items]
    return {
        "exact_match": 100 * m.mean([m.exact_match(p, r) for p, r in zip(preds, refs, strict=True)]),
        "edit_similarity": m.mean([m.edit_similarity(p, r) for p, r in zip(preds, refs, strict=True)]),
    }


def score_review(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None) -> dict:
    reviews = [parse_review(a) for a in answers]
    buggy = [(it, r) for it, r in zip(items, reviews, strict=True) if not it.meta["clean"]]
    clean = [r for it, r in zip(items, reviews, strict=True) if it.meta["clean"]]
    detected = [r.clean == bool(it.meta["clean"]) for it, r in zip(items, reviews, strict=True)]
    return {
        "line_accuracy": 100 * m.mean([_line_hit(it, r) for it, r in buggy]),
        "kind_accuracy": 100 * m.mean([r.kind == it.meta["kind"] for it, r in buggy]),
        "fix_exact_match": 100 * m.mean([r.fix is not None and m.exact_match(r.fix, str(it.meta["fixed_line"]))
                                         for it, r in buggy]),
        "false_positive_rate": 100 * m.mean([not r.clean for r in clean]),
        "detection_accuracy": 100 * m.mean(detected),
        "n_buggy": len(buggy),
        "n_clean": len(clean),
    }


def humaneval_program(item: TaskItem, answer: str) -> str:
    body = function_body(answer, str(item.meta["entry_point"]))
    return f"{item.input}{body}\n\n{item.meta['test']}\n\ncheck({item.meta['entry_point']})\n"


def score_humaneval(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None) -> dict:
    """Greedy pass@1: one sample per problem, so pass@1 is the share of problems whose tests pass."""
    sandbox = sandbox or Sandbox()
    results = sandbox.run_many([humaneval_program(it, a) for it, a in zip(items, answers, strict=True)])
    passed = [r.passed for r in results]
    return {
        "pass_at_1": 100 * m.mean([m.pass_at_k(1, int(p), 1) for p in passed]),
        "passed": sum(passed),
        "timeouts": sum(r.status == "timeout" for r in results),
        "sandbox": sandbox.isolation,
    }


def headline_statistic(task: str, items: list[TaskItem], answers: list[str]):
    """The task's headline metric as a function of item indices (for bootstrap intervals and paired tests).
    Per-item metrics average; generation's chrF++ is a corpus statistic, recomputed on each resample. Review's
    line accuracy counts buggy items only, so a resample's clean items contribute nothing."""
    from runtime.bench.stats import mean_of

    if task == "generation":
        _, preds, refs = _generated_bodies(items, answers)
        return m.chrf_pp_on_subsets(preds, refs)
    if task == "summarization":
        return mean_of([100 * m.smoothed_bleu(_summary(a), it.reference) for it, a in zip(items, answers, strict=True)])
    if task == "completion":
        return mean_of([m.edit_similarity(first_line(a), it.reference) for it, a in zip(items, answers, strict=True)])
    if task == "review":
        hits = [None if it.meta["clean"] else 100.0 * _line_hit(it, parse_review(a))
                for it, a in zip(items, answers, strict=True)]

        def line_accuracy(idx) -> float:
            picked = [hits[i] for i in idx if hits[i] is not None]
            return sum(picked) / len(picked) if picked else 0.0

        return line_accuracy
    if task == "humaneval":
        results = Sandbox().run_many([humaneval_program(it, a) for it, a in zip(items, answers, strict=True)])
        return mean_of([100.0 * r.passed for r in results])
    raise KeyError(task)


SCORERS: dict[str, Callable[[list[TaskItem], list[str], Sandbox | None], dict]] = {
    "generation": score_generation,
    "summarization": score_summarization,
    "completion": score_completion,
    "review": score_review,
    "humaneval": score_humaneval,
}

__all__ = ["NO_ISSUES", "SCORERS", "function_body", "headline_statistic", "humaneval_program", "parse_review"]
