"""otrain-infer-spark --stream: real Spark (local[2]) Structured Streaming of real FITS files and alert packets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, call_main, constant_twin, make_tree
from helpers import stop_group

from otrain.cli.infer_spark import main as spark_main
from otrain.io.outputs import INFER_COLUMNS
from otrain.options import PARQUET_MARKER

pyarrow_parquet = pytest.importorskip("pyarrow.parquet")

MASTER = "local[2]"
#: How long a test waits for rows to appear (a loaded machine may take minutes to start Spark).
PATIENCE = 600.0


def streamed_rows(output: Path) -> list[dict[str, object]]:
    """The rows of a stream's output folder, read with pyarrow (the part files the sink logged)."""
    logged = set()
    log = output / "_spark_metadata"
    for entry in sorted(log.iterdir()) if log.is_dir() else []:
        if entry.name.isdigit():  # a batch's log: a version line, then one JSON line per file
            for line in entry.read_text().splitlines()[1:]:
                logged.add(Path(json.loads(line)["path"].removeprefix("file:").removeprefix("//")).name)
    parts = sorted(part for part in output.glob("*.parquet") if part.name in logged)
    rows: list[dict[str, object]] = []
    for part in parts:
        table = pyarrow_parquet.read_table(part)
        assert tuple(table.column_names) == INFER_COLUMNS
        rows.extend(table.to_pylist())
    return rows


def cutout_names(folder: Path) -> set[str]:
    return {str(path) for path in folder.rglob("*.fits")}


@pytest.fixture
def twin_model(trained: Path, tmp_path: Path) -> Path:
    """The session's model with a twin answering 0.75 for every cutout: the executors import no TensorFlow."""
    from otrain.score.twin import restamp_twin

    model = tmp_path / "model" / "tiny.keras"
    model.parent.mkdir()
    shutil.copy(trained / "tiny.keras", model)
    restamp_twin(constant_twin(tmp_path / "constant.onnx", 0.75), model)
    return model


def drop(landing: Path, name: str, n_true: int, n_false: int, **extra: int) -> set[str]:
    """Write a batch of cutouts elsewhere and move it into ``landing`` whole (files appear complete)."""
    staged = make_tree(landing.parent / f"staging-{name}", n_true, n_false, size=40, **extra)
    staged.rename(landing / name)
    return cutout_names(landing / name)


@pytest.mark.slow
def test_available_now_runs_score_every_file_exactly_once(
    twin_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    landing, output = tmp_path / "landing", tmp_path / "scores"
    landing.mkdir()
    arguments = ("--stream", "--available-now", "--cutouts", landing, "--model", twin_model, "--output", output)
    arguments = (*arguments, "--master", MASTER)

    def run() -> tuple[str, str]:
        assert call_main(spark_main, *arguments) == 0
        captured = capsys.readouterr()
        return captured.out, captured.err

    out, _ = run()  # an empty folder: the query ends at once
    assert "read 0 new file(s)" in out
    assert json.loads((output / PARQUET_MARKER).read_text())["stream"] is True
    assert (output / "_checkpoint" / "metadata").is_file()
    assert streamed_rows(output) == []

    expected: set[str] = set()
    for name, n_true, n_false in (("first", 3, 2), ("second", 2, 2)):
        expected |= drop(landing, name, n_true, n_false)
        out, _ = run()
        assert f"read {n_true + n_false} new file(s)" in out, out
        assert f"scored {n_true + n_false}, skipped 0 EDGE, 0 unreadable" in out, out
        counts = Counter(str(row["filename"]) for row in streamed_rows(output))
        assert set(counts) == expected
        assert set(counts.values()) == {1}

    # A third batch with an EDGE cutout and a file that is no FITS: neither is a row, both are said.
    added = drop(landing, "third", 2, 1, edge_true=1)
    (landing / "third" / "not_fits.fits").write_bytes(b"hello, this is not FITS")
    out, err = run()
    assert "read 4 new file(s)" in out
    assert "scored 2, skipped 1 EDGE, 1 unreadable" in out
    warnings = [line for line in err.splitlines() if "warning: skipped:" in line]
    assert len(warnings) == 1, err
    assert "not_fits.fits" in warnings[0]
    assert all(line.startswith("otrain-infer-spark: ") for line in err.splitlines()), err  # no Spark lines
    expected |= added - {str(landing / "third" / "true" / "c0000.fits"), str(landing / "third" / "not_fits.fits")}
    rows = streamed_rows(output)
    counts = Counter(str(row["filename"]) for row in rows)
    assert set(counts) == expected
    assert set(counts.values()) == {1}
    np.testing.assert_allclose([float(row["label1"]) for row in rows], 0.75, atol=1e-7)

    # Restarted with nothing new, the query reads no file again.
    out, _ = run()
    assert "read 0 new file(s)" in out
    assert Counter(str(row["filename"]) for row in streamed_rows(output)) == counts


@pytest.mark.slow
def test_a_running_stream_scores_files_as_they_land_and_stops(twin_model: Path, tmp_path: Path) -> None:
    from otrain.options import InferSparkConfig
    from otrain.score.spark_stream import stream_scores

    landing, output = tmp_path / "landing", tmp_path / "scores"
    landing.mkdir()
    config = InferSparkConfig(
        cutouts=str(landing), model=str(twin_model), output=output, master=MASTER, stream=True, trigger=1.0
    )
    config.preflight()
    stop = threading.Event()
    reports, failures = [], []

    def run() -> None:
        try:
            reports.append(stream_scores(config, stop=stop))
        except BaseException as error:  # said by the assertions below
            failures.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        expected: set[str] = set()
        for name in ("first", "second"):
            expected |= drop(landing, name, 2, 2)
            deadline = time.monotonic() + PATIENCE
            names: set[str] = set()
            while time.monotonic() < deadline and not failures:
                names = {str(row["filename"]) for row in streamed_rows(output)}
                if names >= expected:
                    break
                time.sleep(1.0)
            assert not failures, failures
            assert names == expected
    finally:
        stop.set()
        thread.join(PATIENCE)
    assert not thread.is_alive()
    assert not failures, failures
    (report,) = reports
    assert report.stopped
    assert (report.n_files, report.n_scored, report.n_edge, report.bad_files) == (8, 8, 0, [])
    counts = Counter(str(row["filename"]) for row in streamed_rows(output))
    assert set(counts) == expected
    assert set(counts.values()) == {1}


def test_stream_options_and_folders_are_checked_before_spark_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cutouts = make_tree(tmp_path / "cutouts", 1, 0)
    model = tmp_path / "model.keras"
    model.write_bytes(b"")
    output = tmp_path / "out.parquet"
    base = ("--model", model, "--output", output, "--cutouts", cutouts)
    streamed = (*base, "--stream")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")
    batch = tmp_path / "batch.parquet"
    batch.mkdir()
    (batch / PARQUET_MARKER).write_text('{"command": "otrain-infer-spark", "model": "m", "threshold": 0.5}\n')
    other = tmp_path / "other.parquet"
    other.mkdir()
    record = {"command": "otrain-infer-spark", "stream": True, "cutouts": str(cutouts.absolute())}
    (other / PARQUET_MARKER).write_text(json.dumps({**record, "model": "/elsewhere.keras", "threshold": 0.5}))
    lost = tmp_path / "lost.parquet"
    (lost / "_spark_metadata").mkdir(parents=True)
    (lost / PARQUET_MARKER).write_text(json.dumps({**record, "model": str(model.absolute()), "threshold": 0.5}))
    paired = tmp_path / "paired.parquet"  # a stream's output, and the checkpoint of another stream
    (paired / "_spark_metadata").mkdir(parents=True)
    mine = {**record, "model": str(model.absolute()), "threshold": 0.5, "checkpoint": str(tmp_path / "cp-a")}
    (paired / PARQUET_MARKER).write_text(json.dumps(mine))
    (tmp_path / "cp-b").mkdir()
    (tmp_path / "cp-b" / "metadata").write_text("{}")
    cases = {
        (*streamed, "--parquet", cutouts): "--parquet: not with --stream",
        (*streamed, "--table", tmp_path / "t.dat"): "--table: not with --stream",
        (*streamed, "--overwrite"): "--overwrite: not with --stream",
        (*base, "--checkpoint", tmp_path / "cp"): "--checkpoint: only with --stream",
        (*base, "--available-now"): "--available-now: only with --stream",
        (*base, "--trigger", "5"): "--trigger: only with --stream",
        (*streamed, "--trigger", "0"): "--trigger: must be a positive number of seconds",
        (*streamed, "--trigger", "5", "--available-now"): "--trigger: not with --available-now",
        (*streamed, "--checkpoint", cutouts / "cp"): "--checkpoint: ",
        ("--model", model, "--cutouts", cutouts, "--stream", "--output", theirs): "--output: ",
        ("--model", model, "--cutouts", cutouts, "--stream", "--output", batch): "--output: ",
        ("--model", model, "--cutouts", cutouts, "--stream", "--output", other): "--model: the stream in",
        ("--model", model, "--cutouts", cutouts, "--stream", "--output", lost): "--checkpoint: ",
        (*base[:4], "--cutouts", cutouts, "--stream", "--output", paired, "--checkpoint", tmp_path / "cp-b"): (
            f"--checkpoint: the stream in {str(paired)!r} was started with --checkpoint {tmp_path / 'cp-a'}"
        ),
    }
    for arguments, message in cases.items():
        assert call_main(spark_main, *arguments) == 2, arguments
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"otrain-infer-spark: error: {message}"), err
    assert (theirs / "keep.txt").read_text() == "mine"
    assert sorted(path.name for path in theirs.iterdir()) == ["keep.txt"]
    assert not output.exists()


def packets(first: int, count: int) -> list[dict[str, object]]:
    """ZTF alert packets of 40x40 stamps (the model crops 32x32), candids ``first`` onwards."""
    from otrain.simulate.packets import PacketAlert, ztf_record

    rng = np.random.default_rng(first)
    return [
        ztf_record(
            PacketAlert(
                candid=1_285_423_380_015_015_000 + first + index,
                object_id=f"ZTF26stream{index % 2}",
                planes={"DIFF": rng.normal(size=(40, 40)).astype(np.float32)},
            )
        )
        for index in range(count)
    ]


@pytest.mark.slow
def test_a_stream_of_alert_packets_scores_each_packet_once_and_resumes_from_its_checkpoint(
    twin_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tarfile

    from otrain.simulate.packets import write_packets, ztf_schema

    landing, output = tmp_path / "landing", tmp_path / "scores"
    landing.mkdir()
    arguments = ("--stream", "--available-now", "--cutouts", landing, "--model", twin_model, "--output", output)
    arguments = (*arguments, "--master", MASTER)

    def run() -> str:
        assert call_main(spark_main, *arguments) == 0
        return capsys.readouterr().out

    assert "read 0 new file(s)" in run()  # started on an empty folder
    staging = tmp_path / "staging"
    staging.mkdir()
    # First batch: a file of three packets and two files of one; second: a nightly tarball of three.
    write_packets(staging / "night.avro", packets(0, 3), ztf_schema(), codec="deflate")
    for index in (3, 4):
        write_packets(staging / f"{index}.avro", packets(index, 1), ztf_schema())
    for name in ("night.avro", "3.avro", "4.avro"):
        os.replace(staging / name, landing / name)  # a packet file lands whole
    out = run()
    assert "read 3 new file(s)" in out, out
    assert "scored 5, skipped 0 EDGE, 0 unreadable" in out, out
    for index in (5, 6, 7):
        write_packets(staging / f"{index}.avro", packets(index, 1), ztf_schema())
    with tarfile.open(staging / "archive.tar.gz", "w:gz") as archive:
        for index in (5, 6, 7):
            archive.add(staging / f"{index}.avro", arcname=f"ztf/{index}.avro")
    os.replace(staging / "archive.tar.gz", landing / "archive.tar.gz")
    out = run()
    assert "read 1 new file(s)" in out, out
    assert "scored 3, skipped 0 EDGE, 0 unreadable" in out, out
    rows = streamed_rows(output)
    counts = Counter(str(row["cand_ID"]) for row in rows)
    assert sorted(counts) == [str(1_285_423_380_015_015_000 + index) for index in range(8)]  # 19 digits, exact
    assert set(counts.values()) == {1}
    names = {str(row["filename"]) for row in rows}
    assert f"{landing / 'night.avro'}#2" in names
    assert f"{landing / 'archive.tar.gz'}/ztf/7.avro" in names
    assert {str(row["originalFile"]) for row in rows} == {"ZTF26stream0", "ZTF26stream1"}
    np.testing.assert_allclose([float(row["label1"]) for row in rows], 0.75, atol=1e-7)
    # Restarted from its checkpoint with nothing new: no packet is scored twice.
    assert "read 0 new file(s)" in run()
    assert Counter(str(row["cand_ID"]) for row in streamed_rows(output)) == counts


@pytest.mark.slow
def test_kafka_rows_are_named_by_offset_and_scored_by_the_same_decoder(twin_model: Path, tmp_path: Path) -> None:
    """Rows shaped as Spark's Kafka source gives them (the packet in value) need no other code."""
    import io

    import fastavro

    from otrain.score.spark_executor import Problems, Scoring, decode_files
    from otrain.score.spark_frames import decoded_schema, scored_rows
    from otrain.score.spark_session import spark_session
    from otrain.score.spark_stream import packet_rows
    from otrain.simulate.packets import ztf_schema

    message = io.BytesIO()  # a ZTF Kafka message: one packet in an Avro container
    fastavro.writer(message, fastavro.parse_schema(ztf_schema()), packets(0, 1))
    rows = [("alerts", 0, 7, message.getvalue()), ("alerts", 1, 3, b"no packet")]
    with spark_session(MASTER) as spark:
        spark.sparkContext.addFile(str(twin_model.with_suffix(".onnx")))
        frame = spark.createDataFrame(rows, "topic string, partition int, offset long, value binary")
        problems = spark.sparkContext.accumulator([], Problems())
        others = spark.sparkContext.accumulator([], Problems())
        scoring = Scoring(twin_model.with_suffix(".onnx").name, 8, None)
        decode = decode_files((32, 32, 1), None, problems, others, scoring)
        scored = scored_rows(packet_rows(frame).mapInPandas(decode, decoded_schema(True, False)), 0.5, False)
        result = [row.asDict() for row in scored.collect()]
        passed_over = dict(others.value)
    assert [row["filename"] for row in result] == ["alerts/0/7"]
    assert result[0]["cand_ID"] == "1285423380015015000"
    assert result[0]["label1"] == pytest.approx(0.75)
    assert passed_over["alerts/1/3"] == (0, 0)  # not a packet: no row (a stream of Kafka says so, see below)


@pytest.mark.slow
def test_ctrl_c_stops_the_command_after_its_micro_batch(twin_model: Path, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the terminal's process group, Spark's JVM and workers included) ends the stream: status 0."""
    landing, output, log = tmp_path / "landing", tmp_path / "scores", tmp_path / "log.txt"
    landing.mkdir()
    command = [sys.executable, "-m", "otrain.cli.infer_spark", "--stream", "--cutouts", str(landing)]
    command += ["--model", str(twin_model), "--output", str(output), "--master", MASTER, "--trigger", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OTRAIN_PROGRESS": "0"}
    with open(log, "w") as stream:
        process = subprocess.Popen(
            command, stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
    try:
        expected = drop(landing, "first", 2, 1)
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline and process.poll() is None:
            if {str(row["filename"]) for row in streamed_rows(output)} >= expected:
                break
            time.sleep(1.0)
        assert process.poll() is None, log.read_text()
        os.killpg(process.pid, signal.SIGINT)
        status = process.wait(timeout=PATIENCE)
    finally:
        stop_group(process)
    text = log.read_text()
    assert status == 0, text
    assert "stopped: 1 micro-batch(es) read 3 new file(s)" in text, text
    assert "scored 3, skipped 0 EDGE, 0 unreadable" in text, text
    counts = Counter(str(row["filename"]) for row in streamed_rows(output))
    assert set(counts) == expected
    assert set(counts.values()) == {1}


@pytest.mark.slow
def test_a_stream_of_kafka_shaped_messages_scores_packets_and_reports_the_rest(
    twin_model: Path, tmp_path: Path
) -> None:
    """A streaming source of Kafka's shape (topic, partition, offset, value): a message that is no packet is said."""
    import threading

    from pyspark.sql import functions

    from otrain.options import InferSparkConfig
    from otrain.score.spark_session import spark_session
    from otrain.score.spark_stream import StreamReport, _wait, start_stream
    from otrain.simulate.packets import write_packets, ztf_schema

    messages, output = tmp_path / "messages", tmp_path / "scores"
    messages.mkdir()
    write_packets(messages / "m1", packets(0, 2), ztf_schema())
    (messages / "m2").write_bytes(b"a message that is not an alert packet")
    config = InferSparkConfig(
        stream=True, available_now=True, cutouts=str(messages), model=str(twin_model), output=output, master=MASTER
    )
    twin = twin_model.with_suffix(".onnx")
    with spark_session(MASTER) as spark:
        files = spark.readStream.format("binaryFile").schema(
            "path string, modificationTime timestamp, length long, content binary"
        )
        kafka = files.load(str(messages)).select(
            functions.lit("alerts").alias("topic"),
            functions.lit(0).alias("partition"),
            functions.regexp_extract("path", r"m(\d+)$", 1).cast("long").alias("offset"),
            functions.col("content").alias("value"),
        )
        running = start_stream(spark, config, twin, ((32, 32, 1), None, False), 0.5, source=kafka)
        report = StreamReport(output=output, checkpoint=tmp_path / "unused")
        _wait(running, report, threading.Event())
    rows = streamed_rows(output)
    assert sorted(str(row["filename"]) for row in rows) == ["alerts/0/1", "alerts/0/1#1"]
    assert report.bad_files == [("alerts/0/2", "alerts/0/2: not an alert packet")]
