"""Append-only JSONL store of per-(system, example) scores, so a profile run resumes.

The first line is a header with the run's fingerprint (config + models); a file whose
header differs belongs to another run and is moved aside, never mixed in. A torn last
line (the process killed mid-write) is dropped on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

# Bump when what a record's metrics hold changes: older work files then start afresh.
RECORD_FORMAT = 2


class Record(NamedTuple):
    system: str
    example: int
    metrics: dict[str, float]
    answer: str


class ResultStore:
    def __init__(self, path: str | Path, run_header: dict[str, Any]):
        self.path = Path(path)
        self.header = {"run": run_header, "format": RECORD_FORMAT}
        self._records: dict[tuple[str, int], Record] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return self._start()
        lines = self.path.read_text().splitlines()
        if not lines or _parse(lines[0]) != self.header:
            self.path.replace(self.path.with_suffix(".stale.jsonl"))
            return self._start()
        for line in lines[1:]:
            data = _parse(line)
            if data is not None:
                rec = Record(data["system"], data["example"], data["metrics"], data["answer"])
                self._records[(rec.system, rec.example)] = rec
        self._rewrite()  # drops a torn tail so later appends start on a fresh line

    def _start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        lines = [json.dumps(self.header)] + [json.dumps(r._asdict()) for r in self._records.values()]
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.path)

    @classmethod
    def for_run(cls, work_dir: str | Path, stem: str, run_header: dict[str, Any]) -> "ResultStore":
        """The store of this exact run: ``<work_dir>/<stem>-<hash of the header>.jsonl``."""
        run_id = hashlib.sha256(json.dumps(run_header, sort_keys=True).encode()).hexdigest()[:12]
        return cls(Path(work_dir) / f"{stem}-{run_id}.jsonl", run_header)

    def add(self, record: Record) -> None:
        self._records[(record.system, record.example)] = record
        with self.path.open("a") as f:
            f.write(json.dumps(record._asdict()) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add_many(self, records: Iterable[Record]) -> None:
        """Several records with one write and one fsync (the batched scorer adds hundreds at once)."""
        records = list(records)
        for record in records:
            self._records[(record.system, record.example)] = record
        with self.path.open("a") as f:
            f.write("".join(json.dumps(r._asdict()) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def get(self, system: str, example: int) -> Record | None:
        return self._records.get((system, example))

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def records(self, system: str) -> Iterator[Record]:
        return (r for (s, _), r in sorted(self._records.items()) if s == system)

    def mean(self, system: str, metric: str) -> float:
        values = [r.metrics[metric] for r in self.records(system)]
        if not values:
            raise KeyError(f"no scores for system {system!r}")
        return sum(values) / len(values)


def _parse(line: str) -> dict[str, Any] | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None
