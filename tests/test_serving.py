"""`distillery serve-model` against the real server on a free 127.0.0.1 port, with a real MLflow
registry (SQLite, temp dir) holding two tiny ONNX classifiers (tests/serving_helpers.py)."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from distillery.serving.app import ServingState, create_app
from distillery.serving.inputs import InputError, Limits, parse_rows
from distillery.serving.models import ModelSlot, ServedModel, load_served_model
from distillery.serving.predlog import PredictionLog, Retention
from distillery.serving.server import ServeOptions, build_state
from distillery.serving.stats import paired_accuracy
from tests.helpers import ROOT, free_port, wait_for_http
from tests.serving_helpers import LABELS, V1, V2, ServerThread, label_of, make_onnx_classifier

NAME = "distillery-student"


def call(url: str, body=None, *, raw: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, json body, headers); never raises on an HTTP error status."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
            return resp.status, (json.loads(text) if resp.headers.get_content_type() == "application/json" else text.decode()), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null"), err.headers


# ---------- the registry: a project folder with two registered versions ----------

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from tasks import tracking
    from tasks.promotion import move_champion, registry_lock
    from tasks.serving_registry import register_model_dir
    from distillery.config import load_params

    root = tmp_path_factory.mktemp("serving")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(root / "params.yaml", check_files=False)
    client = tracking.client_for(root, params)
    exp = tracking.experiment_id(client, root, params)
    v1 = register_model_dir(client, exp, NAME, make_onnx_classifier(root / "src" / "v1", V1))
    v2 = register_model_dir(client, exp, NAME, make_onnx_classifier(root / "src" / "v2", V2))
    with registry_lock(client.tracking_uri):
        move_champion(client, NAME, v1, kind="promote", reason="test setup")
        client.set_registered_model_alias(NAME, "challenger", v2)
    return {"root": root, "client": client, "v1": v1, "v2": v2, "params": params}


def source_for(project):
    from tasks.serving_registry import RegistrySource

    return RegistrySource(project["client"].tracking_uri, NAME, project["root"] / "serving" / "models")


def start(project, tmp_path, **opts) -> ServerThread:
    src = source_for(project)
    options = ServeOptions(**{"poll_interval": 0.2, "log_path": tmp_path / "predictions.db", **opts})
    return ServerThread(create_app(build_state(NAME, src.resolve, src.fetch, options)), free_port())


def score(url: str, texts: list[str], rid: str | None = None):
    return call(f"{url}/invocations", {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}},
                headers={"X-Request-Id": rid} if rid else None)


def runs(seq: list[str]) -> list[str]:
    return [v for i, v in enumerate(seq) if i == 0 or seq[i - 1] != v]


# ---------- hot swap ----------

def test_promote_then_rollback_during_a_stream_of_requests(project, tmp_path):
    from tasks.promotion import promote, rollback

    client, v1, v2 = project["client"], project["v1"], project["v2"]
    seen: dict[int, list] = {0: [], 1: []}
    stop = threading.Event()

    def stream(k, url):
        while not stop.is_set():
            status, body, headers = score(url, ["good movie", "awful"])
            seen[k].append((status, body.get("model_version") if isinstance(body, dict) else None,
                            headers.get("X-Model-Version")))

    with start(project, tmp_path) as server:
        threads = [threading.Thread(target=stream, args=(k, server.url)) for k in seen]
        for t in threads:
            t.start()

        def wait_for(version):
            deadline = time.time() + 30
            while not all(any(v == version for _, v, _ in rows[-3:]) for rows in seen.values()):
                assert time.time() < deadline, f"server never served v{version}"
                time.sleep(0.05)
            time.sleep(0.3)  # some more requests on the new version

        time.sleep(0.3)
        promote(client.tracking_uri, client, NAME, v2, reason="test")
        wait_for(v2)
        rollback(client.tracking_uri, client, NAME, reason="test")
        wait_for(v1)
        stop.set()
        for t in threads:
            t.join()
        status, body, _ = call(f"{server.url}/metrics")
    for k, rows in seen.items():
        assert rows and all(status == 200 for status, _, _ in rows), [r for r in rows if r[0] != 200][:3]
        assert all(body_v == header_v for _, body_v, header_v in rows)
        assert runs([v for _, v, _ in rows]) == [v1, v2, v1], f"stream {k}: {runs([v for _, v, _ in rows])}"
    assert 'distillery_serving_model_swaps_total{role="champion"} 2.0' in body
    assert f'distillery_serving_model_version{{role="champion"}} {float(v1)}' in body


# ---------- bad input ----------

BAD = [  # (body bytes, headers, expected status, words the message must name)
    (b'{"dataframe_split": {"columns": ["text"], "data": [["ok"]]', {}, 400, "malformed JSON"),
    (b"", {}, 400, "empty request body"),
    (b'["good"]', {}, 400, "must be an object"),
    (b'{"data": ["good"]}', {}, 400, "exactly one of the keys"),
    (b'{"dataframe_split": {"columns": ["txt"], "data": [["good"]]}}', {}, 422, "missing column(s) ['text']"),
    (b'{"dataframe_records": [{"text": "good", "extra": 1}]}', {}, 422, "unexpected column(s) ['extra']"),
    (b'{"dataframe_records": [{"text": 5}]}', {}, 422, "expected a string, got int"),
    (b'{"inputs": ["good", null]}', {}, 422, "row 1, column 'text': expected a string, got null"),
    (b'{"inputs": []}', {}, 422, "empty batch"),
    (b'{"inputs": {"text": []}}', {}, 422, "empty batch"),
    (json.dumps({"inputs": ["good"] * 9}).encode(), {}, 413, "9 rows, over the limit of 8"),
    (json.dumps({"inputs": ["x" * 3000]}).encode(), {}, 413, "over the limit of 2000"),
    (b'{"inputs": ["good"]}', {"Content-Type": "text/csv"}, 415, "text/csv"),
    (b'{"inputs": ["good"]}', {"X-Request-Id": "no spaces allowed"}, 400, "X-Request-Id"),
]


def test_each_bad_request_is_a_4xx_naming_the_problem_and_the_server_keeps_serving(project, tmp_path):
    limits = Limits(max_body_bytes=2000, max_rows=8, max_text_chars=1000)
    with start(project, tmp_path, limits=limits) as server:
        for raw, headers, code, words in BAD:
            status, body, _ = call(f"{server.url}/invocations", raw=raw, headers=headers)
            assert status == code, (raw[:60], status, body)
            assert body["error_code"] and words in body["message"], (words, body["message"])
            ok, good, _ = score(server.url, ["good"])
            assert ok == 200 and good["predictions"][0]["label"] == "positive"
        for fmt in ({"dataframe_records": [{"text": "bad"}]}, {"inputs": ["bad"]}, {"inputs": {"text": ["bad"]}},
                    {"instances": ["bad"]}):
            status, body, _ = call(f"{server.url}/invocations", fmt)
            assert status == 200 and body["predictions"][0]["label"] == "negative", (fmt, body)
            assert set(body["predictions"][0]) == {"label", *(f"prob_{c}" for c in LABELS)}
        assert call(f"{server.url}/health")[0] == 200 and call(f"{server.url}/ready")[0] == 200
        _, metrics, _ = call(f"{server.url}/metrics")
    for code in (400, 413, 415, 422):
        assert f'distillery_serving_errors_total{{code="{code}"}}' in metrics
    assert "distillery_serving_latency_seconds_bucket" in metrics
    assert 'distillery_serving_requests_total{code="200",path="/invocations"}' in metrics


def test_parse_rows_units():
    cols, limits = ["text"], Limits()
    assert parse_rows({"dataframe_split": {"columns": ["text"], "data": [["a"], ["b"]]}}, cols, limits) == [("a",), ("b",)]
    pairs = ["text", "text_pair"]
    assert parse_rows({"dataframe_records": [{"text_pair": "b", "text": "a"}]}, pairs, limits) == [("a", "b")]
    assert parse_rows({"inputs": {"text": ["a"], "text_pair": ["b"]}}, pairs, limits) == [("a", "b")]
    assert parse_rows({"dataframe_split": {"columns": ["text_pair", "text"], "data": [["b", "a"]]}}, pairs, limits) == [("a", "b")]
    with pytest.raises(InputError, match="row 0 has 1 value"):
        parse_rows({"inputs": ["only one"]}, pairs, limits)
    with pytest.raises(InputError, match="true|bool"):
        parse_rows({"inputs": [True]}, cols, limits)


# ---------- shadow, prediction log, feedback, report, promote --require-shadow ----------

LABELLED = [("good movie", "positive"), ("bad movie", "negative"), ("great", "positive"), ("awful", "negative"),
            ("the movie was great", "positive"), ("awful awful", "negative"), ("good but awful", "negative"),
            ("meh", "negative"), ("great bad", "negative"), ("fine", "positive")]


def test_shadow_feedback_report_equal_a_hand_count_and_gate_promotion(project, tmp_path, capsys):
    from distillery_cli.cli import main
    from tasks.promotion import current_champion, rollback

    log_path = tmp_path / "predictions.db"
    with start(project, tmp_path, shadow_alias="challenger") as server:
        ids = []
        for i, (text, _) in enumerate(LABELLED):
            status, body, headers = score(server.url, [text], rid=f"req-{i}")
            assert status == 200 and headers["X-Request-Id"] == f"req-{i}" == body["request_id"]
            ids.append(body["request_id"])
        unlabelled = score(server.url, ["good", "awful great"])[1]["request_id"]  # 2 rows, never labelled
        app_state = server.server.config.app.state
        app_state.shadow_worker.drain()
        # half the labels by the endpoint, half by `distillery feedback FILE`
        half = len(LABELLED) // 2
        status, body, _ = call(f"{server.url}/feedback", {"feedback": [
            {"request_id": ids[i], "label": LABELLED[i][1]} for i in range(half)]})
        assert status == 200 and body == {"stored": half}
        status, body, _ = call(f"{server.url}/feedback", {"request_id": "nope", "label": "positive"})
        assert status == 404 and "nope" in body["message"]
        status, body, _ = call(f"{server.url}/feedback", {"request_id": ids[0], "label": "sideways"})
        assert status == 422 and "sideways" in body["message"]
    rows = sqlite3.connect(log_path).execute("SELECT role, version, COUNT(*) FROM predictions GROUP BY role, version").fetchall()
    assert sorted(rows) == [("champion", project["v1"], len(LABELLED) + 2), ("shadow", project["v2"], len(LABELLED) + 2)]
    fb = tmp_path / "labels.csv"
    fb.write_text("request_id,label\n" + "".join(f"{ids[i]},{LABELLED[i][1]}\n" for i in range(half, len(LABELLED))))
    root = str(project["root"])
    assert main(["--project-dir", root, "feedback", str(fb), "--log", str(log_path)]) == 0

    # the hand count
    champ = [label_of(V1, t) for t, _ in LABELLED]
    shadow = [label_of(V2, t) for t, _ in LABELLED]
    truth = [y for _, y in LABELLED]
    extra = ["good", "awful great"]
    agree = sum(a == b for a, b in zip(champ + [label_of(V1, t) for t in extra], shadow + [label_of(V2, t) for t in extra]))
    out = tmp_path / "shadow.json"
    assert main(["--project-dir", root, "shadow-report", "--log", str(log_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["paired_rows"] == len(LABELLED) + 2 and report["labelled_rows"] == len(LABELLED)
    assert math.isclose(report["agreement"], agree / (len(LABELLED) + 2))
    acc_c = sum(p == y for p, y in zip(champ, truth)) / len(truth)
    acc_s = sum(p == y for p, y in zip(shadow, truth)) / len(truth)
    assert (report["accuracy"]["champion"], report["accuracy"]["shadow"]) == (acc_c, acc_s)
    assert acc_s > acc_c  # the test set is built so; the comparison below depends on it
    a_only = sum(c == y != s for c, s, y in zip(champ, shadow, truth))
    b_only = sum(s == y != c for c, s, y in zip(champ, shadow, truth))
    assert (report["paired"]["a_only_correct"], report["paired"]["b_only_correct"]) == (a_only, b_only)
    assert report["paired"]["mcnemar_p"] == pytest.approx(min(1.0, 2 * 0.5 ** (a_only + b_only) * sum(
        math.comb(a_only + b_only, k) for k in range(min(a_only, b_only) + 1))))
    assert report["latency"]["champion"]["n"] == len(LABELLED) + 1 == report["latency"]["shadow"]["n"]
    assert f"{100 * acc_s:.2f}%" in printed and "McNemar" in printed
    page = out.with_suffix(".html").read_text()
    assert f"{100 * acc_s:.2f}%" in page and "NOT WORSE" in page and "http" not in page
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,label\nreq-0,\n")
    assert main(["--project-dir", root, "feedback", str(bad), "--log", str(log_path)]) == 2
    assert "record 1 needs request_id and label" in capsys.readouterr().err

    # promote --require-shadow: too few labelled rows refused, then enough rows and not worse: promoted
    v2 = project["v2"]
    assert main(["--project-dir", root, "promote", v2, "--require-shadow", str(len(LABELLED) + 1),
                 "--log", str(log_path)]) == 1
    assert "fewer than --require-shadow" in capsys.readouterr().err
    assert current_champion(project["client"], NAME) == project["v1"]
    assert main(["--project-dir", root, "promote", v2, "--require-shadow", str(len(LABELLED)),
                 "--log", str(log_path)]) == 0
    assert current_champion(project["client"], NAME) == v2
    rollback(project["client"].tracking_uri, project["client"], NAME, reason="test cleanup")


def test_slow_or_failing_shadow_never_touches_the_response(tmp_path):
    model = load_served_model("1", make_onnx_classifier(tmp_path / "m", V1), 1)

    class Slow(ServedModel):
        def score(self, rows):
            time.sleep(0.5)
            raise RuntimeError("challenger broke")

    champion, shadow = ModelSlot("champion"), ModelSlot("shadow")
    champion.swap(model)
    shadow.swap(Slow("9", model.classifier, model.columns))
    state = ServingState(champion=champion, shadow=shadow, log=PredictionLog(tmp_path / "log.db"), shadow_queue_size=1)
    with ServerThread(create_app(state), free_port()) as server:
        times = []
        for _ in range(6):
            t0 = time.perf_counter()
            status, body, _ = score(server.url, ["good"])
            times.append(time.perf_counter() - t0)
            assert status == 200 and body["model_version"] == "1"
        _, metrics, _ = call(f"{server.url}/metrics")
    assert max(times) < 0.4, times  # the shadow sleeps 0.5 s per request
    assert "distillery_serving_shadow_dropped_total" in metrics
    dropped = float(next(l for l in metrics.splitlines() if l.startswith("distillery_serving_shadow_dropped_total")).split()[-1])
    assert dropped >= 3  # a queue of one: most requests are skipped, never waited for
    from distillery.serving.app import Metrics, ShadowWorker

    worker = ShadowWorker(ServingState(champion=champion, shadow=shadow), Metrics())
    worker.submit("r", [("good",)], time.time(), champion_version="9")  # challenger promoted: same version
    assert worker.queue.qsize() == 0
    worker.submit("r", [("good",)], time.time(), champion_version="1")
    assert worker.queue.qsize() == 1


def test_restart_keeps_the_log_and_retention_bounds_it(project, tmp_path):
    first = []
    with start(project, tmp_path, log_text=True) as server:
        for i in range(3):
            first.append(score(server.url, ["good movie"], rid=f"run1-{i}")[1]["request_id"])
    with start(project, tmp_path) as server:
        score(server.url, ["bad movie"], rid="run2-0")
        status, body, _ = call(f"{server.url}/feedback", {"request_id": first[0], "label": "positive"})
        assert status == 200, body
    conn = sqlite3.connect(tmp_path / "predictions.db")
    rows = conn.execute("SELECT request_id, role, text FROM predictions ORDER BY seq").fetchall()
    assert rows == [(r, "champion", "good movie") for r in first] + [("run2-0", "champion", None)]  # text only with --log-text
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT request_id, label FROM feedback").fetchall() == [(first[0], "positive")]
    conn.close()
    log = PredictionLog(tmp_path / "predictions.db", Retention(max_rows=2, max_age_days=None))
    assert log.prune() == 2
    log.close()
    kept = sqlite3.connect(tmp_path / "predictions.db").execute("SELECT request_id FROM predictions").fetchall()
    assert kept == [(first[2],), ("run2-0",)]
    log = PredictionLog(tmp_path / "predictions.db", Retention(max_rows=None, max_age_days=1))
    assert log.prune(now=time.time() + 2 * 86400) == 2
    log.close()


def test_paired_accuracy_by_hand():
    truth = list("aaaaabbbbb")
    a = list("aaaaaaaaaa")  # right on 5
    b = list("aaabbbbbbb")  # right on 3 + 5 = 8; a only right on 2, b only right on 5
    r = paired_accuracy(truth, a, b, n_boot=500)
    assert (r["accuracy_a"], r["accuracy_b"], r["difference"]) == (0.5, 0.8, pytest.approx(0.3))
    assert (r["a_only_correct"], r["b_only_correct"]) == (2, 5)
    assert r["mcnemar_p"] == pytest.approx(2 * (1 + 7 + 21) / 2 ** 7)  # two-sided exact binomial, 2 of 7
    assert r["ci"][0] <= 0.3 <= r["ci"][1]
    assert paired_accuracy([], [], [])["n"] == 0


def test_serve_model_cli_as_a_subprocess(project, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "distillery_cli", "--project-dir", str(project["root"]),
                             "serve-model", "--port", str(port), "--log", str(tmp_path / "p.db"),
                             "--poll-interval", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ready", proc, timeout=120)
        status, body, headers = call(f"http://127.0.0.1:{port}/invocations", {"inputs": ["great"]})
        assert status == 200 and body["model_version"] == headers["X-Model-Version"] == project["v1"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert sqlite3.connect(tmp_path / "p.db").execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 1


def test_two_writers_share_one_log(tmp_path):
    """Two server processes may log to one file: separate connections, WAL, busy timeout; nothing lost."""
    path = tmp_path / "shared.db"
    code = ("import sys; from distillery.serving.predlog import PredictionLog; log = PredictionLog(sys.argv[1]);\n"
            "[log.record(f'{sys.argv[2]}-{i}', 'champion', '1', [('t',)], [{'label': 'a', 'probabilities': {'a': 1.0}}], 1.0)"
            " for i in range(300)]\nlog.close()")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), name], env=env) for name in ("a", "b")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    counts = sqlite3.connect(path).execute("SELECT substr(request_id, 1, 1), COUNT(*) FROM predictions GROUP BY 1").fetchall()
    assert sorted(counts) == [("a", 300), ("b", 300)]


def test_the_serving_core_does_not_import_mlflow():
    code = ("import sys, distillery.serving.app, distillery.serving.server, distillery.serving.shadow_report;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tasks', 'prefect', 'torch'));"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_follower_keeps_serving_through_a_broken_version_and_a_registry_outage(tmp_path):
    from distillery.serving.models import AliasFollower

    dirs = {"1": make_onnx_classifier(tmp_path / "v1", V1), "2": tmp_path / "missing", "3": make_onnx_classifier(tmp_path / "v3", V2)}
    target = {"alias": "1"}

    def resolve(alias):
        if target["alias"] == "down":
            raise ConnectionError("registry unreachable")
        return target["alias"]

    slot = ModelSlot("champion")
    follower = AliasFollower(slot, "champion", resolve, lambda v: dirs[v], interval=0.05, threads=1)
    assert follower.poll_once() and slot.version == "1"
    follower.start()
    try:
        for broken in ("2", "down"):  # a version that cannot be loaded, then no registry at all
            target["alias"] = broken
            failures = follower.failures
            deadline = time.time() + 10
            while follower.failures < failures + 2:
                assert time.time() < deadline
                time.sleep(0.02)
            assert slot.version == "1" and follower.last_error
        target["alias"] = "3"
        deadline = time.time() + 10
        while slot.version != "3":
            assert time.time() < deadline
            time.sleep(0.02)
        assert slot.current.score([("great",)])[0]["label"] == label_of(V2, "great")
    finally:
        follower.stop()
