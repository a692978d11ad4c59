"""Throughput and peak memory of otrain-convert against a plain sequential astropy loop.

Simulates a survey of N labelled 64x64 cutouts (default 20,000; a quarter STDPipe-style), then,
in the same run and on the same files, alternates:

* baseline: one process, ``astropy.io.fits.open`` on every file, read the image plane (DIFF
  for multi-extension files) and the header keywords, stack the pixels;
* otrain-convert: the real command (``--frac-true -1``, so every file is read), as a
  subprocess, with its default worker pool.

Reports cutouts/s of each and their ratio (goal: at least 1.5x on 2 cores), and the peak
memory of otrain-convert (the sum over its processes, sampled) against the cube's size (goal:
at most 2x the cube plus 400 MB). Run: ``make bench`` or
``.venv/bin/python benchmarks/bench_convert.py [--n 20000] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from astropy.io import fits
from common import BIN, RESULTS, run_measured, simulated_survey


def baseline(files: list[Path]) -> float:
    """Plain sequential astropy loop; returns seconds."""
    started = time.perf_counter()
    planes, metadata = [], []
    for path in files:
        with fits.open(path) as hdul:
            data = hdul[0].data
            if data is None:
                data = next(hdu.data for hdu in hdul[1:] if hdu.name == "DIFF")
            header = hdul[0].header
            metadata.append([header.get(key) for key in ("CANDID", "MAG", "MAGERR", "FILTER", "FWHM", "EDGE")])
            planes.append(np.asarray(data, dtype=np.float32))
    np.stack(planes)
    return time.perf_counter() - started


def run_convert(survey: Path, out: Path) -> tuple[float, int]:
    """Run otrain-convert; returns (seconds, peak summed RSS in bytes of its process tree)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [str(BIN / "otrain-convert"), "--path", str(out), "--cube", "bench", "--cutouts", str(survey)]
    return run_measured([*command, "--frac-true", "-1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="number of cutouts (default 20000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=RESULTS / "convert-data", help="where the survey is cached")
    arguments = parser.parse_args()

    survey = arguments.data / "survey"
    print(f"simulating {arguments.n} cutouts into {survey} (cached between runs) ...", flush=True)
    simulated_survey(survey, arguments.n, arguments.seed)
    files = sorted((survey / "true").glob("*.fits")) + sorted((survey / "false").glob("*.fits"))
    cube_bytes = len(files) * 64 * 64 * 4

    baseline_times, convert_times, peaks = [], [], []
    with tempfile.TemporaryDirectory(dir=arguments.data) as scratch:
        for round_number in range(1, arguments.rounds + 1):
            baseline_times.append(baseline(files))
            seconds, peak = run_convert(survey, Path(scratch) / "out")
            convert_times.append(seconds)
            peaks.append(peak)
            print(
                f"round {round_number}: baseline {baseline_times[-1]:.2f} s, otrain-convert {seconds:.2f} s, "
                f"peak {peak / 1e6:.0f} MB",
                flush=True,
            )

    n = len(files)
    baseline_rate, convert_rate = n / min(baseline_times), n / min(convert_times)
    peak = max(peaks)
    memory_goal = 2 * cube_bytes + 400e6
    result = {
        "cutouts": n,
        "cores": psutil.cpu_count(logical=True),
        "baseline_cutouts_per_s": round(baseline_rate, 1),
        "convert_cutouts_per_s": round(convert_rate, 1),
        "speed_ratio": round(convert_rate / baseline_rate, 2),
        "speed_goal": 1.5,
        "cube_mb": round(cube_bytes / 1e6, 1),
        "peak_mb": round(peak / 1e6, 1),
        "peak_over_cube": round(peak / cube_bytes, 2),
        "memory_goal_mb": round(memory_goal / 1e6, 1),
    }
    print()
    print(f"cutouts                      {n}")
    print(f"baseline (astropy loop)      {baseline_rate:8.0f} cutouts/s")
    print(f"otrain-convert               {convert_rate:8.0f} cutouts/s")
    print(f"speed ratio                  {result['speed_ratio']:8.2f}x   (goal >= 1.5x)")
    print(f"cube size                    {cube_bytes / 1e6:8.0f} MB")
    print(f"otrain-convert peak memory   {peak / 1e6:8.0f} MB = {result['peak_over_cube']:.2f}x the cube")
    print(f"memory goal                  {memory_goal / 1e6:8.0f} MB  (2x cube + 400 MB)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_convert.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / 'bench_convert.json'}")


if __name__ == "__main__":
    main()
