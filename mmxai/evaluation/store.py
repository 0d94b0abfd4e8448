"""The results store: an append-only SQLite file of metric parts and failures.

One row per (model, dataset, method, options_hash, sample_id, metric), enforced by a UNIQUE
constraint, so a resumed or repeated run can never count a sample twice. A row is either

- ``ok``: the metric's parts for that sample (JSON ``{name: [values]}``);
- ``failed``: the cause, one line naming the sample (a corrupt image, a method that raised);
- ``skipped``: the metric does not apply (a mask metric on a sample without a mask); such a
  sample is counted neither as evaluated nor as failed.

All rows of one sample are written in one transaction (WAL journal), so a killed run leaves
whole samples or nothing. Nothing is updated or deleted: rerunning skips what is stored.
The ``provenance`` table holds one JSON record per (model, dataset, method, options_hash).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmxai.errors import MMXAIError

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    method TEXT NOT NULL,
    options_hash TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'skipped')),
    parts TEXT,
    error TEXT,
    created REAL NOT NULL,
    UNIQUE (model, dataset, method, options_hash, sample_id, metric)
);
CREATE TABLE IF NOT EXISTS provenance (
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    method TEXT NOT NULL,
    options_hash TEXT NOT NULL,
    record TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (model, dataset, method, options_hash)
);
"""


@dataclass(frozen=True)
class RunKey:
    """What one row of the leaderboard is computed from (before the metric)."""

    model: str
    dataset: str
    method: str
    options_hash: str


@dataclass(frozen=True)
class Row:
    key: RunKey
    sample_id: str
    metric: str
    status: str
    parts: dict[str, list[float]] | None = None
    error: str | None = None

    @classmethod
    def ok(cls, key: RunKey, sample_id: str, metric: str,
           parts: dict[str, list[float]]) -> Row:
        return cls(key, sample_id, metric, "ok", parts=parts)

    @classmethod
    def failed(cls, key: RunKey, sample_id: str, metric: str, error: str) -> Row:
        return cls(key, sample_id, metric, "failed", error=error)

    @classmethod
    def skipped(cls, key: RunKey, sample_id: str, metric: str, reason: str) -> Row:
        return cls(key, sample_id, metric, "skipped", error=reason)


class ResultStore:
    """One SQLite file. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:
                self._db.executescript(_SCHEMA)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                                 (SCHEMA_VERSION,))
            version = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise MMXAIError(f"results store {str(self.path)!r}: not an mmxai store ({exc})"
                             ) from exc
        if version[0] != SCHEMA_VERSION:
            raise MMXAIError(f"results store {str(self.path)!r}: schema {version[0]}, "
                             f"this mmxai reads schema {SCHEMA_VERSION}")

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # -- writing -------------------------------------------------------------------------
    def write(self, rows: Iterable[Row]) -> int:
        """Append rows in one transaction; rows already stored are left as they are.

        Returns how many rows were new.
        """
        now = time.time()
        values = [
            (r.key.model, r.key.dataset, r.key.method, r.key.options_hash, r.sample_id,
             r.metric, r.status, None if r.parts is None else json.dumps(r.parts),
             r.error, now)
            for r in rows
        ]
        with self._db:
            before = self._db.total_changes
            # Only a key conflict is skipped; any other constraint aborts the transaction.
            self._db.executemany(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                "(model, dataset, method, options_hash, sample_id, metric) DO NOTHING", values
            )
            return self._db.total_changes - before

    def add_provenance(self, key: RunKey, record: dict[str, Any]) -> dict[str, Any]:
        """Store the provenance of ``key`` unless one is stored; return the stored record."""
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO provenance VALUES (?, ?, ?, ?, ?, ?)",
                (key.model, key.dataset, key.method, key.options_hash,
                 json.dumps(record, sort_keys=True), time.time()),
            )
        stored = self._db.execute(
            "SELECT record FROM provenance WHERE model=? AND dataset=? AND method=? "
            "AND options_hash=?", (key.model, key.dataset, key.method, key.options_hash),
        ).fetchone()
        return json.loads(stored[0])

    # -- reading -------------------------------------------------------------------------
    def done(self, key: RunKey) -> dict[str, set[str]]:
        """sample id -> the metrics already stored for ``key`` (whatever their status)."""
        cursor = self._db.execute(
            "SELECT sample_id, metric FROM results WHERE model=? AND dataset=? AND method=? "
            "AND options_hash=?", (key.model, key.dataset, key.method, key.options_hash),
        )
        done: dict[str, set[str]] = {}
        for sample_id, metric in cursor:
            done.setdefault(sample_id, set()).add(metric)
        return done

    def rows(self) -> Iterator[Row]:
        cursor = self._db.execute(
            "SELECT model, dataset, method, options_hash, sample_id, metric, status, parts, "
            "error FROM results ORDER BY model, dataset, method, options_hash, sample_id, metric"
        )
        for model, dataset, method, options_hash, sample_id, metric, status, parts, error in cursor:
            yield Row(RunKey(model, dataset, method, options_hash), sample_id, metric, status,
                      None if parts is None else json.loads(parts), error)

    def provenance(self) -> dict[RunKey, dict[str, Any]]:
        cursor = self._db.execute(
            "SELECT model, dataset, method, options_hash, record FROM provenance"
        )
        return {RunKey(m, d, me, o): json.loads(r) for m, d, me, o, r in cursor}

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
