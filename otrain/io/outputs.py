"""What a command may write: its own earlier outputs, new files, and nothing else unless asked.

Every command that takes an output path declares the files it will write as :class:`Output`
items, each with a way to recognise a file that otrain wrote before (the header of a table,
the keys of a JSON report, the columns of a CSV, the ``Software`` tag of a PNG). Before any
work, :func:`check_outputs` refuses an output that exists and is not recognised (unless
``--overwrite`` is given), and refuses, whatever the options, an output that is one of the
command's own inputs (the model, a cutout being scored, a cube being read).

This module is imported by the option models, so it stays light: no NumPy, no astropy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "CALIBRATION_COLUMNS",
    "CARD_KEYS",
    "CHECKINFER_SUMMARY_KEYS",
    "CROSSVAL_KEYS",
    "CUBE_KEYS",
    "DIAGNOSTICS_KEYS",
    "HISTORY_COLUMNS",
    "INFER_COLUMNS",
    "INFER_ENSEMBLE_COLUMNS",
    "MATCHES_COLUMNS",
    "METRICS_KEYS",
    "OOF_COLUMNS",
    "PNG_SOFTWARE",
    "PROBABILITY_COLUMNS",
    "PROMOTION_KEYS",
    "PR_COLUMNS",
    "ROC_COLUMNS",
    "RUN_FILE_KEYS",
    "STUDY_COLUMNS",
    "THRESHOLD_TABLE_COLUMNS",
    "Output",
    "check_outputs",
    "is_same_file",
    "png_software",
]

#: The columns of infer_results.dat: the original 13, then otrain's ``real``.
INFER_COLUMNS = (
    "filename",
    "RA",
    "Dec",
    "originalFile",
    "Xpos",
    "Ypos",
    "mag",
    "magerr",
    "FWHM",
    "FWHMPSF",
    "cand_ID",
    "label0",
    "label1",
    "real",
)
#: The columns of an ensemble's infer_results.dat: those of a single model, then ``spread``, the
#: standard deviation of its members' P(real) (a single model's table has no such column).
INFER_ENSEMBLE_COLUMNS = (*INFER_COLUMNS, "spread")
#: Columns of the CSV files (the data behind each figure) and keys every JSON report has.
THRESHOLD_TABLE_COLUMNS = (
    "threshold",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "mcc",
    "fpr",
    "fnr",
    "tp",
    "fp",
    "tn",
    "fn",
)
ROC_COLUMNS = ("bin", "low", "high", "n", "fpr", "tpr", "threshold", "best_threshold")
PR_COLUMNS = ("bin", "low", "high", "n", "recall", "precision", "threshold", "best_threshold")
PROBABILITY_COLUMNS = ("candid", "label", "p_real")
CALIBRATION_COLUMNS = ("bin_low", "bin_high", "mean_probability", "fraction_real", "count")
MATCHES_COLUMNS = ("idx", "cand_ID", "mag_injected", "label1", "fwhm_ratio")
OOF_COLUMNS = ("index", "candid", "group", "label", "fold", "p_real", "threshold")
CROSSVAL_KEYS = ("folds", "per_fold", "mean", "std", "pooled")
STUDY_COLUMNS = ("size", "accuracy", "f1", "mcc", "roc_auc", "val_loss", "train_val_gap")
HISTORY_COLUMNS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "roc_auc",
    "pr_auc",
    "val_roc_auc",
    "val_pr_auc",
    "learning_rate",
)
DIAGNOSTICS_KEYS = ("accuracy", "average_precision", "best_threshold", "expected_calibration_error")
METRICS_KEYS = ("accuracy", "roc_auc", "epochs_run")
PROMOTION_KEYS = ("registered_name", "version", "promoted", "reason")
CHECKINFER_SUMMARY_KEYS = ("n_candidates", "n_injected", "n_detected", "n_scored")
RUN_FILE_KEYS = ("run_id", "experiment_id", "tracking_uri")
CARD_KEYS = ("input_shape", "normalisation", "data_hash")
CUBE_KEYS = ("cube", "labels")
#: The start of the ``Software`` text chunk of every PNG otrain writes.
PNG_SOFTWARE = "otrain"

Kind = Literal["table", "csv", "json", "png", "npz", "onnx"]


def _first_line(path: Path, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as stream:
            return stream.read(limit).split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
    except OSError:
        return ""


def png_software(path: Path) -> str:
    """Return the ``Software`` text chunk of a PNG file.

    Parameters
    ----------
    path : Path
        Any file.

    Returns
    -------
    str
        The chunk's text; "" when the file has none, is no PNG or cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                return ""
            return str(image.info.get("Software", ""))
    except (OSError, UnidentifiedImageError, ValueError):
        return ""


def _onnx_metadata_keys(path: Path) -> set[str]:
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises protobuf's DecodeError and others for a file that is not ONNX
        return set()
    return {entry.key for entry in proto.metadata_props}


def _json_keys(path: Path) -> set[str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def _npz_keys(path: Path) -> set[str]:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return {name.removesuffix(".npy") for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile):
        return set()


@dataclass(frozen=True)
class Output:
    """One file a command writes, and how to recognise an earlier one of its own.

    Attributes
    ----------
    path : Path
        The file.
    kind : {"table", "csv", "json", "png", "npz", "onnx"}
        Its format.
    signature : tuple of str
        Table or CSV: its columns (the header line). JSON: keys it always has. NPZ: arrays it
        always has. ONNX: keys its metadata always has. PNG: unused (every otrain PNG carries the ``Software`` tag).
    variants : tuple of tuple of str
        Table or CSV: other columns the command may have written there (an ensemble's results
        table, :data:`INFER_ENSEMBLE_COLUMNS`).
    """

    path: Path
    kind: Kind
    signature: tuple[str, ...] = ()
    variants: tuple[tuple[str, ...], ...] = ()

    def written_by_otrain(self) -> bool:
        """Tell whether the file at :attr:`path` is one that otrain wrote."""
        if self.kind == "table":
            return _first_line(self.path) in {"# " + " ".join(columns) for columns in (self.signature, *self.variants)}
        if self.kind == "csv":
            return _first_line(self.path) in {",".join(columns) for columns in (self.signature, *self.variants)}
        if self.kind == "json":
            return set(self.signature) <= _json_keys(self.path)
        if self.kind == "npz":
            return set(self.signature) <= _npz_keys(self.path)
        if self.kind == "onnx":
            return set(self.signature) <= _onnx_metadata_keys(self.path)
        return png_software(self.path).startswith(PNG_SOFTWARE)


def is_same_file(first: Path, second: Path) -> bool:
    """Tell whether two paths name the same file (links and relative spellings included).

    Parameters
    ----------
    first, second : Path
        The paths; either may not exist.

    Returns
    -------
    bool
        True when both exist and are one file, or (when one does not exist) resolve alike.
    """
    try:
        return os.path.samefile(first, second)
    except OSError:
        return first.resolve() == second.resolve()


def check_outputs(
    outputs: Iterable[Output],
    *,
    flag: str,
    command: str,
    inputs: Sequence[Path] = (),
    overwrite: bool = False,
) -> None:
    """Refuse outputs that would destroy a user's file; raise ``ValueError`` naming the first.

    Parameters
    ----------
    outputs : iterable of Output
        The files the command is about to write.
    flag : str
        The option that sets them (for the message).
    command : str
        The command's name (for the message).
    inputs : sequence of Path
        The command's input files: an output may never be one of them.
    overwrite : bool
        ``--overwrite``: replace existing files that otrain did not write.

    Raises
    ------
    ValueError
        ``"<flag>: ..."``: the output is an input, a folder, or a file this command did not
        write (without ``overwrite``).
    """
    for output in outputs:
        path = output.path
        for source in inputs:
            if path.exists() and is_same_file(path, source):
                raise ValueError(f"{flag}: {str(path)!r} is an input of {command} ({source}); choose another path")
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_dir():
            raise ValueError(f"{flag}: {str(path)!r} is a folder; {command} writes a file there")
        if not overwrite and not output.written_by_otrain():
            raise ValueError(
                f"{flag}: {str(path)!r} exists and was not written by {command}; "
                "pass --overwrite to replace it, or choose another path"
            )
