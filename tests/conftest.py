"""Shared test fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The real SST-2 files live beside the checkout (../shared/data/sst2), never inside it.
SST2_DIR = Path(__file__).resolve().parents[2] / "shared/data/sst2"
MRPC_DIR = Path(__file__).resolve().parents[2] / "shared/data/mrpc"
IMAGE_FOLDER = pytest.StashKey()  # pytest-xdist controller: where the image build writes


def shared_dataset(folder: Path, name: str) -> Path:
    """A folder of ../shared/data; skipped in a user's clone, a failure where CI requires shared data."""
    if not (folder / "dev.tsv").is_file() or not (folder / "train.tsv").is_file():
        reason = f"{name} data not found at {folder} (it sits beside the checkout in ../shared/data/{folder.name})"
        if os.environ.get("DISTILLERY_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"{reason}; DISTILLERY_REQUIRE_SHARED_DATA=1 requires it")
        pytest.skip(reason)
    return folder


def _prebuild_images(config) -> bool:
    import shutil

    if config.option.collectonly or os.environ.get("DISTILLERY_PREBUILD_IMAGES") == "0":
        return False
    return shutil.which("buildah") is not None and shutil.which("podman") is not None  # else the test says why


def pytest_configure(config):
    """Under pytest-xdist the controller starts the image build (below) and tells each worker where it
    writes its log and exit status."""
    if hasattr(config, "workerinput") or not config.pluginmanager.hasplugin("xdist") \
            or getattr(config.option, "numprocesses", None) in (None, 0):
        return
    import tempfile

    config.stash[IMAGE_FOLDER] = tempfile.mkdtemp(prefix="distillery-image-build-")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    folder = node.config.stash.get(IMAGE_FOLDER, None)
    if folder is not None:
        from tests.helpers import IMAGE_BUILD_FOLDER

        node.workerinput[IMAGE_BUILD_FOLDER] = folder


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """pytest-xdist's controller: the first worker to collect tests/test_images.py starts the build."""
    from tests.helpers import IMAGE_BUILD, ImageBuild

    config = node.config
    folder = config.stash.get(IMAGE_FOLDER, None)
    if folder is None or IMAGE_BUILD in config.stash or not _prebuild_images(config):
        return
    if any(i.split("::")[0].endswith("test_images.py") for i in ids):
        config.stash[IMAGE_BUILD] = ImageBuild(Path(folder)).start()


# The longest modules (CI's --durations, 2 workers): pytest-xdist deals modules out in collection order
# (the Makefile's --no-loadscope-reorder), so these start first and no long module is left running alone
# at the end while the other worker sits idle (longest-processing-time-first). test_images.py, the
# longest, is second rather than first: it begins by waiting for its image build, which the first
# worker's test_bench.py then overlaps.
RUN_FIRST = ("test_bench.py", "test_images.py", "test_gate_e2e.py", "test_registry_shared.py",
             "test_bench_mrpc.py", "test_store_outage.py", "test_pipeline_e2e.py", "test_sweep.py")


def pytest_collection_modifyitems(session, config, items):
    """Under pytest-xdist, the modules in RUN_FIRST go first, in that order; every module keeps its
    tests together and in their order (a Story module's steps share one project)."""
    if getattr(config.option, "numprocesses", None) in (None, 0) and not hasattr(config, "workerinput"):
        return
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(RUN_FIRST)))  # stable: the rest as collected


def pytest_collection_finish(session):
    """Start building the container images in the background when tests/test_images.py is to run
    (tests.helpers.ImageBuild: it overlaps with the tests before it). DISTILLERY_PREBUILD_IMAGES=0
    builds them in the test's own fixture instead. Under pytest-xdist the controller starts it (above)."""
    if hasattr(session.config, "workerinput") or not _prebuild_images(session.config):
        return
    if not any(item.path.name == "test_images.py" for item in session.items):
        return
    from tests.helpers import IMAGE_BUILD, ImageBuild

    session.config.stash[IMAGE_BUILD] = ImageBuild().start()


def pytest_unconfigure(config):
    import shutil

    from tests.helpers import IMAGE_BUILD

    build = config.stash.get(IMAGE_BUILD, None)
    if build is not None:
        build.close()
    folder = config.stash.get(IMAGE_FOLDER, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _prefect_console_on_a_live_stream():
    """Prefect's console log handler keeps the stderr it was made with (`PrefectConsoleHandler`, made
    when Prefect first sets up logging in the process). Made inside a test that captures its output
    (capsys, capfd), that stream is closed when the test ends, and every later flow in the process then
    fails on its first log line ("I/O operation on closed file", then a RecursionError through
    `log_prints`). Which test imports Prefect first depends on the order the tests run in (pytest-xdist
    deals modules out to workers), so such handlers are pointed at the current stderr before each test."""
    if "prefect.logging.handlers" in sys.modules:
        import logging

        from prefect.logging.handlers import PrefectConsoleHandler

        loggers = [logging.getLogger(), *(g for g in logging.Logger.manager.loggerDict.values()
                                          if isinstance(g, logging.Logger))]
        for handler in (h for g in loggers for h in g.handlers):
            if isinstance(handler, PrefectConsoleHandler) and getattr(handler.stream, "closed", False):
                handler.stream = handler.console.file = sys.stderr  # setStream would flush the closed one
    yield


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    return shared_dataset(SST2_DIR, "SST-2")


@pytest.fixture(scope="session")
def mrpc_dir() -> Path:
    return shared_dataset(MRPC_DIR, "MRPC")


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect server and database for the whole session (~20 s to start)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def finished_project(tmp_path_factory):
    """A tiny project after a complete `dvc repro` (models and reports on disk, nothing registered),
    with its own copy of the code (first on PYTHONPATH when a test wants the copy to run). Tests copy
    it (`copy_project`) rather than change it: one pipeline run for all of them."""
    import shutil
    import subprocess
    import sys

    from distillery.code_deps import PACKAGES
    from distillery.demo_data import make_demo_dataset
    from tests.helpers import ROOT, make_project, tiny_params

    params = tiny_params()
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], params["base"]["seed"])
    root = tmp_path_factory.mktemp("finished") / "p"
    for pkg in PACKAGES:  # a copy instead of make_project's links: tests may edit it
        shutil.copytree(ROOT / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    root = make_project(root, params, list(train.text) + list(eval_.text))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True, env=env)
    done = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return root
