"""The CPU image against the host venv: the same commands on the same files, timed both ways.

1. Start-up: ``otrain-train --help`` (no TensorFlow import) and ``otrain-infer`` on one cutout
   (TensorFlow imported, model loaded), median of 3 runs, in the container and on the host.
2. Scoring: ``otrain-infer`` on N cached simulated cutouts (default 10,000; 64x64 untrained
   O'TRAIN CNN, the cost is the same as a trained one) in the container and on the host.
   Goal: the container scores at least 0.95x as fast as the host.
3. The image: its size, and the time of a rebuild when only otrain's code changed (the
   dependency layer cached) against a rebuild with nothing changed.

Needs the image (``make docker-image``) and an engine; like the tests, it starts one when none
runs and stops it after. Run: ``.venv/bin/python benchmarks/bench_docker.py [--n 10000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OTRAIN_PROGRESS", "0")

from common import BIN, RESULTS, simulated_survey

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "otrain:cpu"


def timed(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> float:
    """Run ``command``; return its wall time in seconds."""
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def median_time(command: list[str], env: dict[str, str], cwd: Path = ROOT, runs: int = 3) -> float:
    return statistics.median(timed(command, env, cwd) for _ in range(runs))


def in_container(folder: Path, *command: str) -> list[str]:
    """``command`` run in the image, as the caller, on ``folder`` mounted at /work."""
    user = f"{os.getuid()}:{os.getgid()}"
    return ["docker", "run", "--rm", "--network", "none", "--user", user, "-v", f"{folder}:/work", IMAGE, *command]


def rebuild_times(env: dict[str, str]) -> tuple[float, float]:
    """Seconds of a rebuild with nothing changed, and of one after a change to otrain's code."""
    build = ["make", "--no-print-directory", "docker-image", f"IMAGE={IMAGE}"]
    unchanged = timed(build, env)
    context = Path(tempfile.mkdtemp(prefix="otrain-bench-context-"))
    try:
        for name in ("pyproject.toml", "README.md", "Makefile", ".dockerignore"):
            shutil.copy(ROOT / name, context / name)
        for name in ("otrain", "requirements", "docker"):
            shutil.copytree(ROOT / name, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        with open(context / "otrain" / "__init__.py", "a") as stream:
            stream.write("\n# a change to the code only\n")
        code_changed = timed([*build[:-1], "IMAGE=otrain:bench-code-change"], env, context)
        subprocess.run(["docker", "image", "rm", "otrain:bench-code-change"], env=env, check=False, capture_output=True)
    finally:
        shutil.rmtree(context)
    return unchanged, code_changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="cutouts to score")
    parser.add_argument("--data", type=Path, default=RESULTS / "docker-data", help="where the data is cached")
    arguments = parser.parse_args()

    started = subprocess.run([str(ROOT / "docker" / "engine.sh"), "start"], capture_output=True, text=True, check=True)
    env = {**os.environ, "DOCKER_HOST": started.stdout.strip(), "OTRAIN_PROGRESS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        from otrain.nets.model import build_model, save_model

        folder = arguments.data.resolve()
        survey = simulated_survey(folder / "survey", arguments.n, seed=3)
        if not (folder / "model.keras").is_file():
            save_model(build_model((64, 64, 1)), folder / "model.keras")
        one = folder / "one"
        one.mkdir(exist_ok=True)
        first = sorted((survey / "true").iterdir())[0]
        shutil.copy(first, one / first.name)

        host_help = median_time([str(BIN / "otrain-train"), "--help"], env)
        container_help = median_time(in_container(folder, "otrain-train", "--help"), env)
        infer_one = ["--cutouts", "one", "--model", "model.keras", "--output", "one.dat", "--no-tracking"]
        host_one = median_time([str(BIN / "otrain-infer"), *infer_one], env, folder)
        container_one = median_time(in_container(folder, "otrain-infer", *infer_one), env)

        infer_all = ["--cutouts", "survey/true", "--model", "model.keras", "--output", "all.dat", "--no-tracking"]
        n_files = len(list((survey / "true").glob("*.fits*")))
        host_all = timed([str(BIN / "otrain-infer"), *infer_all], env, folder)
        container_all = timed(in_container(folder, "otrain-infer", *infer_all), env)
        size = int(
            subprocess.run(
                ["docker", "image", "inspect", "--format", "{{.Size}}", IMAGE],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        unchanged, code_changed = rebuild_times(env)
    finally:
        if "started dockerd" in started.stderr:
            subprocess.run([str(ROOT / "docker" / "engine.sh"), "stop"], check=True)

    results = {
        "image_bytes": size,
        "help_seconds": {"host": host_help, "container": container_help},
        "infer_one_seconds": {"host": host_one, "container": container_one},
        "infer_files": n_files,
        "infer_per_second": {"host": n_files / host_all, "container": n_files / container_all},
        "container_over_host_throughput": host_all / container_all,
        "rebuild_seconds": {"nothing_changed": unchanged, "code_changed": code_changed},
    }
    print(f"image {IMAGE}: {size / 1e9:.2f} GB")
    print(f"otrain-train --help: host {host_help:.2f} s, container {container_help:.2f} s")
    print(f"otrain-infer on 1 cutout: host {host_one:.2f} s, container {container_one:.2f} s")
    print(
        f"otrain-infer on {n_files} cutouts: host {n_files / host_all:.0f}/s, container {n_files / container_all:.0f}/s"
        f" -> ratio {host_all / container_all:.3f} (goal >= 0.95)"
    )
    print(f"rebuild: nothing changed {unchanged:.1f} s, otrain's code changed {code_changed:.1f} s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_docker.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
