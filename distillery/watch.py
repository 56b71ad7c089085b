"""Noticing new data: which watched files have new content since they were last seen.

A file counts as changed once its content hash differs from the last one seen *and* its size
and modification time held still for one poll, so a file still being written (a copy, a
`dvc pull`) is reported once, when complete, not once per write. A file that appears counts
as changed; one that disappears is reported when it comes back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from distillery.lineage import content_md5


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if path.is_file() else None


@dataclass
class DataWatcher:
    """Call `poll(paths)` repeatedly; it returns the paths whose content changed since last seen.

    The first poll of a path records it as the baseline and reports nothing.
    """

    hashes: dict[Path, str | None] = field(default_factory=dict)
    _pending: dict[Path, tuple[int, int] | None] = field(default_factory=dict)
    _seen: dict[Path, tuple[int, int] | None] = field(default_factory=dict)

    def poll(self, paths: list[str | Path]) -> list[Path]:
        changed = []
        for path in map(Path, paths):
            sig = _signature(path)
            if path not in self._seen:  # baseline
                self._seen[path], self.hashes[path] = sig, (content_md5(path) if sig else None)
                continue
            if sig == self._seen[path]:
                self._pending.pop(path, None)
                continue
            if self._pending.get(path, "unset") != sig:  # still moving: look again next poll
                self._pending[path] = sig
                continue
            del self._pending[path]
            self._seen[path] = sig
            digest = content_md5(path) if sig else None
            if digest is not None and digest != self.hashes.get(path):
                changed.append(path)
            self.hashes[path] = digest
        return changed
