import pytest

from runtime.tasks import TaskItem
from runtime.tasks.scoring import (
    assemble,
    first_line,
    function_body,
    helpers,
    humaneval_program,
    parse_review,
    score_completion,
    score_generation,
    score_humaneval,
    score_review,
    score_summarization,
    summary_line,
)


def _item(task: str, inp: str, ref: str, **meta) -> TaskItem:
    return TaskItem(f"{task}/x", task, "test", "m", inp, ref, meta)


def test_function_body_accepts_a_bare_body_a_fenced_body_or_a_whole_function():
    assert function_body("    return x + 1\n", "f") == "    return x + 1"
    assert function_body("return x + 1", "f") == "    return x + 1"  # unindented: indented for the model
    fenced = "Here you go:\n```python\ndef f(x):\n    \"\"\"Doc.\"\"\"\n    return x + 1\n\nprint(f(2))\n```\nDone."
    assert function_body(fenced, "f") == "    return x + 1"


def test_function_body_of_an_answer_that_restates_the_prompt_is_what_follows_it():
    prompt = "def f(x):\n    'One line, in single quotes.'\n    # a comment of the prompt's\n"
    answer = f"```python\n{prompt}    return x + 1\n\nprint(f(2))\n```"
    assert function_body(answer, "f", prompt) == "    return x + 1"  # not the comment, not the usage line
    assert function_body(answer, "f") == "    # a comment of the prompt's\n    return x + 1"  # without the prompt
    rewritten = "def f(y):\n    'Another docstring.'\n    return y\n"  # the prompt not restated: its def is read
    assert function_body(rewritten, "f", prompt) == "    return y"


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
    headline = {k: perfect[k] for k in ("chrf_pp", "bleu4", "exact_match", "parse_rate")}
    assert headline == pytest.approx({"chrf_pp": 100.0, "bleu4": 100.0, "exact_match": 100.0, "parse_rate": 100.0})
    assert perfect["format_failures"] == {"empty": 0, "off_format": 0, "unparseable": 0}
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


def test_a_whole_program_answer_keeps_its_imports_and_helpers_but_not_its_usage_lines():
    prompt = "def lcm(a, b):\n    \"\"\"Least common multiple.\"\"\"\n"
    answer = ("```python\nfrom math import gcd\nimport functools\n\n\n@functools.cache\ndef _twice(x):\n"
              "    return 2 * x\n\n\n" + prompt + "    return a * b // gcd(a, b)\n\n\nprint(lcm(4, 6))\n```")
    program = assemble(prompt, answer, "lcm")
    namespace: dict = {}
    exec(program, namespace)  # noqa: S102 - the test's own code
    assert namespace["lcm"](4, 6) == 12 and namespace["_twice"](2) == 4
    assert "print(" not in program and program.startswith(prompt + "    return a * b // gcd(a, b)")
    assert helpers("    return x + 1", "f") == "" and helpers("def f(:", "f") == ""  # a bare body, broken code


def test_helpers_never_replace_the_prompts_own_functions_and_keep_constants_not_calls():
    prompt = "def encode(s):\n    return s[::-1]\n\n\ndef decode(s):\n    \"\"\"Undo encode.\"\"\"\n"
    answer = ("from __future__ import annotations\nVOWELS = 'aeiou'\nFIRST: str = VOWELS[0]\nseen = decode('x')\n\n"
              "def encode(s):\n    return s  # a wrong twin of the prompt's helper\n\n\n"
              "def decode(s):\n    return encode(s)\n")
    assert helpers(answer, "decode", prompt) == "VOWELS = 'aeiou'\n\nFIRST: str = VOWELS[0]"
    namespace: dict = {}
    exec(assemble(prompt, answer, "decode"), namespace)  # noqa: S102 - the test's own code
    assert namespace["decode"]("abc") == "cba"  # the prompt's encode, not the answer's: a wrong answer fails


# ------------------------------------------------------------------------ empty and off-format answers
def _review_items() -> list[TaskItem]:
    return [_item("review", "", "", clean=False, line=3, kind="comparison", fixed_line="if a < b:"),
            _item("review", "", "", clean=False, line=5, kind="variable", fixed_line="return x"),
            _item("review", "", "", clean=True)]


def test_an_empty_review_is_wrong_on_buggy_and_clean_items_and_counted():
    s = score_review(_review_items(), ["", "  \n", ""])
    assert s["detection_accuracy"] == 0.0  # it used to count as "bug found" on the two buggy items
    assert s["false_positive_rate"] == 0.0 and s["line_accuracy"] == 0.0
    assert s["format_failures"] == {"empty": 3, "off_format": 0, "unparseable": 0}


def test_review_forms_prose_is_off_format_and_labels_without_values_are_unparseable():
    assert parse_review("The function looks fine to me.").form == "off_format"
    assert parse_review("```\n```").form == "off_format"
    assert parse_review("line: the third one\nkind: comparison").form == "unparseable"
    assert parse_review("fix: `return a`").form == "bug"  # a fix alone still names the bug
    s = score_review(_review_items(), ["It is fine.", "line: ?", "no issues"])
    assert s["format_failures"] == {"empty": 0, "off_format": 1, "unparseable": 1}
    assert s["detection_accuracy"] == pytest.approx(100 / 3)  # only the readable "no issues" on the clean item


def test_a_fenced_review_is_parsed_inside_the_fence():
    r = parse_review("```\nline: 3\nkind: comparison\nfix: if a < b:\n```")
    assert (r.form, r.line, r.kind, r.fix) == ("bug", 3, "comparison", "if a < b:")
    r = parse_review("line: 3\nkind: comparison\nfix:\n```python\nif a < b:\n```")
    assert (r.form, r.line, r.kind, r.fix) == ("bug", 3, "comparison", "if a < b:")


def test_review_share_metrics_carry_exact_intervals():
    s = score_review(_review_items(), ["", "", "no issues"])
    assert s["ci95"]["line_accuracy"] == [0.0, pytest.approx(84.19, abs=0.01)]  # 0 of 2: 1 - 0.025 ** (1/2)


def test_fenced_or_quoted_answers_give_their_first_content_line():
    assert first_line("```python\n    x = 1\n```") == "x = 1"
    assert first_line("```python") == ""  # what a stop on "\n" leaves of a fenced answer
    assert first_line("`return a`") == "return a"
    assert first_line("x = 1\n```") == "x = 1"  # a closing fence with no opener
    assert function_body("    return x + 1\n```", "f") == "    return x + 1"
    assert summary_line('"""\nReturn the sum."""') == "Return the sum."
    assert summary_line("r'''Return the sum.'''") == "Return the sum."
    assert summary_line('```\n"""Return the sum."""\n```') == "Return the sum."
    assert summary_line('"""') == ""


def test_summarization_counts_empty_quote_only_and_code_answers():
    items = [_item("summarization", "", "Return the sum.") for _ in range(4)]
    s = score_summarization(items, ["", '"""', "return a + b", '"""\nReturn the sum."""'])
    assert s["format_failures"] == {"empty": 1, "off_format": 2}
    assert s["rouge_l"] == pytest.approx(25.0)  # only the quoted summary scores, and fully
    assert s["smoothed_bleu4"] == pytest.approx(25.0)  # "" would get exp(-2) from CodeXGLUE's smoothing
    signature = score_summarization(items[:3], ["execle(file, *args, env)", "def f(x):", ">>> f(1)"])
    assert signature["format_failures"]["off_format"] == 2  # a call signature is a summary; a def is not


def test_completion_counts_empty_and_fence_only_answers():
    items = [_item("completion", "", "x = 1") for _ in range(3)]
    s = score_completion(items, ["", "```python", "```python\nx = 1\n```"])
    assert s["format_failures"] == {"empty": 1, "off_format": 1}
    assert s["exact_match"] == pytest.approx(100 / 3)
    assert s["ci95"]["exact_match"][0] > 0 and s["ci95"]["exact_match"][1] < 100


def test_generation_empty_body_no_longer_counts_as_parsing():
    gen = [_item("generation", "def f(x):\n    \"\"\"Add one.\"\"\"", "    return x + 1", entry_point="f")]
    for answer, failure in (("", "empty"), ("```python\n```", "off_format"), ("    return (x +", "unparseable")):
        s = score_generation(gen, [answer])
        assert s["parse_rate"] == 0.0, answer
        assert s["format_failures"][failure] == 1 and sum(s["format_failures"].values()) == 1, answer


class _NoSandbox:
    isolation = {"mode": "fake"}

    def run_many(self, programs):
        from types import SimpleNamespace
        return [SimpleNamespace(passed=False, status="failed") for _ in programs]


def test_humaneval_counts_format_failures_and_gives_an_exact_interval_for_zero_passes():
    items = [_item("humaneval", "def add(a, b):\n    \"\"\"Add.\"\"\"\n", "    return a + b\n",
                   test="def check(c):\n    assert c(1, 2) == 3\n", entry_point="add") for _ in range(29)]
    answers = [""] * 27 + ["```python", "    return (a +"]
    s = score_humaneval(items, answers, _NoSandbox())
    assert s["pass_at_1"] == 0.0 and s["format_failures"] == {"empty": 27, "off_format": 1, "unparseable": 1}
    assert s["ci95"]["pass_at_1"] == [0.0, pytest.approx(11.94, abs=0.01)]


def test_every_test_reference_given_as_the_answer_is_in_format_and_scores_full_marks(store_home):
    from runtime.tasks import build_dataset, load_items

    build_dataset()
    for task in ("generation", "summarization", "completion", "review"):
        items = load_items(task, "test", None)  # the whole split: 4 of 406 summaries open or close with a quote
        scores = {"generation": score_generation, "summarization": score_summarization,
                  "completion": score_completion, "review": score_review}[task](items, [it.reference for it in items])
        assert sum(scores["format_failures"].values()) == 0, (task, scores["format_failures"])
        headline = {"generation": "exact_match", "summarization": "rouge_l", "completion": "exact_match",
                    "review": "detection_accuracy"}[task]
        assert scores[headline] == pytest.approx(100.0), task  # quotes or backticks inside a summary survive


def test_the_whole_function_restated_in_a_fence_scores_full_marks(store_home):
    """An instruct coder answers with the whole function (signature and docstring restated, then the body) in a
    ```python block: read back, its body must be the reference exactly (not the prompt's comments or a one-line
    docstring in single quotes, which the def-line reading used to keep)."""
    from runtime.tasks import build_dataset, load_items

    build_dataset()
    items = load_items("generation", "test", None)
    scores = score_generation(items, [f"```python\n{it.input}\n{it.reference}\n```" for it in items])
    assert sum(scores["format_failures"].values()) == 0 and scores["exact_match"] == pytest.approx(100.0)


def test_a_program_runs_once_and_a_later_reader_needs_no_sandbox(monkeypatch):
    import runtime.tasks.scoring as scoring
    from runtime.tasks.sandbox import Sandbox

    monkeypatch.setattr(scoring, "_RUNS", {})
    ran: list[str] = []

    class Counting(Sandbox):
        def __init__(self) -> None:  # no namespace probe: nothing here runs for real
            pass

        def run_many(self, programs):
            from types import SimpleNamespace
            ran.extend(programs)
            return [SimpleNamespace(passed="return a + b" in p, status="ok") for p in programs]

    monkeypatch.setattr(scoring, "Sandbox", Counting)
    items = [_item("humaneval", "def add(a, b):\n    \"\"\"Add.\"\"\"\n", "    return a + b\n",
                   test="def check(c):\n    assert c(1, 2) == 3\n", entry_point="add")] * 2
    answers = ["    return a + b", "    return a - b"]
    first = scoring.humaneval_results(items, answers, Counting())
    assert [r.passed for r in first] == [True, False] and len(ran) == 2

    def refuse():
        raise AssertionError("no sandbox is built when every program ran before")

    monkeypatch.setattr(scoring, "Sandbox", refuse)
    stat = scoring.humaneval_statistic(items, answers)
    assert stat.counts() == (1, 2) and len(ran) == 2
