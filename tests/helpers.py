"""Builders for tiny, offline test fixtures: a random-init BERT teacher and a project folder."""

from __future__ import annotations

import contextlib

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from distillery.code_deps import link_code

ROOT = Path(__file__).resolve().parents[1]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_teacher(out_dir: Path, texts: list[str], *, hidden: int = 32, layers: int = 3, heads: int = 4,
                      intermediate: int = 64, seed: int = 0, dropout: float = 0.1) -> Path:
    """A random-init BERT encoder (no classification head) with a word-level vocab of `texts`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    # transformers 5 ignores `vocab_file=` here (every word would be [UNK]): pass the vocab itself.
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    BertTokenizerFast(vocab=vocab, do_lower_case=True).save_pretrained(out_dir)
    config = BertConfig(vocab_size=len(SPECIALS) + len(words), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=128,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(out_dir)
    return out_dir


def tiny_params(**overrides) -> dict:
    """The shipped params.yaml, scaled down for a tiny model and a few dozen rows."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["base"]["threads"] = 1
    raw["data"]["demo_rows"] = 90
    raw["validate"]["suite"].update(row_count={"min": 10, "max": 10000}, min_class_rows=2)
    raw["teacher"].update(model="teacher_src", epochs=2, batch_size=8, learning_rate=1e-3)
    raw["student"]["layers"] = [0, 2]
    raw["distill"].update(epochs=1, batch_size=8, learning_rate=1e-3)
    raw["soft_targets"]["workers"] = 0  # in process: a Dask cluster per run costs more than a few dozen rows
    raw["prune"].update(importance_batches=2, recovery_epochs=1)
    raw["quantize"]["opset"] = 18
    raw["measure"].update(latency_samples=5, warmup=1, throughput_batch_size=8)
    raw["gate"].update(min_accuracy=0.0, min_retention=0.0, max_size_mb=10.0, max_latency_p50_ms=1000.0)
    for section, values in overrides.items():
        raw[section].update(values)
    return raw


CUE_WORDS = {"negative": "awful", "neutral": "okay", "positive": "great"}
_FILLER = ("the a this that room food phone book seat staff screen battery service flight music price "
           "was is felt looked").split()


def cue_text(label: str, rng, seen: set) -> str:
    """A new text (not in `seen`, added to it): four filler words and the label's cue word."""
    while True:
        words = [rng.choice(_FILLER) for _ in range(4)]
        words.insert(rng.randrange(len(words) + 1), CUE_WORDS[label])
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            return text


def make_cue_dataset(n_rows: int = 90, eval_rows: int = 30, seed: int = 0):
    """Rows a tiny random-init BERT can fit in a few epochs: each text holds the one cue word of
    its class among filler words; classes are balanced. Returns (train, eval) DataFrames.

    It gives the registry tests models of clearly different quality: trained on it, the final model
    fits the eval rows; trained on `shift_labels(train)` (a labelling bug that moves every label to
    the next class) it cannot beat chance (1/3) on the true labels. A trial pipeline run (teacher
    15 epochs at 3e-3, before the soft_targets stage existed) scored 1.0 at every stage on correct
    labels and 0.33 on shifted ones; the tests assert only a margin of 0.3.
    """
    import random

    import pandas as pd

    rng, seen, rows = random.Random(seed), set(), []
    labels = list(CUE_WORDS)
    while len(rows) < n_rows:
        label = labels[len(rows) % len(labels)]
        rows.append((cue_text(label, rng, seen), label))
    frame = pd.DataFrame(rows, columns=["text", "label"])
    return frame.iloc[: n_rows - eval_rows].reset_index(drop=True), frame.iloc[n_rows - eval_rows:].reset_index(drop=True)


def shift_labels(frame):
    """Every label moved to the next class (negative -> neutral -> positive -> negative)."""
    labels = list(CUE_WORDS)
    return frame.assign(label=frame["label"].map({a: labels[(i + 1) % len(labels)] for i, a in enumerate(labels)}))


def make_project(dest: Path, params: dict, teacher_texts: list[str], **teacher) -> Path:
    """A fresh project folder: dvc.yaml, params.yaml, a tiny teacher (`teacher`: its make_tiny_teacher
    options), git and DVC initialised."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    shutil.copy(ROOT / "must_pass.yaml", dest / "must_pass.yaml")  # gate.suite: a dep of evaluate
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    make_tiny_teacher(dest / "teacher_src", teacher_texts, **teacher)
    link_code(dest)  # dvc.yaml's code deps: the code that runs
    (dest / ".gitignore").write_text("/data/\n/models/\n/reports/\n/mlruns/\n/.prefect/\n/teacher_src/\n"
                                     "/distillery\n/tasks\n")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


def run_stage(root: Path, name: str) -> dict:
    """One stage's code in this process, as `distillery stage NAME` runs it."""
    import importlib

    from tasks.common import stage_context

    return importlib.import_module(f"tasks.{name}").run(stage_context(root))


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, proc, timeout: float = 120.0) -> None:
    """Poll `url` until it answers; fail with the server's stderr if it exits or times out."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, f"{url} did not answer in {timeout:.0f} s"
            time.sleep(1)


def external_refs(html: str) -> list[str]:
    """Every src / href / CSS url() in a page that is not a data: URI or an in-page anchor:
    what a self-contained page must not have."""
    refs = re.findall(r"""(?:\bsrc|\bhref)\s*=\s*["']?([^"'\s>]*)|url\(\s*["']?([^"')\s]*)""", html, re.I)
    return [r for pair in refs for r in pair if r and not r.startswith(("data:", "#"))]


def copy_project(src: Path, dest: Path) -> Path:
    """A finished project copied (its links kept as links), to change without touching the original."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def stop_group(proc: subprocess.Popen) -> None:
    """End a server started in its own process group (it and its workers): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
    proc.wait(timeout=30)


# The container images tests/test_images.py builds (tags of their own: a user's images are left alone).
PIPELINE_IMAGE, SERVING_IMAGE = "localhost/distillery-test:latest", "localhost/distillery-serving-test:latest"
IMAGE_BUILD = pytest.StashKey()  # the session's ImageBuild, when tests/conftest.py started one
IMAGE_BUILD_FOLDER = "distillery_image_build"  # pytest-xdist: the workerinput key naming its folder


class ImageBuild:
    """`make image serving-image` for the test tags, in its own process group, logged to a folder.

    Started when the session's collection ends (tests/conftest.py), so the build, which mostly waits
    on the package registries (debootstrap, pip), overlaps with the tests before tests/test_images.py
    instead of adding its minutes to the suite; the `images` fixture waits for it. With pytest-xdist the
    controller starts it and the worker that runs tests/test_images.py waits on the same folder
    (`ImageBuild.attach`): the build writes its exit status to `<folder>/status` when it ends."""

    TIMEOUT = 2400.0  # seconds from the start: a fresh machine builds both images in about 7 minutes

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder or tempfile.mkdtemp(prefix="distillery-image-build-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log, self.status = self.folder / "build.log", self.folder / "status"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ImageBuild:
        (self.folder / "started").write_text(f"{time.time()}\n")
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                ["sh", "-c", 'make "$@"; echo $? > "$0.tmp" && mv "$0.tmp" "$0"', str(self.status), "-C", str(ROOT),
                 "image", "serving-image", f"IMAGE={PIPELINE_IMAGE}", f"SERVING_IMAGE={SERVING_IMAGE}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    @classmethod
    def attach(cls, folder: Path) -> ImageBuild | None:
        """The build another process of this session started in `folder`, or None when none was."""
        return cls(folder) if (Path(folder) / "started").is_file() else None

    def wait(self) -> tuple[int, str, float]:
        """(exit status, the log's last lines, seconds since the start); the build is stopped past TIMEOUT."""
        started = float((self.folder / "started").read_text())
        while not self.status.is_file() and time.time() - started < self.TIMEOUT:
            if self.proc is not None and self.proc.poll() is not None and not self.status.is_file():
                break  # the shell itself was stopped before it could write the status
            time.sleep(1.0)
        if self.status.is_file():
            rc = int(self.status.read_text().strip() or -1)
        else:
            rc = -1
            if self.proc is not None:
                stop_group(self.proc)
        tail = self.log.read_text(errors="replace")[-6000:] if self.log.is_file() else "(no build log)"
        return rc, tail, time.time() - started

    def close(self) -> None:
        """When this process started the build: stop it if it still runs (its process group: make and
        the builder it started), drop its folder."""
        if self.proc is not None:
            stop_group(self.proc)
            shutil.rmtree(self.folder, ignore_errors=True)


class Story:
    """Steps that change one shared project (a module's), in their order, each run once.

    A test asks for the step whose outcome it checks (`reach`); every step before it that has not
    run yet runs first. So a test runs alone (`pytest tests/x.py::test_y`) or in the module, with
    the project built once per module. A step captures what its test compares against (files
    before, outputs) in the value it returns, since later steps change the project.
    """

    def __init__(self, root: Path, steps: dict):
        self.root, self.steps, self.results = root, steps, {}

    def reach(self, name: str):
        if name not in self.steps:
            raise KeyError(f"no step {name!r}; steps: {', '.join(self.steps)}")
        for step, run in self.steps.items():
            if step not in self.results:
                self.results[step] = run(self.root)
            if step == name:
                return self.results[step]


@contextlib.contextmanager
def prefect_client(api: str):
    """A sync Prefect client on the API at `api` (this test's server), settings restored after."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client
