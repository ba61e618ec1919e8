"""Append-only progress of a long bench phase, so a run killed midway keeps what it finished.

Scoring an option on a 2-core CPU takes most of an hour (164 HumanEval problems and 192 task items with answers up
to 600 tokens), and so does the coding agent's column: a phase that only wrote its result at the end lost all of it
to a Ctrl-C, a session limit or a crash. A ``Journal`` is a JSONL file beside the phase's result, one line per
finished piece (a served answer, an agent problem), each tagged with the phase's key; the next run reads the lines
of its own key and does only the rest. The phase deletes it once its result is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class Journal:
    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def done(self) -> list[dict]:
        """The pieces finished under this key, in the order they finished (lines of another key, and a last line
        torn by a kill, are skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("key") == self.key and isinstance(entry.get("record"), dict):
                out.append(entry["record"])
        return out

    def add(self, record: dict) -> None:
        """Append one finished piece, flushed to disk before this returns."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.is_file() and self.path.stat().st_size and not self._ends_a_line()
        with self.path.open("a") as f:  # a line torn by a kill is ended first, so this one stays whole
            f.write(("\n" if torn else "") + json.dumps({"key": self.key, "record": record}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _ends_a_line(self) -> bool:
        with self.path.open("rb") as f:  # its last byte only: the journal grows by an answer at a time
            f.seek(-1, 2)
            return f.read(1) == b"\n"

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
