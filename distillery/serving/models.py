"""The served models: one slot per role, each one reference swapped atomically by the alias follower.

A request reads `slot.current` once and scores with that object to the end, so a swap never
hands it a half-loaded model: the new version is loaded, warmed up and only then published by a
single reference assignment (atomic under the GIL). The old version is freed when its last
in-flight request drops it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from distillery.onnx_model import META_FILE, OnnxClassifier

log = logging.getLogger("distillery.serving")
DEFAULT_COLUMNS = ["text"]


def input_columns(model_dir: Path) -> list[str]:
    """The model's input columns from distillery.json (`input_columns`), default ["text"]."""
    path = Path(model_dir) / META_FILE
    if not path.exists():
        return list(DEFAULT_COLUMNS)
    cols = json.loads(path.read_text(encoding="utf-8")).get("input_columns", DEFAULT_COLUMNS)
    if not (isinstance(cols, list) and 1 <= len(cols) <= 2 and all(isinstance(c, str) and c for c in cols)):
        raise ValueError(f"{path}: input_columns must list one or two column names, got {cols!r}")
    return list(cols)


@dataclass
class ServedModel:
    """One registered version, loaded and ready to score."""
    version: str
    classifier: OnnxClassifier
    columns: list[str] = field(default_factory=lambda: list(DEFAULT_COLUMNS))
    loaded_at: float = field(default_factory=time.time)

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    def score(self, rows: list[tuple[str, ...]]) -> list[dict]:
        """[{"label", "probabilities"}] per row. One column: plain texts; two: (text, text_pair)
        tuples, which the tokenizer encodes as a pair."""
        texts = [r[0] for r in rows] if len(self.columns) == 1 else [tuple(r) for r in rows]
        return self.classifier.predict(texts)  # sorted by length, batches of 32: little padding


def load_served_model(version: str, model_dir: Path, threads: int) -> ServedModel:
    model = ServedModel(str(version), OnnxClassifier.from_dir(model_dir, threads=threads), input_columns(model_dir))
    model.score([tuple("warm up" for _ in model.columns)])  # first run allocates; keep it off a request
    return model


class ModelSlot:
    """The model serving one role; `current` is None until the first version is loaded."""

    def __init__(self, role: str):
        self.role = role
        self.current: ServedModel | None = None
        self.swaps = 0

    @property
    def version(self) -> str | None:
        model = self.current
        return None if model is None else model.version

    def swap(self, model: ServedModel | None) -> None:
        self.current = model  # the one atomic step
        self.swaps += 1


class AliasFollower:
    """Polls the registry every `interval` seconds; when `alias` points at another version, loads it
    beside the one being served and swaps the slot. A failed poll or load keeps the current model
    and is retried at the next poll. `resolve(alias)` -> version or None; `fetch(version)` -> model dir."""

    def __init__(self, slot: ModelSlot, alias: str, resolve: Callable[[str], str | None],
                 fetch: Callable[[str], Path], interval: float, threads: int,
                 on_swap: Callable[[str, str | None, str], None] | None = None):
        self.slot, self.alias, self.resolve, self.fetch = slot, alias, resolve, fetch
        self.interval, self.threads, self.on_swap = interval, threads, on_swap
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> bool:
        """One look at the registry; True when the slot now serves another version."""
        version = self.resolve(self.alias)
        if version is None or str(version) == self.slot.version:
            return False  # an alias that disappeared keeps what is served (a server must not go dark)
        model = load_served_model(str(version), self.fetch(str(version)), self.threads)
        before = self.slot.version
        self.slot.swap(model)
        log.info("%s: version %s -> %s (alias %s)", self.slot.role, before, model.version, self.alias)
        if self.on_swap is not None:
            self.on_swap(self.slot.role, before, model.version)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll_once()
                self.last_error = None
            except Exception as exc:  # registry down, a broken version: keep serving, retry next poll
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("%s: following alias %s failed: %s", self.slot.role, self.alias, self.last_error)

    def start(self) -> None:
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"follow-{self.alias}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
