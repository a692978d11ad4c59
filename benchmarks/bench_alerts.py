"""Scoring alert packets: otrain-infer on packets, a tarball and FITS files; Spark; streaming latency.

The benchmark writes ``n`` simulated ZTF-layout alerts (63x63 float32 stamps of noise and a
point source, gzipped as ZTF's are, science/template/difference) once, three ways: one Avro
packet per file (ZTF's way), the same files in one ``.tar.gz`` nightly archive, and the same
alerts as STDPipe FITS files (``IMAGE``/``TEMPLATE``/``DIFF`` extensions, gzipped). One O'TRAIN
CNN on the three planes (untrained weights: the cost is the same) with its ONNX twin scores
them, each run as the command a user types (a fresh process; start-up included in the wall time):

1. ``otrain-infer`` on the FITS folder (the baseline), the packet folder and the tarball:
   alerts/s. Goals: packets >= 0.8x FITS; tarball >= 0.8x the packet folder;
2. ``otrain-infer-spark --master local[2]`` on a night of ``--night`` packets (hard links cycling
   over the ``n``), against ``otrain-infer`` on the same night, wall time with start-up. Goal
   >= 0.7x; and the same on the ``n`` FITS files (goal >= 0.7x) and on a night of ``--night``
   FITS files (hard links too);
3. ``otrain-infer-spark --stream --trigger 10`` on a folder where packets land in batches: the
   latency from a packet landing to its row being written (median, p95; goal < 60 s) and the
   steady throughput;
4. with ``--real-packets DIR --real-fits DIR`` (real ZTF packets and a folder holding the same
   alerts as STDPipe FITS files, ``ztf_<candid>.fits.gz``, anywhere below it): each packet's
   planes against its FITS twin's, its metadata against the twin's header, and the P(real)
   that ``otrain-infer`` gives each, with ``--real-model`` (a model of their input, trained
   on such cutouts) or the untrained network.

Run: ``.venv/bin/python benchmarks/bench_alerts.py [--n 20000] [--night 100000] [--parts 1,2,3]``.
Writes ``benchmarks/results/bench_alerts.json`` (the parts not run keep their last figures).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OTRAIN_PROGRESS", "0")

from common import RESULTS

STAMP = 63
CROP = 48
PLANES = ("IMAGE", "TEMPLATE", "DIFF")
_CHUNK = 500


def _alert(index: int) -> Any:
    """Simulated alert number ``index``: noise, a Gaussian source, a fixed seed per alert."""
    import numpy as np

    from otrain.simulate.packets import PacketAlert

    rng = np.random.default_rng(index)
    y, x = np.mgrid[:STAMP, :STAMP] - STAMP // 2
    source = 400.0 * np.exp(-(x**2 + y**2) / (2 * 1.2**2))
    template = rng.normal(100.0, 5.0, (STAMP, STAMP)).astype(np.float32)
    science = (template + source + rng.normal(0.0, 5.0, (STAMP, STAMP))).astype(np.float32)
    planes = {"IMAGE": science, "TEMPLATE": template, "DIFF": (science - template).astype(np.float32)}
    return PacketAlert(candid=2_000_000_000_000_000_000 + index, object_id=f"ZTF26bench{index:07d}", planes=planes)


def _write_chunk(start: int, stop: int, packets: Path, fits_folder: Path) -> None:
    """Write alerts start..stop-1 as packets and as STDPipe FITS files."""
    import gzip
    import io

    from astropy.io import fits

    from otrain.simulate.packets import write_packets, ztf_record, ztf_schema

    for index in range(start, stop):
        alert = _alert(index)
        write_packets(packets / f"{alert.candid}.avro", [ztf_record(alert)], ztf_schema())
        primary = fits.PrimaryHDU()
        header = primary.header
        header["NAME"] = str(alert.candid)
        header["FILE"] = alert.object_id
        header["RA"], header["DEC"], header["X"], header["Y"] = alert.ra, alert.dec, alert.xpos, alert.ypos
        header["HIERARCH mag_calib"], header["HIERARCH mag_calib_err"] = alert.mag, alert.magerr
        header["FWHM"], header["EDGE"] = alert.fwhm, False
        extensions = [fits.ImageHDU(alert.planes[plane], name=plane) for plane in PLANES]
        extensions[-1].header["FILTER"] = alert.band
        buffer = io.BytesIO()
        fits.HDUList([primary, *extensions]).writeto(buffer)
        (fits_folder / f"ztf_{alert.candid}.fits.gz").write_bytes(gzip.compress(buffer.getvalue(), 6, mtime=0))


def write_alerts(folder: Path, n: int) -> tuple[Path, Path, Path]:
    """Write the ``n`` alerts as packets, a tarball of them and FITS files, once (cached by a marker)."""
    packets, fits_folder, tarball = folder / "packets", folder / "fits", folder / "night.tar.gz"
    marker = folder / f".complete-{n}"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        packets.mkdir(parents=True)
        fits_folder.mkdir()
        with ProcessPoolExecutor() as pool:
            jobs = [
                pool.submit(_write_chunk, start, min(start + _CHUNK, n), packets, fits_folder)
                for start in range(0, n, _CHUNK)
            ]
            for job in jobs:
                job.result()
        with tarfile.open(tarball, "w:gz", compresslevel=1) as archive:  # the packets are gzipped already
            for path in sorted(packets.iterdir()):
                archive.add(path, arcname=f"night/{path.name}")
        marker.touch()
    return packets, tarball, fits_folder


def _night(files_folder: Path, folder: Path, count: int, suffix: str = ".avro") -> Path:
    """A folder of ``count`` hard links cycling over the files of ``files_folder`` (no extra disk)."""
    marker = folder / f".complete-{count}"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        files = sorted(files_folder.iterdir())
        for index in range(count):
            os.link(files[index % len(files)], folder / f"p{index:07d}{suffix}")
        marker.touch()
    return folder


def _model(work: Path) -> Path:
    """One untrained O'TRAIN CNN on the three planes, saved with its card's planes and its ONNX twin."""
    model_file = work / "model" / "model.keras"
    if model_file.is_file():
        return model_file
    from otrain.nets.model import build_model, save_model

    model_file.parent.mkdir(parents=True, exist_ok=True)
    save_model(build_model((CROP, CROP, len(PLANES))), model_file)
    subprocess.run([str(Path(sys.executable).parent / "otrain-export"), "--model", str(model_file)], check=True)
    return model_file


def _command(name: str, *args: str | Path) -> list[str]:
    return [str(Path(sys.executable).parent / name), *map(str, args)]


def _timed(name: str, *args: str | Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(_command(name, *args), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed ({result.returncode}): {result.stderr.strip()[-600:]}")
    return time.perf_counter() - started


def _infer(source: Path, model: Path, output: Path) -> float:
    planes = ["--planes", *PLANES]
    return _timed("otrain-infer", "--cutouts", source, "--model", model, "--output", output, "--overwrite", *planes)


def _spark(source: Path, model: Path, output: Path) -> float:
    shutil.rmtree(output, ignore_errors=True)
    planes = ["--planes", *PLANES]
    arguments = ["--cutouts", source, "--model", model, "--output", output, "--master", "local[2]", *planes]
    return _timed("otrain-infer-spark", *arguments, "--backend", "onnx")


def part_files(work: Path, n: int, model: Path) -> dict[str, Any]:
    """otrain-infer on FITS files, packets and a tarball of the same ``n`` alerts."""
    packets, tarball, fits_folder = write_alerts(work / "alerts", n)
    seconds = {
        "fits": _infer(fits_folder, model, work / "fits.dat"),
        "packets": _infer(packets, model, work / "packets.dat"),
        "tarball": _infer(tarball, model, work / "tarball.dat"),
    }
    rates = {name: round(n / value, 1) for name, value in seconds.items()}
    return {
        "n": n,
        "wall_s": {name: round(value, 2) for name, value in seconds.items()},
        "alerts_per_s": rates,
        "packets_vs_fits": round(rates["packets"] / rates["fits"], 3),
        "tarball_vs_folder": round(rates["tarball"] / rates["packets"], 3),
    }


def part_spark(work: Path, n: int, night: int, model: Path) -> dict[str, Any]:
    """Spark local[2] against otrain-infer, start-up included: a night of packets, the FITS files, a night of them."""
    packets, _, fits_folder = write_alerts(work / "alerts", n)
    night_folder = _night(packets, work / "night", night)
    infer_night = _infer(night_folder, model, work / "night.dat")
    spark_night = _spark(night_folder, model, work / "night.parquet")
    infer_fits = _infer(fits_folder, model, work / "fits.dat")
    spark_fits = _spark(fits_folder, model, work / "fits.parquet")
    fits_night = _night(fits_folder, work / "fits-night", night, ".fits.gz")
    infer_fits_night = _infer(fits_night, model, work / "fits-night.dat")
    spark_fits_night = _spark(fits_night, model, work / "fits-night.parquet")
    return {
        "night": night,
        "packets": {
            "infer_wall_s": round(infer_night, 2),
            "spark_wall_s": round(spark_night, 2),
            "spark_vs_infer": round(infer_night / spark_night, 3),
        },
        "fits": {
            "n": n,
            "infer_wall_s": round(infer_fits, 2),
            "spark_wall_s": round(spark_fits, 2),
            "spark_vs_infer": round(infer_fits / spark_fits, 3),
        },
        "fits_night": {
            "n": night,
            "infer_wall_s": round(infer_fits_night, 2),
            "spark_wall_s": round(spark_fits_night, 2),
            "spark_vs_infer": round(infer_fits_night / spark_fits_night, 3),
        },
    }


def _rows_seen(output: Path, seen: dict[str, float]) -> None:
    """Record when each packet's row first appears in the stream's Parquet output."""
    import pyarrow.parquet as pq

    now = time.time()
    for part in output.glob("*.parquet"):
        try:
            names = pq.read_table(part, columns=["filename"])["filename"].to_pylist()
        except Exception:  # a part being written: read it next time
            continue
        for name in names:
            seen.setdefault(Path(name).name.split("#")[0], now)


def part_stream(work: Path, n: int, model: Path, batches: int = 12, every: float = 5.0) -> dict[str, Any]:
    """Latency of ``otrain-infer-spark --stream --trigger 10`` from a packet landing to its row."""
    packets, _, _ = write_alerts(work / "alerts", n)
    files = sorted(packets.iterdir())
    size = max(1, min(len(files) // batches, 500))
    landing, output = work / "landing", work / "stream.parquet"
    for folder in (landing, output, work / "checkpoint"):
        shutil.rmtree(folder, ignore_errors=True)
    landing.mkdir()
    arguments = ["--cutouts", landing, "--model", model, "--output", output, "--master", "local[2]"]
    arguments += ["--planes", *PLANES, "--backend", "onnx", "--stream", "--trigger", "10"]
    arguments += ["--checkpoint", work / "checkpoint"]
    process = subprocess.Popen(_command("otrain-infer-spark", *arguments), stdout=subprocess.DEVNULL)
    landed: dict[str, float] = {}
    seen: dict[str, float] = {}
    try:
        time.sleep(30)  # the JVM and the first (empty) trigger
        for batch in range(batches):
            for path in files[batch * size : (batch + 1) * size]:
                staging = landing.parent / f".{path.name}"
                shutil.copyfile(path, staging)
                os.replace(staging, landing / path.name)  # a packet lands whole
                landed[path.name] = time.time()
            deadline = time.time() + every
            while time.time() < deadline:
                _rows_seen(output, seen)
                time.sleep(0.5)
        deadline = time.time() + 300
        while time.time() < deadline and len(seen) < len(landed):
            _rows_seen(output, seen)
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=300)
    latencies = sorted(seen[name] - landed[name] for name in landed if name in seen)
    span = max(seen.values()) - min(landed.values()) if seen else float("nan")
    return {
        "packets": len(landed),
        "scored": len(latencies),
        "latency_median_s": round(statistics.median(latencies), 1) if latencies else None,
        "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
        "throughput_per_s": round(len(latencies) / span, 1) if seen else None,
    }


def part_real(work: Path, packets: Path, fits_root: Path, model: Path) -> dict[str, Any]:
    """Real packets against their FITS twins: planes, metadata, and P(real) from otrain-infer."""
    import numpy as np
    from astropy.table import Table

    from otrain.io.alerts import Alert, iter_alerts, read_alert
    from otrain.io.cutouts import read_header, read_pixels

    twins_folder = work / "real-twins"
    shutil.rmtree(twins_folder, ignore_errors=True)
    twins_folder.mkdir(parents=True)
    compared: dict[str, Any] = {"packets": 0, "same_planes": 0, "model": str(model)}
    compared["metadata_differences"] = []
    for alert in iter_alerts(packets):
        if not isinstance(alert, Alert):
            continue
        twin = next(fits_root.rglob(f"ztf_{alert.meta.candid}.fits*"), None)
        if twin is None:
            continue
        os.link(twin, twins_folder / twin.name)
        compared["packets"] += 1
        meta, pixels = read_alert(alert, PLANES)
        twin_meta, location = read_header(twin, PLANES)
        twin_pixels = read_pixels(twin, location)
        compared["same_planes"] += int(pixels.shape == twin_pixels.shape and np.array_equal(pixels, twin_pixels, True))
        for key in ("candid", "mag", "magerr", "filter", "fwhm", "edge", "ra", "dec", "file", "xpos", "ypos"):
            if getattr(meta, key) != getattr(twin_meta, key):
                compared["metadata_differences"].append(
                    [str(meta.candid), key, getattr(meta, key), getattr(twin_meta, key)]
                )
    _infer(packets, model, work / "real-packets.dat")
    _infer(twins_folder, model, work / "real-twins.dat")
    from_packets = Table.read(work / "real-packets.dat", format="ascii.commented_header")
    from_twins = Table.read(work / "real-twins.dat", format="ascii.commented_header")
    twin_scores = {str(row["cand_ID"]): float(row["label1"]) for row in from_twins}
    differences = [abs(float(row["label1"]) - twin_scores[str(row["cand_ID"])]) for row in from_packets]
    compared["p_real_max_abs_difference"] = max(differences) if differences else None
    compared["p_real_median_abs_difference"] = statistics.median(differences) if differences else None
    return compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="simulated alerts")
    parser.add_argument("--night", type=int, default=100_000, help="packets of the Spark night")
    parser.add_argument("--parts", default="1,2,3", help="which measurements, comma-separated")
    parser.add_argument("--real-packets", type=Path, help="real packets to compare with their FITS twins")
    parser.add_argument("--real-fits", type=Path, help="the folder holding those FITS twins (searched below)")
    parser.add_argument(
        "--real-model", type=Path, help="the model scoring the real packets and twins (default: the untrained one)"
    )
    parser.add_argument("--work", type=Path, default=RESULTS / "alerts-data", help="where the alerts are cached")
    arguments = parser.parse_args()
    arguments.work.mkdir(parents=True, exist_ok=True)
    model = _model(arguments.work)
    results: dict[str, Any] = {}
    parts = set(arguments.parts.split(","))
    if "1" in parts:
        results["files"] = part_files(arguments.work, arguments.n, model)
        print(json.dumps(results["files"], indent=1), flush=True)
    if "2" in parts:
        results["spark"] = part_spark(arguments.work, arguments.n, arguments.night, model)
        print(json.dumps(results["spark"], indent=1), flush=True)
    if "3" in parts:
        results["stream"] = part_stream(arguments.work, arguments.n, model)
        print(json.dumps(results["stream"], indent=1), flush=True)
    if arguments.real_packets is not None and arguments.real_fits is not None:
        real_model = arguments.real_model or model
        results["real"] = part_real(arguments.work, arguments.real_packets, arguments.real_fits, real_model)
        print(json.dumps(results["real"], indent=1), flush=True)
    RESULTS.mkdir(exist_ok=True)
    # The parts not run this time keep their last figures.
    previous = RESULTS / "bench_alerts.json"
    if previous.is_file():
        results = {**json.loads(previous.read_text(encoding="utf-8")), **results}
    previous.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
