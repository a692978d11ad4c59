"""A normal run prints none of TensorFlow's C++ log lines; real errors still show."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, call_main, make_tree

from otrain.cli.convert import main as convert_main

#: TensorFlow's C++ log lines: the absl/glog prefix ("E0000 00:00:1795860608.452434  4857 file.cc:682]"),
#: TensorFlow's older prefix ("2025-09-17 14:44:05.157831: E file.cc:467]"), and the known messages.
TF_LOG_LINE = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ |^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "
    r"|oneDNN custom operations|absl::InitializeLog|Unable to register cu|computation placer|cuda_"
    r"|This TensorFlow binary is optimized|NodeDef mentions attribute",
    re.MULTILINE,
)


def tensorflow_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if TF_LOG_LINE.search(line)]


def test_the_pattern_knows_tensorflow_lines() -> None:
    seen = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1795865218.469916    2790 port.cc:153] oneDNN custom operations are on.\n"
        "2025-09-17 14:44:05.176998: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:467] Unable\n"
        "W0000 00:00:1795865218.516801    2790 some_file.cc:12] any message\n"
        "E1128 10:10:03.678068    2790 other.cc:766] any message\n"
        "otrain-train: info: training on the CPU\n"
    )
    assert len(tensorflow_lines(seen)) == 5


def test_training_and_scoring_print_no_tensorflow_log_lines(tmp_path: Path) -> None:
    cutouts = make_tree(tmp_path / "cutouts", 40, 40, size=32)
    assert call_main(convert_main, "--path", tmp_path, "--cube", "cube", "--cutouts", cutouts) == 0
    env = {**os.environ, "OTRAIN_PROGRESS": "0", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    # As in the container images, which show TensorFlow's errors (level 2): an error line about
    # otrain's own input pipeline would show there.
    cube, models = tmp_path / "datacube" / "cube.npz", tmp_path / "models"
    train = subprocess.run(
        [BIN / "otrain-train", "--cube", cube, "--model-path", models, "--model-name", "m", "--epochs", "1"],
        capture_output=True,
        text=True,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert train.returncode == 0, train.stderr
    model = tmp_path / "models" / "CNN_training" / "m" / "m.keras"
    scoring = [BIN / "otrain-infer", "--cutouts", cutouts / "true", "--model", model, "--output", tmp_path / "s.dat"]
    infer = subprocess.run([*scoring, "--backend", "keras"], capture_output=True, text=True, env=env)
    assert infer.returncode == 0, infer.stderr
    onnx = subprocess.run([*scoring, "--overwrite"], capture_output=True, text=True, env=env)
    assert onnx.returncode == 0, onnx.stderr
    assert tensorflow_lines(train.stderr) == []
    assert tensorflow_lines(infer.stderr) == []
    assert tensorflow_lines(onnx.stderr) == []
    # otrain's own messages still reach standard error.
    assert "otrain-train: info: training on the CPU" in train.stderr
    assert "otrain-infer: info: TensorFlow" in infer.stderr
    assert "TensorFlow" not in onnx.stderr  # its ONNX twin scores: TensorFlow is not even imported


# Writes to file descriptor 2 inside filter_native_logs as TensorFlow's libraries do, then ends
# as asked: normally, with a Python exception, or with a C++ fatal error (a record, then abort).
WRITER = r"""
import os, sys
from otrain.cli.tf_setup import filter_native_logs
with filter_native_logs(int(sys.argv[1])):
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"I0000 00:00:1795865218.469916    2790 port.cc:153] oneDNN custom operations are on.\n")
    os.write(2, b"E0000 00:00:1795865218.516801    2790 cuda_dnn.cc:8579] Unable to register cuDNN factory\n")
    os.write(2, b"2025-09-17 14:44:05.157831: I external/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda\n")
    os.write(2, b"a line of its own\n")
    print("from Python", file=sys.stderr)
    if sys.argv[2] == "fatal":
        os.write(2, b"F0000 00:00:1795865218.6    2790 cpu_feature_guard.cc:191] compiled to use AVX\n")
        os.abort()
    if sys.argv[2] == "raise":
        raise RuntimeError("a real error")
print("after the block", file=sys.stderr)
"""


def run_writer(level: int, end: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WRITER, str(level), end], capture_output=True, text=True)


def test_log_records_below_the_level_are_dropped_the_rest_kept_in_order() -> None:
    quiet = run_writer(3, "normally")
    assert quiet.returncode == 0
    assert quiet.stderr == "a line of its own\nfrom Python\nafter the block\n"
    errors = run_writer(2, "normally")
    assert errors.stderr.splitlines() == [
        "E0000 00:00:1795865218.516801    2790 cuda_dnn.cc:8579] Unable to register cuDNN factory",
        "a line of its own",
        "from Python",
        "after the block",
    ]
    assert len(run_writer(0, "normally").stderr.splitlines()) == 7


@pytest.mark.parametrize("end", ["raise", "fatal"])
def test_real_errors_still_show(end: str) -> None:
    result = run_writer(3, end)
    assert result.returncode != 0
    assert "oneDNN" not in result.stderr
    assert "a line of its own" in result.stderr
    if end == "raise":
        assert result.stderr.rstrip().endswith("RuntimeError: a real error")
    else:  # the record written just before the process died
        assert result.stderr.splitlines()[-1].endswith("cpu_feature_guard.cc:191] compiled to use AVX")
