"""`auto` routing: pick the task of a request from its text, with weighted patterns over the instruction.

Only the instruction part is read (the text before the first code block or indented code line), so identifiers
inside code ("review_count", "summary =") do not vote. Cheap enough for every request (microseconds). When no
pattern fires, a request that is only code goes to completion, anything else to generation. Accuracy and cost on
the held-out set: ``benchmarks/classifier.py``.
"""

from __future__ import annotations

import re

# (pattern, weight) per task; a pattern scores once. Higher weights are unambiguous phrases.
_RULES: dict[str, list[tuple[str, float]]] = {
    "review": [
        (r"\breview\b", 3), (r"\bbugs?\b|\bbuggy\b", 3), (r"\bdefects?\b|\bflaws?\b", 3),
        (r"\bwhat'?s wrong\b|\bwhat is wrong\b|\bsomething is off\b", 3), (r"\bmistakes?\b", 2),
        (r"\b(find|spot|catch|point out|report)\b.*\b(problem|issue|error|line|mistake|wrong|broken)", 3),
        (r"\bis (this|it) correct\b|\bcorrectness\b|\bincorrect\b|\bwrong (answer|result)s?\b", 3),
        (r"\bissues?\b|\bproblems?\b", 1.5), (r"\bdebug\b|\bbroken\b|\bfail(s|ing)?\b|\bcrash(es)?\b", 2),
        (r"\baudit\b|\bcritique\b|\binspect\b|\bdouble-check\b|\bsanity check\b|\bcheck (this|it|my)\b", 2.5),
        (r"\bfix\b", 1), (r"\blogic errors?\b|\boff-by-one\b", 3), (r"\bvalidate this\b|\blook over\b", 2),
    ],
    "summarization": [
        (r"\bsummar(y|ize|ise|ization)\b", 4), (r"\bexplain\b|\bexplanation\b", 3), (r"\bdescri(be|ption)\b", 3),
        (r"\bdocstring\b|\bdocument(ation)?\b|\bfor the docs\b", 3), (r"\bwhat (does|is) (this|it|the)\b", 2.5),
        (r"\bpurpose\b|\bintent\b", 3), (r"\btl;?dr\b", 4), (r"\bin plain english\b", 3), (r"\bcaption\b", 3),
        (r"\bone[- ](sentence|line)\b|\bin a sentence\b|\bbrief(ly)?\b|\bconcise\b|\bshort\b", 1.5),
        (r"\boutline\b|\bchangelog\b|\bcomment that\b", 2), (r"\bwhat .* (doing|do)\?", 2),
    ],
    "completion": [
        (r"\bnext (line|statement)\b", 5), (r"\b(what|line that) (comes|should) (next|after|follow)", 5),
        (r"\bautocomplete\b|\bline completion\b", 5), (r"\bcontinu(e|ation)\b|\bcarry on\b|\bresume\b", 3),
        (r"\bcomplete (the|this) (current |partial |next )?line\b", 5), (r"\bfinish this line\b", 5),
        (r"\bfollowing line\b|\bsubsequent line\b|\bline .* follow", 4), (r"\bwhat comes (next|after)\b", 5),
        (r"\bpredict\b", 2.5), (r"\brest of this line\b|\bfrom the cursor\b|\bby one line\b|\bone more line\b", 4),
        (r"\bcomplete this partial\b", 4),
    ],
    "generation": [
        (r"\bwrite\b|\bimplement(ation)?\b|\bcode (up|a|that)\b|\bcreate\b|\bbuild\b|\bmake a\b", 2),
        (r"\bfunction that\b|\bhelper\b|\bscript\b|\bdecorator\b|\bclass \w+ with\b", 1.5),
        (r"\bgenerate (a|python|code)\b|\bproduce (an? |python )?(implementation|code)\b", 3),
        (r"\bbody\b|\bfill in the implementation\b|\bstub\b", 4), (r"\bi need a\b|\bneed code\b|\bgive me a\b", 1.5),
        (r"\bauthor\b", 2), (r"\bjust the code\b|\bcode only\b", 2), (r"^task:", 1),
    ],
}
_COMPILED = {task: [(re.compile(p, re.I | re.M), w) for p, w in rules] for task, rules in _RULES.items()}
_PRIORITY = ("completion", "review", "summarization", "generation")  # tie-break: most specific first
_CODE_START = re.compile(r"```|^(\s{4}|\t)|^(def|class|async def|import|from|for|while|if|with|try)\b", re.M)


def instruction(text: str) -> str:
    """The text before the code: that is where the request says what it wants."""
    match = _CODE_START.search(text)
    head = text[: match.start()] if match else text
    return head if head.strip() else ""


def scores(text: str) -> dict[str, float]:
    head = instruction(text)
    return {task: sum(w for pattern, w in rules if pattern.search(head)) for task, rules in _COMPILED.items()}


def classify(text: str) -> str:
    """The most likely task for a request text."""
    result = scores(text)
    best = max(result.values())
    if best == 0:
        return "completion" if text.strip() and not instruction(text).strip() else "generation"
    return next(t for t in _PRIORITY if result[t] == best)
