"""The container images (Dockerfile), built and run on this machine.

`make image` and `make serving-image` build both targets with buildah (layers cached: a rebuild
with unchanged dependencies only redoes the code layers), started in the background as soon as the
session has collected this module (tests/conftest.py), so the build overlaps with the tests before
it; `distillery run` then runs on the demo inside the pipeline image, and the serving image (no
torch) serves the champion exported from that run's registry over HTTP on a loopback port,
answering like the pipeline's own pyfunc.

Containers run with `buildah run --isolation chroot` (the host's network, so a server bound to
127.0.0.1 inside is reachable here); `podman run` cannot set its resource limits in sandboxes
like CI's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import IMAGE_BUILD, IMAGE_BUILD_FOLDER, PIPELINE_IMAGE as PIPELINE, SERVING_IMAGE as SERVING, \
    ImageBuild, free_port, wait_for_http

pytestmark = pytest.mark.slow

TEXTS = ["the battery died after a day", "not bad at all", "it does what it says",
         "the staff were friendly but the room was filthy"]


@pytest.fixture(scope="module")
def buildah():
    path = shutil.which("buildah")
    if path is None or shutil.which("podman") is None:
        reason = "buildah/podman not installed (as root: apt-get install -y buildah podman debootstrap; make test does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must build the images")
        pytest.skip(reason)
    return path


def sh(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kwargs)


def image_bytes(tag: str) -> int:
    return int(sh("podman", "image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


@pytest.fixture(scope="module")
def images(buildah, request):
    """Both images, from the build the session started in the background (tests/conftest.py; under
    pytest-xdist, the controller's), or from one started here when none was (DISTILLERY_PREBUILD_IMAGES=0)."""
    build = request.config.stash.get(IMAGE_BUILD, None)
    folder = getattr(request.config, "workerinput", {}).get(IMAGE_BUILD_FOLDER)
    if build is None and folder is not None:
        build = ImageBuild.attach(Path(folder))
    if build is None:
        build = request.config.stash[IMAGE_BUILD] = ImageBuild().start()
    waited = time.monotonic()
    rc, log, seconds = build.wait()
    assert rc == 0, f"make image serving-image exited {rc} after {seconds:.0f} s:\n{log}"
    print(f"images built in {seconds:.0f} s (this test waited {time.monotonic() - waited:.0f} s of them): "
          f"pipeline {image_bytes(PIPELINE) / 1e6:.0f} MB, serving {image_bytes(SERVING) / 1e6:.0f} MB")
    return PIPELINE, SERVING


@pytest.fixture
def container(buildah):
    made = []

    def make(image: str) -> str:
        name = f"distillery-test-{os.getpid()}-{len(made)}"
        out = sh(buildah, "from", "--pull-never", "--name", name, image)
        assert out.returncode == 0, out.stderr
        made.append(name)
        return name

    yield make
    for name in made:
        sh(buildah, "rm", name)


def test_serving_image_has_no_torch_and_is_a_quarter_of_the_pipeline_image(images, container, buildah):
    pipeline, serving = images
    assert image_bytes(serving) * 4 <= image_bytes(pipeline), (image_bytes(serving), image_bytes(pipeline))
    probe = sh(buildah, "run", "--isolation", "chroot", container(serving), "--", "python3", "-c",
               "import importlib.util as u, json; "
               "print(json.dumps({m: u.find_spec(m) is not None for m in "
               "['torch', 'transformers', 'onnxruntime', 'tokenizers', 'mlflow']}))")
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == {"torch": False, "transformers": False, "onnxruntime": True,
                                        "tokenizers": True, "mlflow": True}


def test_pipeline_image_runs_the_demo_and_serving_image_serves_its_champion(images, container, buildah, tmp_path):
    pipeline, serving = images
    box = container(pipeline)
    started = time.monotonic()
    # The image's default command, `distillery run`, on the built-in demo defaults.
    run = sh(buildah, "run", "--isolation", "chroot", box, "--", "distillery", "run", timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    print(f"distillery run inside the pipeline image: {time.monotonic() - started:.0f} s")
    assert "Gate: PASSED" in run.stdout, run.stdout[-3000:]
    assert "Registry: version 1 with alias(es) challenger, champion" in run.stdout, run.stdout[-3000:]

    # The champion as the registry holds it, exported to a directory, and the pipeline's own answers.
    export = sh(buildah, "run", "--isolation", "chroot", box, "--", "python", "-c",
                "import json, mlflow; mlflow.set_tracking_uri('sqlite:////app/mlruns/mlflow.db'); "
                "path = mlflow.artifacts.download_artifacts('models:/distillery-student@champion', "
                "dst_path='/app/export'); "
                f"print(json.dumps(mlflow.pyfunc.load_model(path).predict({TEXTS!r})['label'].tolist()))")
    assert export.returncode == 0, export.stderr[-3000:]
    expected = json.loads(export.stdout.strip().splitlines()[-1])
    mount = sh(buildah, "mount", box)
    assert mount.returncode == 0, mount.stderr
    try:
        shutil.copytree(Path(mount.stdout.strip()) / "app/export", tmp_path / "model")
    finally:
        sh(buildah, "umount", box)

    port = free_port()
    server = subprocess.Popen(
        [buildah, "run", "--isolation", "chroot", "--volume", f"{tmp_path / 'model'}:/model:ro",
         "--env", "HOST=127.0.0.1", "--env", f"PORT={port}", container(serving), "--", "serve-model"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, timeout=180)
        body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # buildah run and the server it started
        server.wait(timeout=60)
    assert [row["label"] for row in answer] == expected
