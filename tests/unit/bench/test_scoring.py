import pytest

from runtime.bench.scoring import (
    first_line,
    function_body,
    humaneval_program,
    parse_review,
    score_completion,
    score_generation,
    score_review,
    score_summarization,
)
from training.tasks import TaskItem


def _item(task: str, inp: str, ref: str, **meta) -> TaskItem:
    return TaskItem(f"{task}/x", task, "test", "m", inp, ref, meta)


def test_function_body_accepts_a_bare_body_a_fenced_body_or_a_whole_function():
    assert function_body("    return x + 1\n", "f") == "    return x + 1"
    assert function_body("return x + 1", "f") == "    return x + 1"  # unindented: indented for the model
    fenced = "Here you go:\n```python\ndef f(x):\n    \"\"\"Doc.\"\"\"\n    return x + 1\n\nprint(f(2))\n```\nDone."
    assert function_body(fenced, "f") == "    return x + 1"


def test_function_body_stops_at_the_first_top_level_line():
    assert function_body("    y = 2\n    return y\nprint('hi')\n", "f") == "    y = 2\n    return y"


def test_parse_review_structured_and_clean_answers():
    r = parse_review("line: 7\nkind: comparison\nfix: `if x < 0:`")
    assert (r.clean, r.line, r.kind, r.fix) == (False, 7, "comparison", "if x < 0:")
    assert parse_review("No issues found.").clean
    r = parse_review("Line 3 has a bug. fix:  12 | return a")
    assert (r.clean, r.line, r.kind, r.fix) == (False, 3, None, "return a")


def test_score_review_by_hand():
    items = [_item("review", "", "", clean=False, line=3, kind="comparison", fixed_line="if a < b:"),
             _item("review", "", "", clean=False, line=5, kind="variable", fixed_line="return x"),
             _item("review", "", "", clean=True),
             _item("review", "", "", clean=True)]
    answers = ["line: 3\nkind: comparison\nfix: if a < b:", "line: 4\nkind: variable\nfix: return y",
               "no issues", "line: 1\nkind: boolean\nfix: pass"]
    s = score_review(items, answers)
    assert s["line_accuracy"] == 50.0 and s["kind_accuracy"] == 100.0 and s["fix_exact_match"] == 50.0
    assert s["false_positive_rate"] == 50.0 and s["detection_accuracy"] == 75.0
    assert (s["n_buggy"], s["n_clean"]) == (2, 2)


def test_score_completion_by_hand():
    items = [_item("completion", "", "return a + b"), _item("completion", "", "x = 1")]
    s = score_completion(items, ["return a + b\nmore", "```\ny = 1\n```"])
    assert s["exact_match"] == 50.0
    assert s["edit_similarity"] == (100 + 200 * 4 / 10) / 2  # LCS(" = 1" vs "x = 1") = 4


def test_score_generation_and_summarization_perfect_and_wrong():
    gen = [_item("generation", "def f(x):\n    \"\"\"Add one.\"\"\"", "    return x + 1", entry_point="f")]
    perfect = score_generation(gen, ["    return x + 1"])
    assert perfect == pytest.approx({"chrf_pp": 100.0, "bleu4": 100.0, "exact_match": 100.0, "parse_rate": 100.0})
    bad = score_generation(gen, ["    return (x +"])
    assert bad["parse_rate"] == 0.0 and bad["exact_match"] == 0.0
    summ = [_item("summarization", "", "Return the sum of two numbers.")]
    perfect = score_summarization(summ, ['"Return the sum of two numbers."\nextra'])
    assert perfect["smoothed_bleu4"] == 100.0 and perfect["rouge_l"] == 100.0


def test_first_line_skips_blank_lines_and_fences():
    assert first_line("\n\n```python\n  x = 1\n```") == "x = 1"


def test_humaneval_program_assembles_prompt_body_and_check():
    item = _item("humaneval", "def add(a, b):\n    \"\"\"Add.\"\"\"\n", "    return a + b\n",
                 test="def check(c):\n    assert c(1, 2) == 3\n", entry_point="add")
    program = humaneval_program(item, "```python\ndef add(a, b):\n    return a + b\n```")
    assert program.startswith(item.input + "    return a + b")
    assert program.rstrip().endswith("check(add)")
