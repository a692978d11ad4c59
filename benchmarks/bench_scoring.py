"""Scoring speed of every backend, and the arithmetic rate each reaches against the machine's peak.

On the N cached simulated 64x64 cutouts (default 20,000, the difference plane that otrain-infer
reads by default) and the O'TRAIN network (untrained weights: the cost is the same), saved as
``.h5`` like an original O'TRAIN model and given its ONNX twin and int8 model by the real
``otrain-export``:

1. Rows, in cutouts per second: ``otrain-infer --backend onnx`` and ``--backend keras`` end to
   end (the console script in a subprocess: wall time with start-up, and the rate it reports
   itself), Keras ``predict_on_batch`` and ONNX Runtime alone on the pixels in memory (batch
   256, through ``otrain.score.scoring.predict`` as otrain-infer calls it), and the int8 model in
   ONNX Runtime; ONNX Runtime alone is measured twice, one run at a time with a thread per core,
   and as otrain-infer runs it, several single-threaded runs at once
   (``otrain.score.inference.scoring_threads``); the goal compares with the faster of the two. The
   same network with ``normalisation="robust"`` (otrain's training default)
   is measured with ONNX Runtime alone, ``otrain-infer --backend onnx`` and Keras, to show what
   the normalisation costs. Every row is the median of ``--runs`` runs (default 3).
2. Start-up of a small scoring job: ``otrain-infer`` on 10 cutouts, ``--backend onnx`` (no
   TensorFlow import) against ``--backend keras``; wall time, median of ``--runs``.
3. int8: ``otrain-export --quantize int8`` judged on a labelled cube that ``otrain-convert``
   makes of ``--train-cutouts`` survey cutouts (the twin is checked again on it, and may be
   refused). The card's ``onnx_int8.evaluation`` (ROC AUC and decisions moved) means nothing on
   untrained weights, so the same network is also trained for ``--train-epochs`` epochs with
   ``otrain-train`` on that cube and its int8 model judged on its test set. When the untrained
   model's int8 is refused, the int8 row measures the trained one (same network, same cost).
4. The arithmetic rate: the network's FLOP counted per layer (Conv2D 2 x H_out x W_out x k x k x
   C_in x C_out, Dense 2 x in x out; pooling, activations and the normalisation not counted)
   times each row's rate, as a fraction of the peak FP32 rate of the cores this process may
   use: cores x clock x lanes x 2 (an FMA is two FLOP) x FMA units. The clock and the FMA
   throughput are measured by ``peak.c`` (built with gcc here); the lanes come from the
   /proc/cpuinfo flags (avx512f: 16, avx2: 8). Without gcc the clock is the one /proc/cpuinfo
   states, and the output says so.
5. The original O'TRAIN ``infer``, with ``--original PATH`` (a checkout of the original
   package): run in its own process (PYTHONPATH=PATH) on a flat folder of the single-HDU
   cutouts (it reads no other), beside ``otrain-infer --backend onnx`` on the same folder.

Goals: ``otrain-infer --backend onnx`` end to end at least 0.9x ONNX Runtime alone; the float
model in ONNX Runtime at 40 % or more of the peak; otrain-infer at least 2x the original's infer.
On a shared machine other processes slow a row down: the load average is recorded at the start
and the end, and every row the CPU that other processes took while it was measured (from
/proc/stat, less this process and its children); a row during which they took more than
``--max-others`` cores is measured again, up to ``--retries`` times, and the least disturbed
attempt is kept.

Run: ``.venv/bin/python benchmarks/bench_scoring.py [--n 20000] [--original PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OTRAIN_PROGRESS", "0")

import numpy as np
from bench_infer import linked_folder
from common import BIN, HERE, RESULTS, simulated_survey

from otrain.io.cutouts import list_cutouts
from otrain.io.layout import card_file
from otrain.io.parallel import default_workers
from otrain.options import PREDICT_BATCH

#: The O'TRAIN network's input: 64x64 cutouts, one plane (the difference, otrain-infer's default).
SHAPE = (64, 64, 1)
#: What otrain-infer prints at the end of a run.
SCORED = re.compile(r"scored (\d+) of (\d+) cutouts in ([\d.]+) s")
#: prctl(2) option: orphaned descendants are reparented to this process.
PR_SET_CHILD_SUBREAPER = 36
GOAL_E2E_VS_ORT = 0.9
GOAL_PEAK_FRACTION = 0.40
GOAL_VS_ORIGINAL = 2.0


def adopt_orphans() -> None:
    """Become the reaper of orphaned descendants (Linux), so that their CPU time counts as this process's children's.

    otrain-infer's reading workers are children of a multiprocessing fork server that nobody
    waits for: without this their CPU time would be counted as other processes'.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_orphans(timeout: float = 10.0) -> None:
    """Wait for the descendants a finished command left behind (see :func:`adopt_orphans`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # no child left
            return
        if pid == 0:
            time.sleep(0.02)


def cpu_seconds() -> tuple[float, float, float]:
    """CPU seconds used so far by the machine (/proc/stat) and by this process and its finished children; the time."""
    fields = [float(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _, _, irq, softirq = fields
    own = os.times()
    own_seconds = own.user + own.system + own.children_user + own.children_system
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK"), own_seconds, time.perf_counter()


def other_cores(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Cores other processes used on average between two :func:`cpu_seconds` readings."""
    machine, own, wall = (end - start for start, end in zip(before, after, strict=True))
    return max(0.0, (machine - own) / wall)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_flags() -> set[str]:
    """The flags of the first processor in /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_field(name: str) -> str:
    """A field of the first processor in /proc/cpuinfo ("" when absent)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.split(":", 1)[0].strip() == name:
            return line.split(":", 1)[1].strip()
    return ""


def measure_peak(cores: int) -> dict[str, Any]:
    """The peak FP32 rate of ``cores`` cores: clock and FMA throughput measured by peak.c, lanes from the flags."""
    flags = cpu_flags()
    width = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    lanes = width // 32
    record: dict[str, Any] = {
        "cpu": cpu_field("model name"),
        "cores": cores,
        "vector_bits": width,
        "lanes_fp32": lanes,
        "flags_used": "avx512f" if width == 512 else "avx2" if width == 256 else "sse",
        "kernel_clock_ghz": round(float(cpu_field("cpu MHz") or 0) / 1000, 3),
    }
    gcc = shutil.which("gcc")
    if gcc is None or "fma" not in flags or width == 128:
        record.update(
            clock_ghz=record["kernel_clock_ghz"],
            clock_source="/proc/cpuinfo 'cpu MHz' (not measured: " + ("no gcc)" if gcc is None else "no FMA)"),
            fma_units=2,
            fma_units_source="assumed",
            fma_gflops_core=None,
            fma_gflops_all=None,
        )
    else:
        with tempfile.TemporaryDirectory() as scratch:
            binary = Path(scratch) / "peak"
            subprocess.run([gcc, "-O2", "-o", str(binary), str(HERE / "peak.c")], check=True)
            single = _parse_peak(subprocess.run([str(binary), str(width)], check=True, capture_output=True, text=True))
            # Every core at once: one process each, started together.
            processes = [
                subprocess.Popen([str(binary), str(width)], stdout=subprocess.PIPE, text=True) for _ in range(cores)
            ]
            together = [_parse_peak(process.communicate()[0]) for process in processes]
        per_cycle = single["fma_gflops"] / single["clock_ghz"]
        record.update(
            clock_ghz=round(single["clock_ghz"], 3),
            clock_source="measured (peak.c: chain of dependent additions)",
            fma_units=max(1, round(per_cycle / (2 * lanes))),
            fma_units_source=f"measured ({per_cycle:.1f} FLOP/cycle from the FMA microbenchmark)",
            fma_gflops_core=round(single["fma_gflops"], 1),
            fma_gflops_all=round(sum(result["fma_gflops"] for result in together), 1),
        )
    record["peak_gflops"] = round(cores * record["clock_ghz"] * lanes * 2 * record["fma_units"], 1)
    return record


def _parse_peak(output: subprocess.CompletedProcess[str] | str) -> dict[str, float]:
    text = output if isinstance(output, str) else output.stdout
    return {key: float(value) for key, value in (line.split() for line in text.splitlines() if line.strip())}


def model_flops(model: Any) -> tuple[int, list[tuple[str, int]]]:
    """FLOP of one cutout through a Keras model: Conv2D and Dense layers only, per layer."""
    from keras import layers

    per_layer = []
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, height, width, out_channels = layer.output.shape
            in_channels = layer.input.shape[-1]
            k_height, k_width = layer.kernel_size
            per_layer.append((layer.name, 2 * height * width * k_height * k_width * in_channels * out_channels))
        elif isinstance(layer, layers.Dense):
            per_layer.append((layer.name, 2 * layer.input.shape[-1] * layer.units))
    return sum(flop for _, flop in per_layer), per_layer


def run_command(
    command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, check: bool = True
) -> tuple[float, str, str]:
    """Run a command; return its wall time, standard output and error line ("" when it succeeded).

    With ``check``, a failure ends the benchmark with the command's standard error.
    """
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env or {**os.environ}, cwd=cwd)
    elapsed = time.perf_counter() - started
    reap_orphans()
    if done.returncode == 0:
        return elapsed, done.stdout, ""
    if check:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    return elapsed, done.stdout, (errors or done.stderr.splitlines() or ["failed"])[-1]


def infer_once(folder: Path, model: Path, backend: str, output: Path, recursive: bool = True) -> dict[str, float]:
    """One ``otrain-infer`` run: wall seconds, the cutouts it scored and the seconds it reports."""
    command = [str(BIN / "otrain-infer"), "--cutouts", str(folder), "--model", str(model), "--backend", backend]
    command += ["--output", str(output), *(["--recursive"] if recursive else [])]
    wall, stdout, _ = run_command(command)
    found = SCORED.search(stdout)
    if found is None:
        raise SystemExit(f"otrain-infer printed no 'scored N of M cutouts in S s' line:\n{stdout}")
    return {"wall": wall, "scored": int(found[1]), "reported": float(found[3])}


def median_of(runs: int, measure: Callable[[], dict[str, float]]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Run ``measure`` ``runs`` times; return the median of each figure and every run."""
    results = [measure() for _ in range(runs)]
    return {key: statistics.median(result[key] for result in results) for key in results[0]}, results


def in_memory(classifier: Any, pixels: np.ndarray) -> dict[str, float]:
    """Seconds of ``otrain.score.scoring.predict`` over ``pixels`` in batches of PREDICT_BATCH (as infer calls it)."""
    from otrain.score.scoring import predict

    started = time.perf_counter()
    predict(classifier, pixels, PREDICT_BATCH)
    return {"seconds": time.perf_counter() - started}


def in_memory_concurrent(classifier: Any, pixels: np.ndarray, scorers: int) -> dict[str, float]:
    """Seconds of ``scorers`` threads calling ``predict_on_batch`` on batches of PREDICT_BATCH at once."""
    batches = [pixels[start : start + PREDICT_BATCH] for start in range(0, len(pixels), PREDICT_BATCH)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=scorers) as pool:
        list(pool.map(classifier.predict_on_batch, batches))
    return {"seconds": time.perf_counter() - started}


def read_pixels(files: list[Path]) -> np.ndarray:
    """The cutouts as otrain-infer scores them (DIFF, cropped, finite), EDGE ones left out."""
    from otrain.score.inference import read_for_model

    planes = [plane for plane in (read_for_model(path, SHAPE, None)[1] for path in files) if plane is not None]
    return np.stack(planes)


def single_hdu(files: list[Path]) -> list[Path]:
    """The gmadet-style (single-HDU) cutouts: the only ones the original infer reads."""
    from astropy.io import fits

    kept = []
    for path in files:
        with fits.open(path) as hdus:
            if len(hdus) == 1:
                kept.append(path)
    return kept


def export(model: Path, *extra: str) -> tuple[dict[str, Any], str]:
    """Run the real ``otrain-export`` on a model; return its card and, when it refused, its error line."""
    from otrain.io.card import read_card

    seconds, _, error = run_command([str(BIN / "otrain-export"), "--model", str(model), *extra], check=False)
    print(f"  otrain-export {model.name} {' '.join(extra)}: {seconds:.0f} s {error}", flush=True)
    return read_card(model), error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="simulated cutouts scored")
    parser.add_argument("--data", type=Path, default=RESULTS / "convert-data", help="where the survey is cached")
    parser.add_argument("--runs", type=int, default=3, help="runs of each cheap row (the median is shown)")
    parser.add_argument("--train-cutouts", type=int, default=3_000, help="cutouts of the cube the int8 check trains on")
    parser.add_argument("--train-epochs", type=int, default=2, help="epochs of that training; 0: no training")
    parser.add_argument("--max-others", type=float, default=0.15, help="cores others may take during a row")
    parser.add_argument("--retries", type=int, default=3, help="new attempts at a row that others disturbed")
    parser.add_argument("--pause", type=float, default=30.0, help="seconds to wait before a new attempt")
    parser.add_argument("--original", type=Path, help="a checkout of the original O'TRAIN package, to run its infer")
    arguments = parser.parse_args()
    if arguments.original is not None and not (arguments.original / "otrain" / "cli" / "infer.py").is_file():
        parser.error(f"--original: {arguments.original} holds no otrain/cli/infer.py")

    adopt_orphans()
    result: dict[str, Any] = {"load_start": load_average(), "cutouts_requested": arguments.n}
    print(f"load average at start: {result['load_start']}", flush=True)
    cores = default_workers()
    result["machine"] = peak = measure_peak(cores)
    print(f"peak: {peak['peak_gflops']} GFLOP/s ({peak['clock_source']})", flush=True)

    survey = simulated_survey(arguments.data / "survey", arguments.n, seed=1)
    files = list_cutouts(survey / "true") + list_cutouts(survey / "false")
    work = arguments.data / "scoring"
    work.mkdir(parents=True, exist_ok=True)

    from otrain.cli.tf_setup import prepare_tensorflow

    prepare_tensorflow()  # as otrain-infer --backend keras does: quietly, before Keras
    logging.getLogger("absl").setLevel(logging.ERROR)  # Keras calls .h5 legacy: it is the original's format
    import keras

    from otrain.io.layout import int8_path, twin_path
    from otrain.nets.model import build_model, load_model, save_model
    from otrain.score.backends import OnnxClassifier
    from otrain.score.inference import scoring_threads

    # The labelled subset cube: the int8 models' calibration and judgement, and the check training.
    name = f"subset{arguments.train_cutouts}"
    half = arguments.train_cutouts // 2
    linked_folder(list_cutouts(survey / "true"), work / name / "true", half)
    linked_folder(list_cutouts(survey / "false"), work / name / "false", arguments.train_cutouts - half)
    cube = work / "datacube" / f"{name}.npz"
    if not cube.exists():
        run_command([str(BIN / "otrain-convert"), "--path", str(work), "--cube", name, "--cutouts", str(work / name)])

    keras.utils.set_random_seed(1)
    models = {}
    for normalisation in ("none", "robust"):
        path = work / f"otrain64_{normalisation}.h5"
        for stale in (card_file(path), twin_path(path), int8_path(path)):
            stale.unlink(missing_ok=True)  # a model saved again gets a new card and twin
        save_model(build_model(SHAPE, normalisation=normalisation), path)
        models[normalisation] = path
    print("exporting (otrain-export)", flush=True)
    for path in models.values():  # parity checked on otrain-export's seeded random cutouts: no test set
        if error := export(path)[1]:
            raise SystemExit(error)
    flop, per_layer = model_flops(load_model(models["none"]))
    result["gflop_per_cutout"] = flop / 1e9
    result["flop_per_layer"] = dict(per_layer)

    # int8 is judged on a labelled cube, on which the twin is checked again (and may be refused).
    int8_checks: dict[str, Any] = {}
    int8_model: tuple[Path, str] | None = None
    card, error = export(models["none"], "--quantize", "int8", "--cube", str(cube))
    int8_checks["untrained"] = {"refused": error} if error else {**card["onnx_int8"]["evaluation"]}
    if not error:
        int8_model = (int8_path(models["none"]), "")
    if arguments.train_epochs > 0:
        trained = work / "CNN_training" / "trained" / "trained.h5"
        command = [str(BIN / "otrain-train"), "--cube", str(cube), "--model-path", str(work)]
        command += ["--model-name", trained.name, "--epochs", str(arguments.train_epochs), "--normalisation", "none"]
        command += ["--calibration", "none", "--no-tracking", "--overwrite"]
        print(f"training {arguments.train_epochs} epochs on {cube.name} for the int8 check", flush=True)
        train_seconds, _, error = run_command(command, check=False)
        if not error:
            card, error = export(trained, "--quantize", "int8")
        int8_checks["trained"] = {"refused": error} if error else {**card["onnx_int8"]["evaluation"]}
        int8_checks["trained"]["train_seconds"] = round(train_seconds, 1)
        if not error and int8_model is None:
            int8_model = (int8_path(trained), f", {arguments.train_epochs}-epoch trained weights")
    result["int8_evaluation"] = int8_checks

    print(f"reading {len(files)} cutouts into memory", flush=True)
    pixels = read_pixels(files)
    n_cutouts = len(pixels)
    result["cutouts_scored"] = n_cutouts
    rows: list[dict[str, Any]] = []

    def quiet(measure: Callable[[], dict[str, float]]) -> tuple[dict[str, float], float, int]:
        """The median of ``--runs`` runs of ``measure``, measured again while other processes took CPU.

        Returns the medians of the least disturbed attempt, the cores other processes used
        during it, and the number of attempts made.
        """
        attempts: list[tuple[dict[str, float], float]] = []
        for attempt in range(arguments.retries + 1):
            if attempt:
                disturbed = attempts[-1][1]
                print(f"    other processes used {disturbed:.2f} cores: again in {arguments.pause:.0f} s", flush=True)
                time.sleep(arguments.pause)
            before = cpu_seconds()
            median = median_of(arguments.runs, measure)[0]
            others = other_cores(before, cpu_seconds())
            attempts.append((median, others))
            if others <= arguments.max_others:
                break
        median, others = min(attempts, key=lambda attempt: attempt[1])
        return median, others, len(attempts)

    def add(row: str, model: str, rate: float, note: str, others: float, attempts: int) -> None:
        """Record a row: its rate, FLOP rate, and the CPU other processes took while it was measured."""
        gflops = rate * flop / 1e9
        # The FP32 peak does not bound int8 arithmetic (VNNI does four times the FP32 operations).
        fraction = None if "int8" in row else round(gflops / peak["peak_gflops"], 3)
        entry = {"row": row, "model": model, "runs": arguments.runs, "cutouts_per_s": round(rate, 1)}
        entry |= {"gflops": round(gflops, 1), "fraction_of_peak": fraction, "note": note}
        entry |= {"other_processes_cores": round(others, 2), "attempts": attempts}
        rows.append(entry)
        print(f"  {row:<48} {model:<7} {rate:8.1f} cutouts/s  (others {others:.2f} cores)", flush=True)

    def ort_alone(path: Path, label: str, model: str) -> None:
        classifier = OnnxClassifier(path)
        classifier.predict_on_batch(pixels[:PREDICT_BATCH])  # warm-up
        median, others, attempts = quiet(lambda: in_memory(classifier, pixels))
        add(label, model, n_cutouts / median["seconds"], "pixels in memory, batch 256", others, attempts)

    scorers, threads = scoring_threads()
    concurrent = f"ONNX Runtime alone, {scorers} runs of {threads} thread{'s' if threads > 1 else ''} at once"

    def ort_concurrent(path: Path, model: str) -> None:
        classifier = OnnxClassifier(path, threads=threads)
        classifier.predict_on_batch(pixels[:PREDICT_BATCH])  # warm-up
        median, others, attempts = quiet(lambda: in_memory_concurrent(classifier, pixels, scorers))
        add(concurrent, model, n_cutouts / median["seconds"], "pixels in memory, batch 256", others, attempts)

    def keras_alone(path: Path, model: str) -> None:
        network = load_model(path)
        network.predict_on_batch(pixels[:PREDICT_BATCH])  # warm-up (graph tracing)
        median, others, attempts = quiet(lambda: in_memory(network, pixels))
        label = "Keras predict_on_batch alone"
        add(label, model, n_cutouts / median["seconds"], "pixels in memory, batch 256", others, attempts)

    def infer_rows(path: Path, backend: str, model: str) -> None:
        output = work / f"scores_{model}_{backend}.dat"
        median, others, attempts = quiet(lambda: infer_once(survey, path, backend, output))
        scored, label = median["scored"], f"otrain-infer --backend {backend}"
        add(f"{label}, end to end (wall)", model, scored / median["wall"], "start-up included", others, attempts)
        add(f"{label}, its reported rate", model, scored / median["reported"], "reading + scoring", others, attempts)

    print("scoring", flush=True)
    ort_alone(twin_path(models["none"]), "ONNX Runtime alone", "none")
    ort_concurrent(twin_path(models["none"]), "none")
    if int8_model is not None:
        ort_alone(int8_model[0], f"ONNX Runtime alone, int8 model{int8_model[1]}", "none")
    infer_rows(models["none"], "onnx", "none")
    infer_rows(models["none"], "keras", "none")
    keras_alone(models["none"], "none")
    ort_alone(twin_path(models["robust"]), "ONNX Runtime alone", "robust")
    infer_rows(models["robust"], "onnx", "robust")
    keras_alone(models["robust"], "robust")

    small = linked_folder(files, work / "small10", 10)
    startup = {}
    for backend in ("onnx", "keras"):

        def small_job(backend: str = backend) -> dict[str, float]:
            return infer_once(small, models["none"], backend, work / "small10.dat", recursive=False)

        median, others, _ = quiet(small_job)
        startup[backend] = {"wall_s": round(median["wall"], 2), "other_processes_cores": round(others, 2)}
    result["startup_10_cutouts"] = startup

    original: dict[str, Any] = {"measured": False, "note": "no --original checkout given"}
    if arguments.original is not None:
        gmadet = single_hdu(files)
        flat = linked_folder(gmadet, work / "flat_single_hdu", len(gmadet))
        code = "import sys; from otrain.cli.infer import main; sys.argv[0] = 'otrain-infer'; main()"
        command = [sys.executable, "-c", code, "--cutouts", str(flat), "--model", str(models["none"])]
        environment = {**os.environ, "PYTHONPATH": str(arguments.original.resolve())}
        with tempfile.TemporaryDirectory() as scratch:
            theirs, others, attempts = quiet(
                lambda: {"wall": run_command(command, env=environment, cwd=Path(scratch))[0]}
            )
        ours = quiet(lambda: infer_once(flat, models["none"], "onnx", work / "flat.dat", recursive=False))[0]
        original = {
            "measured": True,
            "cutouts": len(gmadet),
            "original_wall_s": round(theirs["wall"], 1),
            "otrain_onnx_wall_s": round(ours["wall"], 1),
            "speed_up": round(theirs["wall"] / ours["wall"], 2),
        }
        label = "original O'TRAIN infer, end to end (wall)"
        add(label, "none", len(gmadet) / theirs["wall"], "single-HDU cutouts only", others, attempts)
    result["original"] = original
    result["rows"] = rows
    result["load_end"] = load_average()

    def rate(row: str, model: str = "none") -> float:
        return next(entry["cutouts_per_s"] for entry in rows if entry["row"] == row and entry["model"] == model)

    ort = max(rate("ONNX Runtime alone"), rate(concurrent))
    e2e_wall = rate("otrain-infer --backend onnx, end to end (wall)")
    e2e_reported = rate("otrain-infer --backend onnx, its reported rate")
    ort_fraction = ort * flop / 1e9 / peak["peak_gflops"]
    goals = {
        "onnx_end_to_end_vs_ort": {
            "value": round(e2e_wall / ort, 3),
            "reported_rate_vs_ort": round(e2e_reported / ort, 3),
            "goal": GOAL_E2E_VS_ORT,
            "met": e2e_wall / ort >= GOAL_E2E_VS_ORT,
        },
        "ort_fraction_of_peak": {"value": round(ort_fraction, 3), "goal": GOAL_PEAK_FRACTION},
        "vs_original": {"value": original.get("speed_up"), "goal": GOAL_VS_ORIGINAL},
    }
    goals["ort_fraction_of_peak"]["met"] = ort_fraction >= GOAL_PEAK_FRACTION
    goals["vs_original"]["met"] = None if not original["measured"] else original["speed_up"] >= GOAL_VS_ORIGINAL
    result["goals"] = goals

    print_report(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_scoring.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / 'bench_scoring.json'}")


def print_report(result: dict[str, Any]) -> None:
    """Print the machine, the rows as a Markdown table, the start-up, int8 checks and the goals."""
    machine = result["machine"]
    print()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores usable (otrain.io.parallel.default_workers())")
    print(f"  clock {machine['clock_ghz']} GHz, {machine['clock_source']}; ", end="")
    print(f"the kernel says {machine['kernel_clock_ghz']} GHz")
    print(f"  vector width {machine['vector_bits']} bits ({machine['flags_used']} in /proc/cpuinfo flags): ", end="")
    print(f"{machine['lanes_fp32']} FP32 lanes; FMA units {machine['fma_units']} ({machine['fma_units_source']})")
    print(
        f"  peak FP32 = {machine['cores']} cores x {machine['clock_ghz']} GHz x {machine['lanes_fp32']} lanes x 2 "
        f"(FMA) x {machine['fma_units']} FMA units = {machine['peak_gflops']} GFLOP/s"
    )
    if machine["fma_gflops_core"] is not None:
        print(
            f"  FMA microbenchmark: {machine['fma_gflops_core']} GFLOP/s on one core, {machine['fma_gflops_all']} "
            f"on {machine['cores']} at once"
        )
    print(f"  load average: {result['load_start']} at start, {result['load_end']} at end")
    print(f"network: O'TRAIN CNN, 64x64x1, {result['gflop_per_cutout']:.3f} GFLOP per cutout (Conv2D + Dense)")
    print(f"cutouts: {result['cutouts_scored']} simulated (EDGE ones left out)\n")
    print("| Scoring | Normalisation | Runs | Cutouts/s | GFLOP/s | Of FP32 peak | Others' CPU (cores) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in result["rows"]:
        fraction = "n/a (int8)" if row["fraction_of_peak"] is None else f"{row['fraction_of_peak']:.1%}"
        print(
            f"| {row['row']} | {row['model']} | {row['runs']} | {row['cutouts_per_s']:.0f} | {row['gflops']:.0f} "
            f"| {fraction} | {row['other_processes_cores']:.2f} |"
        )
    startup = result["startup_10_cutouts"]
    print(
        f"\nstart-up, otrain-infer on 10 cutouts (wall, median): --backend onnx {startup['onnx']['wall_s']} s, "
        f"--backend keras {startup['keras']['wall_s']} s"
    )
    for name, check in result["int8_evaluation"].items():
        if "refused" in check:
            print(f"int8 of the {name} model: not written, {check['refused']}")
            continue
        meaning = " (untrained weights: meaningless)" if name == "untrained" else ""
        print(
            f"int8 on the {name} model{meaning}: ROC AUC {check['roc_auc_float']:.4f} -> {check['roc_auc_int8']:.4f} "
            f"({check['roc_auc_shift']:+.4f}), {check['decisions_changed']:.2%} of decisions changed at "
            f"{check['threshold']} on {check['cutouts']} cutouts"
        )
    goals = result["goals"]

    def verdict(met: bool | None) -> str:
        return "not measured" if met is None else "met" if met else "not met"

    print("\ngoals:")
    e2e = goals["onnx_end_to_end_vs_ort"]
    print(
        f"  otrain-infer --backend onnx end to end >= {e2e['goal']}x ONNX Runtime alone: {e2e['value']:.2f}x "
        f"(its reported rate {e2e['reported_rate_vs_ort']:.2f}x): {verdict(e2e['met'])}"
    )
    peak = goals["ort_fraction_of_peak"]
    print(f"  float model in ONNX Runtime >= {peak['goal']:.0%} of peak: {peak['value']:.1%}: {verdict(peak['met'])}")
    original = goals["vs_original"]
    shown = "" if original["value"] is None else f"{original['value']:.2f}x: "
    print(f"  otrain-infer >= {original['goal']}x the original's infer: {shown}{verdict(original['met'])}")
    if not result["original"]["measured"]:
        print(f"    ({result['original']['note']})")


if __name__ == "__main__":
    main()
