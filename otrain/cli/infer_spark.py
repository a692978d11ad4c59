"""otrain-infer-spark: score candidate cutouts on Apache Spark."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.options import InferSparkConfig

__all__ = ["main"]


def _prepare(backend: str) -> None:
    """Import TensorFlow quietly when the Keras model scores; ONNX Runtime scores without it."""
    if backend == "keras":
        from otrain.cli.tf_setup import prepare_tensorflow

        prepare_tensorflow()


def _infer_spark(config: InferSparkConfig) -> None:
    from otrain.score.spark_session import require_spark

    require_spark()
    if config.stream:
        _stream(config)
        return
    from otrain.score.spark import infer_spark

    report = infer_spark(config, prepare=_prepare)
    elapsed = report.seconds
    print(
        f"scored {report.n_scored} of {report.n_files} cutouts in {elapsed:.1f} s "
        f"({report.n_scored / max(elapsed, 1e-9):.0f}/s) on {config.master}; skipped {report.n_edge} EDGE, "
        f"{len(report.bad_files)} unreadable; scored with {report.backend}"
    )
    print(f"real (P(real) > {report.threshold}): {report.n_real}")
    print(f"written: {report.output}")
    if report.table is not None:
        print(f"written: {report.table}")


def _stream(config: InferSparkConfig) -> None:
    from otrain.score.spark_stream import stream_scores

    if not config.available_now:
        print(f"streaming {config.cutouts} into {config.output} on {config.master}; Ctrl-C stops", flush=True)
    report = stream_scores(config, prepare=_prepare)
    print(
        f"{'stopped' if report.stopped else 'done'}: {report.n_batches} micro-batch(es) read {report.n_files} new "
        f"file(s) in {report.seconds:.1f} s; scored {report.n_scored}, skipped {report.n_edge} EDGE, "
        f"{len(report.bad_files)} unreadable; scored with {report.backend}"
    )
    print(f"written: {report.output} (checkpoint {report.checkpoint})")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-infer-spark."""
    run_command(InferSparkConfig, _infer_spark, argv)


if __name__ == "__main__":
    main()
