"""From model answers to task scores: parse each answer the way the task's prompt asked for it, then apply the
task's metrics. The registry (runtime/tasks/registry.py) names each task's scorer and headline statistic;
HumanEval runs its tests in the sandbox.

An empty or off-format answer is a wrong answer, never a lucky one, and every scorer counts them in
``format_failures`` beside its metrics (the categories are exclusive; a task leaves out one that cannot occur):

- ``empty``: the answer has no non-whitespace character (every task).
- ``off_format``: not empty, but holds nothing the task's format asks for:
  generation / humaneval: no function body can be taken from it (only a fence or quotes, or prose at the top
  level before any code); summarization: no content line once fences and docstring quotes are stripped, or that
  line is a Python statement (it parses as anything but an expression: "return a + b", "def f(x):", "x = 1"),
  or opens with ``>>>`` (a bare expression stays a summary: two stdlib docstrings open with a call signature,
  "execle(file, *args, env)"); completion: no
  content line once fences are stripped (what a stop on "\\n" leaves of an answer that opens with a fence);
  review: neither a "no issues" verdict nor a line number, a fix, or any of the format's labels.
- ``unparseable``: in the task's format but unreadable: generation / humaneval: the prompt plus the body is not
  valid Python; review: it uses the labels ``line:``, ``kind:`` or ``fix:`` but gives no line number and no fix.
  Summarization (free text) and completion (one line of an unfinished block) have no such category.

Share metrics (0/1 per item) also get exact Clopper-Pearson 95% intervals in ``ci95`` {metric: [low, high]}.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from typing import Literal

from runtime.stats import Proportion, clopper_pearson, mean_of
from runtime.tasks import measures as m
from runtime.tasks.builders import NO_ISSUES, TaskItem
from runtime.tasks.sandbox import RunResult, Sandbox

# a fence opens at the start of the text or after whitespace, with an optional language tag; a missing closing
# fence (the answer was cut) runs to the end
_FENCE = re.compile(r"(?<!\S)```[^\n`]*(?:\n|\Z)(.*?)(?:```|\Z)", re.S)
_DOC_QUOTES = re.compile(r"(?<![\w\"'])[rRuU]?(?:\"\"\"|''')|\"\"\"|'''")
_NUMBERED = re.compile(r"^\s*\d+\s*\|\s?")
_TOP_LEVEL = re.compile(r"^\S", re.M)
Form = Literal["ok", "empty", "off_format", "unparseable"]
CODE_FAILURES = ("empty", "off_format", "unparseable")
TEXT_FAILURES = ("empty", "off_format")


def strip_fences(text: str) -> str:
    """The first fenced code block if there is one (the rest of the text after an unclosed fence), else the
    text. An answer that is only an opening fence, such as "```python", gives ""; a closing fence with no
    opener ("x = 1\n```") gives the text before it."""
    match = _FENCE.search(text)
    if match is None:
        return text
    if not match.group(1).strip() and text[: match.start()].strip():
        return text[: match.start()]
    return match.group(1)


def function_body(answer: str, entry_point: str, prompt: str = "") -> str:
    """The body the model wrote, indented by 4. Accepts a bare body or a whole function (its body is taken): the
    lines after ``prompt`` where the answer restates it first (what generation is trained to write: the prompt's
    signature and docstring, then the body), else the lines after the ``entry_point``'s def line and its docstring
    (a model that rewrote the signature or docstring)."""
    code = strip_fences(answer).rstrip()
    head = prompt.rstrip()
    if head.strip() and code.startswith(head) and code[len(head):].startswith("\n"):
        rest = code[len(head):].strip("\n")
        top = _TOP_LEVEL.search(rest)  # anything after the function (a usage example) is not its body
        return textwrap.indent(textwrap.dedent(rest[: top.start()] if top else rest), "    ").rstrip()
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
    """``code`` (a dedented body) without a leading docstring, in any quotes."""
    try:
        first = ast.parse(code).body[0]
    except (SyntaxError, IndexError):
        first = None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return "\n".join(code.splitlines()[first.end_lineno or first.lineno:]).lstrip("\n")
    stripped = code.lstrip()
    for quote in ('"""', "'''"):
        if stripped.startswith(quote):
            end = stripped.find(quote, 3)
            if end != -1:
                return stripped[end + 3:].lstrip("\n")
    return code


def unwrap(line: str, marks: str) -> str:
    """The line without pairs of the same mark around all of it: "`x = 1`" -> "x = 1", but "'a' or 'b'" stays."""
    line = line.strip()
    while len(line) > 1 and line[0] == line[-1] and line[0] in marks:
        line = line[1:-1].strip()
    return "" if line in marks else line


def first_line(answer: str) -> str:
    """The first content line, stripped: fences are taken off first, a line of only backticks (a stray fence)
    or blanks is skipped, and backticks around a whole line (`x = 1`) go too."""
    for line in strip_fences(answer).splitlines():
        if text := unwrap(line, "`"):
            return text
    return ""


def summary_line(answer: str) -> str:
    """The summary sentence: fences and docstring quotes are taken off first, so '\"\"\"\\nReturn the sum.\"\"\"'
    gives 'Return the sum.', then the first content line without surrounding quotes."""
    return unwrap(first_line(_DOC_QUOTES.sub("\n", strip_fences(answer))), "\"'")


def _looks_like_code(line: str) -> bool:
    if line.startswith(">>>"):
        return True
    for source in (line, line + "\n    pass"):  # "def f(x):" parses once given a body
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        return not all(isinstance(node, ast.Expr) for node in tree.body)
    return False


@dataclass(frozen=True)
class Review:
    """A parsed review answer. ``form``: "clean" (a no-issues verdict), "bug" (names a line or a fix), or one
    of the format failures "empty", "off_format", "unparseable" (see the module docstring)."""

    form: Literal["clean", "bug", "empty", "off_format", "unparseable"]
    line: int | None = None
    kind: str | None = None
    fix: str | None = None

    @property
    def clean(self) -> bool:
        return self.form == "clean"


def parse_review(answer: str) -> Review:
    if not answer.strip():
        return Review(form="empty")
    text = answer.strip()  # fields are searched anywhere, so a fenced review reads the same
    line = re.search(r"line\s*:?\s*`?(\d+)", text, re.I)
    if line is None and re.search(r"\bno (issues?|bugs?)\b", text, re.I):
        return Review(form="clean")
    kind = re.search(r"kind\s*:\s*`?([A-Za-z-]+)", text, re.I)
    fix_at = re.search(r"fix\s*:", text, re.I)
    fix = _fix_line(text[fix_at.end():]) if fix_at else ""
    if line is None and not fix:
        labelled = kind or fix_at or re.search(r"^\s*line\s*:", text, re.I | re.M)
        return Review(form="unparseable" if labelled else "off_format", kind=kind.group(1).lower() if kind else None)
    return Review(form="bug", line=int(line.group(1)) if line else None,
                  kind=kind.group(1).lower() if kind else None, fix=fix or None)


def _fix_line(rest: str) -> str:
    """The fix after "fix:": the rest of its line, or the first content line below it (in a fence or not),
    without a review's line-number prefix ("12 | ")."""
    rest = rest.lstrip(" \t")
    line = first_line(rest) if rest.startswith(("\n", "```")) else unwrap(rest.split("\n", 1)[0], "`")
    return _NUMBERED.sub("", line).strip()


# ------------------------------------------------------------------------------------------------- scorers
# How each answer is read, shared by the scorers and by the headline statistics below.
def _generated_bodies(items: list[TaskItem], answers: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(bodies as written into the function, dedented bodies, dedented references)."""
    bodies = [function_body(a, str(it.meta.get("entry_point", "")), it.input)
              for it, a in zip(items, answers, strict=True)]
    return bodies, [textwrap.dedent(b) for b in bodies], [textwrap.dedent(it.reference) for it in items]


def code_form(answer: str, prompt: str, body: str) -> Form:
    if not answer.strip():
        return "empty"
    if not body.strip():
        return "off_format"
    return "ok" if m.parses(prompt.rstrip("\n") + "\n" + body) else "unparseable"


def text_form(answer: str, line: str, code_is_off: bool = False) -> Form:
    if not answer.strip():
        return "empty"
    return "off_format" if not line or (code_is_off and _looks_like_code(line)) else "ok"


def format_failures(forms: list[str], categories: tuple[str, ...]) -> dict[str, int]:
    return {c: forms.count(c) for c in categories}


def _shares(flags: dict[str, list[bool]]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """{metric: share x100} and {metric: exact 95% interval x100} of 0/1 outcomes."""
    values = {k: 100 * m.mean(v) for k, v in flags.items()}
    cis = {k: [round(100 * b, 2) for b in clopper_pearson(sum(v), len(v))] for k, v in flags.items()}
    return values, cis


def _line_hit(item: TaskItem, review: Review) -> bool:
    return review.line == item.meta["line"]


def score_generation(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None) -> dict:
    """``parse_rate``: share of answers with a body that is valid Python in the function (an empty body used to
    count as parsing, since the prompt alone parses)."""
    bodies, preds, refs = _generated_bodies(items, answers)
    forms = [code_form(a, it.input, b) for it, a, b in zip(items, answers, bodies, strict=True)]
    shares, cis = _shares({"exact_match": [m.exact_match(p, r) for p, r in zip(preds, refs, strict=True)],
                           "parse_rate": [f == "ok" for f in forms]})
    return {"chrf_pp": m.chrf_pp(preds, refs), "bleu4": m.bleu4(preds, refs), **shares, "ci95": cis,
            "format_failures": format_failures(forms, CODE_FAILURES)}


def _summaries(answers: list[str]) -> tuple[list[str], list[Form]]:
    """(summary lines, forms); an empty or off-format answer's summary is "" (it scores 0, see below)."""
    lines = [summary_line(a) for a in answers]
    forms = [text_form(a, s, code_is_off=True) for a, s in zip(answers, lines, strict=True)]
    return [s if f == "ok" else "" for s, f in zip(lines, forms, strict=True)], forms


def _smoothed_bleu(summary: str, reference: str) -> float:
    """CodeXGLUE's smoothed BLEU-4, x100, but 0 for no summary (its smoothing gives "" exp(-2) = 13.5)."""
    return 100 * m.smoothed_bleu(summary, reference) if summary else 0.0


def score_summarization(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None) -> dict:
    """An empty or off-format answer (a code line, quotes only) scores 0 on every metric."""
    preds, forms = _summaries(answers)
    refs = [it.reference for it in items]
    return {
        "smoothed_bleu4": m.mean([_smoothed_bleu(p, r) for p, r in zip(preds, refs, strict=True)]),
        "chrf_pp": m.chrf_pp(preds, refs),
        "rouge_l": 100 * m.mean([m.rouge_l(p, r) if p else 0.0 for p, r in zip(preds, refs, strict=True)]),
        "format_failures": format_failures(forms, TEXT_FAILURES),
    }


def score_completion(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None) -> dict:
    preds = [first_line(a) for a in answers]
    refs = [it.reference for it in items]
    shares, cis = _shares({"exact_match": [m.exact_match(p, r) for p, r in zip(preds, refs, strict=True)]})
    return {**shares, "edit_similarity": m.mean([m.edit_similarity(p, r) for p, r in zip(preds, refs, strict=True)]),
            "ci95": cis, "format_failures": format_failures([text_form(a, p) for a, p in zip(answers, preds,
                                                                                              strict=True)],
                                                             TEXT_FAILURES)}


def score_review(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None) -> dict:
    """Detection is right only for a readable verdict that matches ("no issues" on a clean item, a named line or
    fix on a buggy one): an empty or off-format answer is wrong on both. ``false_positive_rate``: clean items
    answered with a bug."""
    reviews = [parse_review(a) for a in answers]
    buggy = [(it, r) for it, r in zip(items, reviews, strict=True) if not it.meta["clean"]]
    clean = [r for it, r in zip(items, reviews, strict=True) if it.meta["clean"]]
    shares, cis = _shares({
        "line_accuracy": [_line_hit(it, r) for it, r in buggy],
        "kind_accuracy": [r.kind == it.meta["kind"] for it, r in buggy],
        "fix_exact_match": [r.fix is not None and m.exact_match(r.fix, str(it.meta["fixed_line"])) for it, r in buggy],
        "false_positive_rate": [r.form == "bug" for r in clean],
        "detection_accuracy": [r.form == ("clean" if it.meta["clean"] else "bug")
                               for it, r in zip(items, reviews, strict=True)],
    })
    return {**shares, "n_buggy": len(buggy), "n_clean": len(clean), "ci95": cis,
            "format_failures": format_failures([r.form for r in reviews], CODE_FAILURES)}


def assemble(prompt: str, answer: str, entry_point: str) -> str:
    """The function as HumanEval runs it: the problem's prompt (imports, signature, docstring) and the body the
    answer gives, then what a whole-program answer defines beside its function (`helpers`: its imports, helper
    functions and classes; names are looked up when the tests call, so after the function is in time).
    `runtime eval`, the bench and the agent assemble it alike."""
    program = f"{prompt}{function_body(answer, entry_point, prompt)}"
    extra = helpers(answer, entry_point, prompt)
    return f"{program}\n\n\n{extra}\n" if extra else program


def helpers(answer: str, entry_point: str, prompt: str = "") -> str:
    """What a whole-program answer defines beside ``entry_point``, as written: its imports (``__future__`` ones
    aside: they must come first), functions and classes (decorators included) and constants (a plain name bound to
    a value that calls nothing), less the names ``prompt`` defines (HumanEval's tests call the prompt's own
    helpers, such as ``encode_cyclic``; an answer must not replace them). "" for a bare body or code that does not
    parse. Without them an answer that opens with ``from math import gcd`` failed with a NameError (13 of
    Qwen2.5-Coder-0.5B's 164 HumanEval answers, where evalplus-style harnesses keep them). Statements that run
    something (a usage print, ``x = f(3)``) are left out."""
    code = strip_fences(answer)
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return ""
    try:
        given = {n.name for n in ast.parse(prompt).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                          ast.ClassDef))}
    except SyntaxError:
        given = set()
    lines = code.splitlines()
    kept = [n for n in tree.body if _helper(n, {entry_point, *given})]
    return "\n\n".join("\n".join(lines[min([n.lineno, *(d.lineno for d in getattr(n, "decorator_list", []))]) - 1:
                                           n.end_lineno]) for n in kept)


def _helper(node: ast.stmt, taken: set[str]) -> bool:
    if isinstance(node, ast.Import):
        return True
    if isinstance(node, ast.ImportFrom):
        return node.module != "__future__"
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name not in taken
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return all(isinstance(t, ast.Name) and t.id not in taken for t in targets) and not any(
            isinstance(n, ast.Call) for n in ast.walk(node.value))
    return False


def check_program(code: str, tests: str, entry_point: str) -> str:
    return f"{code}\n\n{tests}\n\ncheck({entry_point})\n"


def humaneval_program(item: TaskItem, answer: str) -> str:
    entry_point = str(item.meta["entry_point"])
    return check_program(assemble(item.input, answer, entry_point), item.meta["test"], entry_point)


_RUNS: dict[str, RunResult] = {}  # program -> its result: the bench reads one option's answers several times
_MAX_RUNS = 20_000  # (scores, intervals, gains over base, the recommendation), so each program runs once


def run_programs(programs: list[str], sandbox: Sandbox | None = None) -> list[RunResult]:
    """Each program's result, in order; a program run before in this process is not run again (its result,
    timeouts included, stays the same for every reader). A sandbox is built only when something must run; a
    stand-in for one (tests) answers for itself and is not remembered."""
    if sandbox is not None and type(sandbox) is not Sandbox:
        return sandbox.run_many(programs)
    missing = [p for p in dict.fromkeys(programs) if p not in _RUNS]
    if missing:
        if len(_RUNS) + len(missing) > _MAX_RUNS:
            _RUNS.clear()
        _RUNS.update(zip(missing, (sandbox or Sandbox()).run_many(missing), strict=True))
    return [_RUNS[p] for p in programs]


def humaneval_results(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None) -> list[RunResult]:
    return run_programs([humaneval_program(it, a) for it, a in zip(items, answers, strict=True)], sandbox)


def score_humaneval(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None) -> dict:
    """Greedy pass@1: one sample per problem, so pass@1 is the share of problems whose tests pass."""
    results = humaneval_results(items, answers, sandbox)
    passed = [r.passed for r in results]
    forms = [code_form(a, it.input, function_body(a, str(it.meta["entry_point"]), it.input))
             for it, a in zip(items, answers, strict=True)]
    _, cis = _shares({"pass_at_1": passed})
    return {
        "pass_at_1": 100 * m.mean([m.pass_at_k(1, int(p), 1) for p in passed]),
        "passed": sum(passed),
        "timeouts": sum(r.status == "timeout" for r in results),
        "sandbox": (sandbox or Sandbox()).isolation if results else None,
        "ci95": cis,
        "format_failures": format_failures(forms, CODE_FAILURES),
    }


# --------------------------------------------------------------------------------------- headline statistics
# Each task's headline metric as a function of item indices (for intervals and paired tests). Per-item metrics
# average; generation's chrF++ is a corpus statistic, recomputed on each resample. The 0/1 headlines (review's line
# accuracy, HumanEval pass@1) are ``Proportion``s, so they get exact intervals; review's line accuracy counts buggy
# items only, so a resample's clean items contribute nothing.
def generation_statistic(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None):
    _, preds, refs = _generated_bodies(items, answers)
    return m.chrf_pp_on_subsets(preds, refs)


def summarization_statistic(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None):
    summaries, _ = _summaries(answers)
    return mean_of([_smoothed_bleu(p, it.reference) for it, p in zip(items, summaries, strict=True)])


def completion_statistic(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None):
    return mean_of([m.edit_similarity(first_line(a), it.reference) for it, a in zip(items, answers, strict=True)])


def review_statistic(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None):
    return Proportion(tuple(None if it.meta["clean"] else _line_hit(it, parse_review(a))
                            for it, a in zip(items, answers, strict=True)))


def humaneval_statistic(items: list[TaskItem], answers: list[str], sandbox: Sandbox | None = None):
    return Proportion(tuple(r.passed for r in humaneval_results(items, answers, sandbox)))


__all__ = ["NO_ISSUES", "assemble", "first_line", "function_body", "helpers", "humaneval_program",
           "parse_review", "summary_line", "check_program"]
