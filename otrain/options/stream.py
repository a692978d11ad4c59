"""The rules of otrain-infer-spark --stream: which options go with it, and whose folders it may write in.

A stream's --output folder grows for as long as the stream runs, run after run: Spark's file
sink adds part files and keeps its log of them in ``_spark_metadata``, and the query's
checkpoint (``<output>/_checkpoint`` by default) records which files were read and which
micro-batches were written. So the folder is not replaced whole, as a batch run's is: it must
be new, empty, or a stream's that otrain started with the same cutouts, model and threshold
(its marker says so), and the checkpoint must be the one that stream was written with. A
checkpoint lost while its output stays would make Spark skip the micro-batches its sink has
already logged, so that case is refused rather than run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from otrain.io.markers import read_marker
from otrain.options.base import _writable_folder

__all__ = [
    "DEFAULT_TRIGGER",
    "STREAM_ONLY",
    "check_stream_folders",
    "check_stream_options",
    "checkpoint_folder",
    "stream_marker",
]

#: Seconds between micro-batches of a stream that runs until stopped.
DEFAULT_TRIGGER = 10.0
#: The options that only a stream takes, by field name.
STREAM_ONLY = ("checkpoint", "trigger", "available_now")
#: The batch options a stream refuses, by field name, and why.
_NOT_STREAMED = {
    "parquet": "a stream reads the files that land in --cutouts",
    "table": "a stream's results grow; read them from --output",
    "overwrite": "a stream adds to its --output, run after run; give a new folder to start again",
}
#: Spark's file sink keeps the list of the part files it committed here, in the output folder.
SINK_LOG = "_spark_metadata"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_stream_options(values: dict[str, Any]) -> None:
    """Refuse the options that do not go with --stream, or that only go with it.

    Parameters
    ----------
    values : dict
        The options of otrain-infer-spark, by field name.

    Raises
    ------
    ValueError
        Naming the first option refused and why.
    """
    if not values.get("stream"):
        for name in STREAM_ONLY:
            if values.get(name) not in (None, False):
                raise ValueError(f"{_flag(name)}: only with --stream")
        return
    for name, why in _NOT_STREAMED.items():
        if values.get(name) not in (None, False):
            raise ValueError(f"{_flag(name)}: not with --stream ({why})")
    trigger = values.get("trigger")
    if trigger is not None:
        if values.get("available_now"):
            raise ValueError("--trigger: not with --available-now (which reads what is there, then stops)")
        if not trigger > 0:
            raise ValueError(f"--trigger: must be a positive number of seconds, got {trigger}")


def checkpoint_folder(output: Path, checkpoint: Path | None) -> Path:
    """Return the stream's checkpoint folder: --checkpoint, or ``<output>/_checkpoint``."""
    return checkpoint if checkpoint is not None else output / "_checkpoint"


def stream_marker(cutouts: str, model: str, threshold: float | None, checkpoint: Path) -> dict[str, Any]:
    """Return what a stream's marker records besides the command: what its rows were scored from and with.

    A local path is recorded absolute, so that a run from another folder is recognised; the
    checkpoint too, so that another stream's checkpoint is never paired with this output.
    """

    def absolute(text: str) -> str:
        return str(Path(text).absolute()) if Path(text).exists() else text

    return {
        "stream": True,
        "cutouts": absolute(cutouts),
        "model": absolute(model),
        "threshold": threshold,
        "checkpoint": str(checkpoint.absolute()),
    }


def _is_in(path: Path, folder: Path) -> bool:
    return path.resolve() == folder.resolve() or folder.resolve() in path.resolve().parents


def check_stream_folders(
    output: Path, checkpoint: Path | None, cutouts: str, local_cutouts: bool, model: str, threshold: float | None
) -> None:
    """Check that --output and the checkpoint are the stream's to write in.

    Parameters
    ----------
    output : Path
        --output.
    checkpoint : Path or None
        --checkpoint, None for the default.
    cutouts : str
        --cutouts.
    local_cutouts : bool
        Whether --cutouts is a local folder (not a URI).
    model : str
        --model.
    threshold : float or None
        The threshold of the real column (the card's when --threshold is not given).

    Raises
    ------
    ValueError
        Naming --output or --checkpoint and the rule.
    """
    if local_cutouts:
        for flag, path in (("--output", output), ("--checkpoint", checkpoint)):
            if path is not None and _is_in(path, Path(cutouts)):
                raise ValueError(f"{flag}: {str(path)!r} is the input {cutouts!r} or inside it; choose another path")
    if output.is_symlink():
        raise ValueError(f"--output: {str(output)!r} is a symbolic link; give the folder itself, or another path")
    if not output.exists():
        try:
            _writable_folder(output.parent)
        except ValueError as error:
            raise ValueError(f"--output: {error}") from None
    elif not output.is_dir():
        raise ValueError(f"--output: {str(output)!r} exists and is not a folder; choose another path")
    elif any(output.iterdir()):
        marker = read_marker(output, "otrain-infer-spark")
        if marker is None or not marker.get("stream"):
            raise ValueError(
                f"--output: {str(output)!r} exists and is not a stream's output written by otrain-infer-spark --stream "
                "(a stream adds to an empty or new folder, or to its own); choose another path"
            )
        wanted = stream_marker(cutouts, model, threshold, checkpoint_folder(output, checkpoint))
        for key in ("cutouts", "model", "threshold", "checkpoint"):
            if marker.get(key) != wanted[key]:
                raise ValueError(
                    f"--{key}: the stream in {str(output)!r} was started with --{key} {marker.get(key)}, not "
                    f"{wanted[key]}; give the same, or another --output"
                )
    folder = checkpoint_folder(output, checkpoint)
    started = (folder / "metadata").is_file()  # what Spark writes first into a query's checkpoint
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--checkpoint: {str(folder)!r} exists and is not a folder; choose another path")
    if folder.is_dir() and any(folder.iterdir()) and not started:
        raise ValueError(
            f"--checkpoint: {str(folder)!r} is not empty and is not a Spark checkpoint; choose another path"
        )
    if (output / SINK_LOG).is_dir() and not started:
        raise ValueError(
            f"--checkpoint: {str(output)!r} holds a stream's results but {str(folder)!r} holds no checkpoint; give the "
            "checkpoint the stream was written with (without it Spark would skip the micro-batches it logged), or "
            "another --output"
        )
    marker = read_marker(output, "otrain-infer-spark") if output.is_dir() else None
    if started and (marker is None or not marker.get("stream")):
        raise ValueError(
            f"--checkpoint: {str(folder)!r} holds the progress of a stream whose results are not in {str(output)!r} "
            "(its files would not be scored again); give its --output, or another --checkpoint"
        )
    if checkpoint is not None and not folder.exists():
        try:
            _writable_folder(folder.parent)
        except ValueError as error:
            raise ValueError(f"--checkpoint: {error}") from None
