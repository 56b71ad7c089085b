"""Atomic file writes: every output is written beside its target and renamed into place, so a
crash, an error or a SIGKILL never leaves a half-written file that a later stage would take as good.

Temporary names all start with `.<target name>.`, so what a killed writer left behind is found
(and removed by `remove_leftovers`) by name alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def write_atomically(path: str | Path, write: Callable[[Path], object], suffix: str = ".tmp") -> Path:
    """Call `write(tmp_path)` for a temp file in `path`'s folder (same filesystem), then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp makes 0600 files: give the result the mode a plain open() would (or the old file's)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _umask() -> int:
    try:  # Linux states it; setting and restoring it would race with other threads' file creation
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_dir_for(out_dir: str | Path) -> Path:
    """A fresh temp directory beside `out_dir` (same filesystem, so `replace_dir` is a rename)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the output is an ordinary folder
    return tmp


def replace_dir(tmp: Path, out_dir: Path) -> None:
    """Swap a fully written temp directory into place.

    Two renames: a kill between them leaves no `out_dir` at all (never a mixed one), which DVC
    sees as a missing output and runs the stage again.
    """
    out_dir = Path(out_dir)
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Write a directory whole: fill the yielded temp directory (beside `out_dir`); when the block
    ends normally it replaces `out_dir` (`replace_dir`), when it raises it is removed and `out_dir`
    is left as it was. A kill leaves the previous directory or none, never a partial one."""
    tmp = temp_dir_for(out_dir)
    try:
        yield tmp
        replace_dir(tmp, Path(out_dir))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_leftovers(path: str | Path) -> list[Path]:
    """Delete what killed writers of `path` left beside it (`.<name>.*` temp files and dirs)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    found = sorted(path.parent.glob(f".{path.name}.*"))
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found
