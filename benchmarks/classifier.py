"""Accuracy and cost of the `auto` task classifier on the held-out requests in benchmarks/routing/heldout.jsonl.

    .venv/bin/python benchmarks/classifier.py

The held-out set was written as an agent or a person would phrase requests, separately from the classifier's
patterns; a confusion count per task and the mean microseconds per request are printed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from runtime.classifier import classify

HELDOUT = Path(__file__).parent / "routing" / "heldout.jsonl"


def main() -> None:
    items = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]
    start = time.perf_counter()
    for _ in range(20):
        predictions = [classify(it["text"]) for it in items]
    per_request_us = (time.perf_counter() - start) / (20 * len(items)) * 1e6
    confusion = Counter((it["task"], p) for it, p in zip(items, predictions, strict=True))
    correct = sum(n for (t, p), n in confusion.items() if t == p)
    for (t, p), n in sorted(confusion.items()):
        if t != p:
            print(f"  {t} -> {p}: {n}")
    for it, p in zip(items, predictions, strict=True):
        if it["task"] != p:
            print(f"  MISS {it['task']} -> {p}: {it['text'][:70]!r}")
    print(json.dumps({"items": len(items), "accuracy": round(correct / len(items), 4),
                      "us_per_request": round(per_request_us, 1)}))


if __name__ == "__main__":
    main()
