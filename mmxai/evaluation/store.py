"""The results store: an SQLite file of metric parts and failures, and their history.

Table ``results`` holds one row per (model, dataset, method, options_hash, sample_id,
metric), enforced by a UNIQUE constraint, so a resumed or repeated run can never count a
sample twice. A row is either

- ``ok``: the metric's parts for that sample (JSON ``{name: [values]}``);
- ``failed``: the cause, one line naming the sample (a corrupt image, a method that raised);
- ``skipped``: the metric does not apply (a mask metric on a sample without a mask); such a
  sample is counted neither as evaluated nor as failed.

All rows of one sample are written in one transaction (WAL journal), so a killed run leaves
whole samples or nothing. ``ok`` and ``skipped`` rows are never updated or deleted. A
``failed`` row is the newest *attempt*: a rerun retries it by writing a row of a later
attempt (``Row.attempt``), which moves the failed row to table ``history`` (with its attempt
number, 1, 2, ...) in the same transaction as its replacement, so ``results`` always holds
the newest attempt and nothing is lost. Table ``prompts`` keeps a hash of each sample's
prompt per run key, so a prompt that changed under the same key is noticed. The
``provenance`` table holds one JSON record per (model, dataset, method, options_hash).

Schema 2 (this mmxai) added ``history`` and ``prompts`` and widened what ``options_hash``
and the provenance cover (docs/evaluator.md). Stores of schema 1 are read (their rows are
first attempts) but not written: their keys do not say which processor, chat template,
prompt or seed made them, so resuming into one could mix results of different setups.

Readers (``ResultStore(path, read_only=True)``, as the leaderboard opens stores) never
write: the file is opened read-only (``immutable`` when no write-ahead log is pending, so
not even the ``-wal``/``-shm`` side files appear), and anything but an mmxai store is
refused in one line.
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

SCHEMA_VERSION = "2"
#: Schemas this mmxai reads (leaderboard); it writes only :data:`SCHEMA_VERSION`.
READABLE_SCHEMAS = ("1", "2")
_KEY = "model, dataset, method, options_hash"
_ROW_KEY = f"{_KEY}, sample_id, metric"
_WHERE_KEY = "model=? AND dataset=? AND method=? AND options_hash=?"
_WHERE_ROW = f"{_WHERE_KEY} AND sample_id=? AND metric=?"
_SQLITE_MAGIC = b"SQLite format 3\x00"

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
CREATE TABLE IF NOT EXISTS history (
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    method TEXT NOT NULL,
    options_hash TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    status TEXT NOT NULL,
    parts TEXT,
    error TEXT,
    created REAL NOT NULL,
    attempt INTEGER NOT NULL,
    replaced REAL NOT NULL,
    UNIQUE (model, dataset, method, options_hash, sample_id, metric, attempt)
);
CREATE TABLE IF NOT EXISTS prompts (
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    method TEXT NOT NULL,
    options_hash TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    UNIQUE (model, dataset, method, options_hash, sample_id)
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

    def values(self) -> tuple[str, str, str, str]:
        """The key's columns, in the tables' order."""
        return self.model, self.dataset, self.method, self.options_hash


@dataclass(frozen=True)
class Row:
    """One stored result. ``attempt`` counts the tries of its (key, sample, metric): 1 for
    the first, 2 for a failure's first retry, ...; ``created`` is when it was written."""

    key: RunKey
    sample_id: str
    metric: str
    status: str
    parts: dict[str, list[float]] | None = None
    error: str | None = None
    attempt: int = 1
    created: float = 0.0

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


def _not_a_store(path: Path, why: str) -> MMXAIError:
    return MMXAIError(f"results store {str(path)!r}: not an mmxai store ({why})")


class ResultStore:
    """One SQLite file. Use as a context manager, or call :meth:`close`.

    ``read_only=True`` opens an existing store for reading and never writes to it (nor
    next to it); otherwise the file is created if needed, and must be a schema
    :data:`SCHEMA_VERSION` store if it exists.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._db: sqlite3.Connection | None = None
        if read_only:
            self._open_read()
        else:
            self._open_write()

    # -- opening -------------------------------------------------------------------------
    def _open_read(self) -> None:
        path = self.path
        if not path.exists():
            raise MMXAIError(f"results {str(path)!r}: no such file or folder")
        if not path.is_file():
            raise _not_a_store(path, "not a file")
        try:
            with open(path, "rb") as fh:
                head = fh.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise MMXAIError(f"results store {str(path)!r}: cannot read it ({exc.strerror})"
                             ) from exc
        if not head:
            raise _not_a_store(path, "an empty file")
        if head != _SQLITE_MAGIC:
            raise _not_a_store(path, "not an SQLite file")
        # With no write-ahead log pending the file holds everything: "immutable" reads it
        # without creating -wal/-shm files; with one (a run in progress, or killed), read
        # through it read-only.
        wal = path.with_name(path.name + "-wal").exists()
        uri = path.resolve().as_uri() + ("?mode=ro" if wal else "?immutable=1")
        try:
            self._db = sqlite3.connect(uri, uri=True, timeout=60)
            self._check(self._tables(), writing=False)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise _not_a_store(path, str(exc)) from exc
        except MMXAIError:
            self.close()
            raise

    def _open_write(self) -> None:
        path = self.path
        if path.is_dir():
            raise MMXAIError(f"results store {str(path)!r}: is a folder, expected a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MMXAIError(f"results folder {str(path.parent)!r}: cannot create it "
                             f"({exc.strerror or exc})") from exc
        try:
            self._db = sqlite3.connect(str(path), timeout=60)
            tables = self._tables()  # checked before anything is written into the file
            if not tables:  # a new store: every table at once, or none
                self._db.executescript(
                    f"BEGIN IMMEDIATE; {_SCHEMA} INSERT OR IGNORE INTO meta VALUES "
                    f"('schema', '{SCHEMA_VERSION}'); COMMIT;")
                tables = self._tables()
            self._check(tables, writing=True)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            self.close()
            raise _not_a_store(path, str(exc)) from exc
        except MMXAIError:
            self.close()
            raise

    def _tables(self) -> set[str]:
        return {name for (name,) in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}

    def _check(self, tables: set[str], *, writing: bool) -> None:
        """The file is an mmxai store of a schema this mmxai reads (writes)."""
        if not tables:
            raise _not_a_store(self.path, "no tables: an empty database")
        missing = {"meta", "results", "provenance"} - tables
        if missing:
            raise _not_a_store(self.path, f"no {', '.join(sorted(missing))} table")
        found = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if found is None:
            raise _not_a_store(self.path, "no schema version")
        self.schema = str(found[0])
        if writing and self.schema == "1":
            raise MMXAIError(
                f"results store {str(self.path)!r}: schema 1, from an older mmxai whose run "
                "keys do not cover the processor, chat template, prompt or seed, so its rows "
                "cannot be resumed safely; write to a new --out folder (mmxai leaderboard "
                "still reads this one)")
        readable = (SCHEMA_VERSION,) if writing else READABLE_SCHEMAS
        if self.schema not in readable:
            raise MMXAIError(f"results store {str(self.path)!r}: schema {self.schema}, this "
                             f"mmxai {'writes' if writing else 'reads'} schema "
                             f"{' and '.join(readable)}")

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise MMXAIError(f"results store {str(self.path)!r} is closed")
        return self._db

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _writable(self) -> sqlite3.Connection:
        if self.read_only:
            raise MMXAIError(f"results store {str(self.path)!r} is open read-only")
        return self.db

    # -- writing -------------------------------------------------------------------------
    def write(self, rows: Iterable[Row]) -> int:
        """Write rows in one transaction; returns how many rows were new.

        A row whose (key, sample, metric) is stored is left as it is, unless the stored row
        is ``failed`` and the new row is a later attempt (``row.attempt`` greater than the
        stored one's, as :meth:`failed` gives them): then the stored row moves to
        ``history`` and the new one takes its place. ``ok`` and ``skipped`` rows stay.
        """
        db = self._writable()
        rows = list(rows)
        now = time.time()
        values = [(*r.key.values(), r.sample_id, r.metric, r.status,
                   None if r.parts is None else json.dumps(r.parts), r.error, now) for r in rows]
        with db:
            for row, value in zip(rows, values, strict=True):
                if row.attempt <= 1:
                    continue
                where = value[:6]
                stored = db.execute(f"SELECT status FROM results WHERE {_WHERE_ROW}",
                                    where).fetchone()
                if stored is None or stored[0] != "failed":
                    continue
                tries = 1 + db.execute(f"SELECT COUNT(*) FROM history WHERE {_WHERE_ROW}",
                                       where).fetchone()[0]
                if row.attempt <= tries:
                    continue
                db.execute(f"INSERT INTO history SELECT *, ?, ? FROM results WHERE "
                           f"{_WHERE_ROW}", (tries, now, *where))
                db.execute(f"DELETE FROM results WHERE {_WHERE_ROW}", where)
            before = db.total_changes
            # Only a key conflict is skipped; any other constraint aborts the transaction.
            db.executemany(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                f"({_ROW_KEY}) DO NOTHING", values
            )
            return db.total_changes - before

    def add_prompts(self, keys: Iterable[RunKey], sample_id: str, prompt: str) -> None:
        """Record the hash of the prompt ``sample_id`` is computed with under each key
        (:func:`~mmxai.evaluation.provenance.prompt_hash`); a recorded one stays."""
        db = self._writable()
        with db:
            db.executemany(
                f"INSERT INTO prompts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT ({_KEY}, "
                "sample_id) DO NOTHING",
                [(*k.values(), sample_id, prompt) for k in keys])

    def add_provenance(self, key: RunKey, record: dict[str, Any]) -> dict[str, Any]:
        """Store the provenance of ``key`` unless one is stored; return the stored record."""
        db = self._writable()
        with db:
            db.execute("INSERT OR IGNORE INTO provenance VALUES (?, ?, ?, ?, ?, ?)",
                       (*key.values(), json.dumps(record, sort_keys=True), time.time()))
        stored = db.execute(f"SELECT record FROM provenance WHERE {_WHERE_KEY}",
                            key.values()).fetchone()
        return json.loads(stored[0])

    # -- reading -------------------------------------------------------------------------
    def done(self, key: RunKey, *, retry_failed: bool = False) -> dict[str, set[str]]:
        """sample id -> the metrics stored for ``key`` (whatever their status; without the
        failed ones if ``retry_failed``: those are to be computed again)."""
        cursor = self.db.execute(
            f"SELECT sample_id, metric, status FROM results WHERE {_WHERE_KEY}", key.values())
        done: dict[str, set[str]] = {}
        for sample_id, metric, status in cursor:
            if retry_failed and status == "failed":
                continue
            done.setdefault(sample_id, set()).add(metric)
        return done

    def failed(self, key: RunKey) -> dict[str, dict[str, int]]:
        """sample id -> {metric: attempt} of the rows whose newest attempt for ``key``
        failed (a retry writes attempt + 1)."""
        cursor = self.db.execute(
            f"SELECT sample_id, metric, {self._attempt()} FROM results r WHERE {_WHERE_KEY} "
            "AND status='failed'", key.values())
        failed: dict[str, dict[str, int]] = {}
        for sample_id, metric, attempt in cursor:
            failed.setdefault(sample_id, {})[metric] = int(attempt)
        return failed

    def prompts(self, key: RunKey) -> dict[str, str]:
        """sample id -> the hash of the prompt its stored rows for ``key`` were made with."""
        if self.schema == "1":
            return {}
        return dict(self.db.execute(
            f"SELECT sample_id, prompt FROM prompts WHERE {_WHERE_KEY}", key.values()))

    def _attempt(self) -> str:
        """SQL: the attempt number of a row ``r`` of ``results`` (1 + its history)."""
        if self.schema == "1":
            return "1"
        return ("1 + (SELECT COUNT(*) FROM history h WHERE h.model=r.model AND "
                "h.dataset=r.dataset AND h.method=r.method AND h.options_hash=r.options_hash "
                "AND h.sample_id=r.sample_id AND h.metric=r.metric)")

    def rows(self) -> Iterator[Row]:
        """The newest attempt of every (key, sample, metric), with its attempt number."""
        yield from map(_row, self.db.execute(
            "SELECT r.model, r.dataset, r.method, r.options_hash, r.sample_id, r.metric, "
            f"r.status, r.parts, r.error, r.created, {self._attempt()} FROM results r "
            "ORDER BY r.model, r.dataset, r.method, r.options_hash, r.sample_id, r.metric"))

    def history(self) -> Iterator[Row]:
        """Superseded attempts (failures retried since), oldest first."""
        if self.schema == "1":
            return
        yield from map(_row, self.db.execute(
            f"SELECT {_ROW_KEY}, status, parts, error, created, attempt FROM history "
            f"ORDER BY {_ROW_KEY}, attempt"))

    def provenance(self) -> dict[RunKey, dict[str, Any]]:
        cursor = self.db.execute(f"SELECT {_KEY}, record FROM provenance")
        return {RunKey(*values[:4]): json.loads(values[4]) for values in cursor}

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0])


def _row(values: tuple) -> Row:
    """A row from the columns (key, sample, metric, status, parts, error, created, attempt)."""
    sample_id, metric, status, parts, error, created, attempt = values[4:]
    return Row(RunKey(*values[:4]), sample_id, metric, status,
               None if parts is None else json.loads(parts), error, int(attempt), float(created))
