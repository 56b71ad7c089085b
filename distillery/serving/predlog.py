"""The prediction log: every scored row, champion and shadow, with feedback labels joined later.

Why SQLite in WAL mode and not Parquet segments:
- feedback arrives later and is looked up by request id: a keyed join, which SQLite indexes and
  Parquet segments would answer by scanning every segment (or by a second store);
- several server processes may append to one log: WAL lets them write one after another (with a
  busy timeout) while readers (`shadow-report`) read a consistent snapshot, no compaction job;
- retention is a DELETE; segments would need rewriting or whole-file expiry;
- a batch is durable once its transaction commits (synchronous=NORMAL: survives a killed process;
  a power loss may lose the last commits), where a Parquet writer loses its unflushed row group.
Writes happen on one background thread per process, in batches, off the request path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("distillery.serving")
ROLES = ("champion", "shadow")

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL, row INTEGER NOT NULL, ts REAL NOT NULL,
    version TEXT NOT NULL, role TEXT NOT NULL CHECK (role IN ('champion', 'shadow')),
    input_hash TEXT NOT NULL, text TEXT, label TEXT NOT NULL, probabilities TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    UNIQUE (request_id, row, role));
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL, row INTEGER NOT NULL, label TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (request_id, row));
"""


@dataclass(frozen=True)
class Retention:
    max_rows: int | None = 1_000_000  # prediction rows kept (oldest dropped first); None: no bound
    max_age_days: float | None = 30.0  # rows (and feedback) older than this are dropped; None: no bound


def input_hash(row: tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps(list(row), ensure_ascii=False).encode()).hexdigest()[:32]


def _retry_locked(step, seconds: float = 30.0):
    """Run `step()`, retrying while SQLite says "database is locked". Switching a new file to WAL
    (and creating its tables) needs a lock that SQLite's busy handler does not wait for, so two
    processes opening one fresh log at once would otherwise fail at once."""
    deadline, wait = time.monotonic() + seconds, 0.01
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(wait)
            wait = min(wait * 2, 0.5)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    _retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def open_log_db(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    _retry_locked(lambda: conn.executescript(SCHEMA))
    return conn


class PredictionLog:
    """Appends rows on a background thread (bounded queue: a full queue drops and counts, so a
    stuck disk never blocks a request); feedback and reads go straight to the database."""

    def __init__(self, path: str | Path, retention: Retention = Retention(), log_text: bool = False,
                 queue_size: int = 10_000, prune_every_s: float = 60.0):
        self.path = Path(path)
        self.retention, self.log_text, self.prune_every_s = retention, log_text, prune_every_s
        self._conn = open_log_db(self.path)
        self._lock = threading.Lock()  # one statement at a time on the shared connection
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self.write_errors = 0
        self._last_prune = 0.0
        self._thread = threading.Thread(target=self._write_loop, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, request_id: str, role: str, version: str, rows: list[tuple[str, ...]],
               predictions: list[dict], latency_ms: float, ts: float | None = None) -> None:
        ts = time.time() if ts is None else ts
        items = [(request_id, i, ts, str(version), role, input_hash(row),
                  (row[0] if len(row) == 1 else json.dumps(list(row), ensure_ascii=False)) if self.log_text else None,
                  pred["label"], json.dumps(pred["probabilities"]), float(latency_ms))
                 for i, (row, pred) in enumerate(zip(rows, predictions))]
        try:
            self._queue.put_nowait(items)
        except queue.Full:
            self.dropped += len(items)

    def _write_loop(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                self._queue.task_done()
                return
            batches = [batch]
            while len(batches) < 256:  # one transaction for whatever queued up meanwhile
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put_nowait(None)  # stop after this write
                    self._queue.task_done()
                    break
                batches.append(nxt)
            try:
                with self._lock:
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._conn.executemany(
                        "INSERT OR IGNORE INTO predictions (request_id, row, ts, version, role, input_hash, text, "
                        "label, probabilities, latency_ms) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        [item for b in batches for item in b])
                    self._conn.execute("COMMIT")
                if time.time() - self._last_prune >= self.prune_every_s:
                    self.prune()
            except sqlite3.Error as exc:
                self.write_errors += 1
                log.error("prediction log: write failed: %s", exc)
                with self._lock:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
            finally:
                for _ in batches:
                    self._queue.task_done()

    def flush(self) -> None:
        """Wait until every recorded row is written."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        with self._lock:
            self._conn.close()

    def prune(self, now: float | None = None) -> int:
        """Apply the retention bound; returns the prediction rows deleted."""
        now = time.time() if now is None else now
        self._last_prune = now
        deleted = 0
        with self._lock:
            if self.retention.max_age_days is not None:
                cutoff = now - self.retention.max_age_days * 86400
                deleted += self._conn.execute("DELETE FROM predictions WHERE ts < ?", (cutoff,)).rowcount
                self._conn.execute("DELETE FROM feedback WHERE ts < ?", (cutoff,))
            if self.retention.max_rows is not None:
                deleted += self._conn.execute(
                    "DELETE FROM predictions WHERE seq <= (SELECT MAX(seq) FROM predictions) - ?",
                    (self.retention.max_rows,)).rowcount
        return deleted

    def add_feedback(self, items: list[dict]) -> list[str]:
        """Attach ground-truth labels: items {"request_id", "label", "row" (default 0)}. Returns the
        request ids that are not in the log (their labels are not stored). A label sent again replaces."""
        self.flush()
        return add_feedback(self._conn, items, self._lock)


def add_feedback(conn: sqlite3.Connection, items: list[dict], lock: threading.Lock | None = None) -> list[str]:
    lock = lock or threading.Lock()
    unknown, rows = [], []
    now = time.time()
    with lock:
        for item in items:
            rid, row = str(item["request_id"]), int(item.get("row", 0))
            hit = conn.execute("SELECT 1 FROM predictions WHERE request_id = ? AND row = ? LIMIT 1", (rid, row)).fetchone()
            if hit is None:
                unknown.append(rid if row == 0 else f"{rid}#{row}")
            else:
                rows.append((rid, row, str(item["label"]), now))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT OR REPLACE INTO feedback (request_id, row, label, ts) VALUES (?,?,?,?)", rows)
        conn.execute("COMMIT")
    return unknown
