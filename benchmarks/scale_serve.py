"""Scoring over HTTP (otrain-serve, i.e. ``mlflow models serve``) against predict_on_batch in this process.

A 64x64 O'TRAIN CNN with robust scaling (untrained weights: the cost is the same) is saved as
otrain-train logs it (:func:`otrain.score.mlflow_model.save_mlflow_model`) and served by ``otrain-serve`` on
a free loopback port, one worker. On the same pixels (the first ``n`` simulated cutouts, read
as otrain-infer reads them):

- latency of one cutout: ``posts`` POSTs of one cutout each, median and 95th percentile, against
  ``predict_on_batch`` of one cutout in this process;
- throughput: every cutout in POSTs of ``batch`` cutouts, against ``predict_on_batch`` in
  batches of ``batch``.

The JSON bodies are encoded before each POST is timed: the figures are the server's and the
transport's, not the client's encoding (reported apart, as ``client_encode_s``).

Run: ``.venv/bin/python benchmarks/scale_serve.py [--n 2000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OTRAIN_PROGRESS", "0")

import numpy as np
from common import RESULTS, simulated_survey

SIZE = 64


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: bytes) -> list[list[float]]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())["predictions"]


def _pixels(folder: Path, n: int) -> np.ndarray:
    from otrain.io.cutouts import list_cutouts
    from otrain.score.serving import request_body

    files = list_cutouts(folder, recursive=True)[:n]
    return np.asarray(request_body(files, (SIZE, SIZE, 1))["inputs"], dtype=np.float32)


def run(work: Path, n: int, batch: int = 256, posts: int = 50, startup_timeout: float = 300.0) -> dict[str, Any]:
    """Measure latency and throughput over HTTP and in-process on ``n`` simulated cutouts.

    Parameters
    ----------
    work : Path
        Scratch folder: the simulated survey (kept for later runs) and the served model.
    n : int
        Cutouts scored for the throughput.
    batch : int
        Cutouts per POST and per in-process batch.
    posts : int
        One-cutout POSTs timed for the latency.
    startup_timeout : float
        Seconds the server may take to answer /ping.

    Returns
    -------
    dict
        The figures, their ratios, and the server's start-up time.
    """
    from otrain.nets.model import build_model
    from otrain.score.mlflow_model import save_mlflow_model

    pixels = _pixels(simulated_survey(work / f"survey-{SIZE}", n, seed=11, cutout_size=SIZE), n)
    model = build_model((SIZE, SIZE, 1), normalisation="robust")
    folder = work / "served-model"
    shutil.rmtree(folder, ignore_errors=True)
    save_mlflow_model(model, folder, pixels[:2], card={"planes": None})

    # Baseline, in this process.
    model.predict_on_batch(pixels[:batch])
    single = []
    for index in range(posts):
        started = time.perf_counter()
        model.predict_on_batch(pixels[index % n : index % n + 1])
        single.append(time.perf_counter() - started)
    started = time.perf_counter()
    local = np.concatenate([model.predict_on_batch(pixels[i : i + batch]) for i in range(0, n, batch)])
    local_seconds = time.perf_counter() - started

    port = _free_port()
    command = [sys.executable, "-m", "otrain.cli.serve", "--model", str(folder), "--port", str(port)]
    log_path = work / "serve.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(url + "/ping", timeout=5) as response:
                if response.status == 200:
                    break
            if server.poll() is not None or time.perf_counter() - started > startup_timeout:
                raise RuntimeError(f"otrain-serve did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        startup = time.perf_counter() - started
        _post(url + "/invocations", json.dumps({"inputs": pixels[:1].tolist()}).encode())  # warm-up
        latencies = []
        for index in range(posts):
            body = json.dumps({"inputs": pixels[index % n : index % n + 1].tolist()}).encode()
            started = time.perf_counter()
            _post(url + "/invocations", body)
            latencies.append(time.perf_counter() - started)
        http_seconds = encode_seconds = 0.0
        served = []
        for start in range(0, n, batch):
            encode_started = time.perf_counter()
            body = json.dumps({"inputs": pixels[start : start + batch].tolist()}).encode()
            encode_seconds += time.perf_counter() - encode_started
            started = time.perf_counter()
            served += _post(url + "/invocations", body)
            http_seconds += time.perf_counter() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    served_p = np.asarray(served)[:, 1]
    figures = {
        "n": n,
        "batch": batch,
        "posts": posts,
        "server_startup_s": round(startup, 1),
        "latency_http_median_ms": round(1000 * float(np.median(latencies)), 2),
        "latency_http_p95_ms": round(1000 * float(np.percentile(latencies, 95)), 2),
        "latency_local_median_ms": round(1000 * float(np.median(single)), 2),
        "throughput_http_per_s": round(n / http_seconds, 1),
        "throughput_local_per_s": round(n / local_seconds, 1),
        "client_encode_s": round(encode_seconds, 2),
        "max_abs_difference": float(np.max(np.abs(served_p - local[:, 1]))),
    }
    latency_ratio = figures["latency_http_median_ms"] / figures["latency_local_median_ms"]
    figures["latency_ratio_http_to_local"] = round(latency_ratio, 2)
    figures["throughput_ratio_http_to_local"] = round(
        figures["throughput_http_per_s"] / figures["throughput_local_per_s"], 3
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--posts", type=int, default=50)
    options = parser.parse_args()
    figures = run(RESULTS / "scale_serve", options.n, options.batch, options.posts)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
