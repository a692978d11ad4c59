"""Options of the commands that judge a model and its results.

otrain-diagnostics, -plot-results, -grad-cam, -checkinfer and -report (the vetting page).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from otrain.io import outputs as formats
from otrain.io.markers import REPORT_MARKER, read_marker
from otrain.io.outputs import Output
from otrain.options.base import (
    CommandConfig,
    ExistingFile,
    ExistingSource,
    NonNegativeInt,
    PositiveInt,
    Probability,
    Seed,
    WritableFolder,
    _check_outputs,
    _held_files,
    _log_into_training_run,
    _use_card_threshold,
    _writable_folder,
    option,
)
from otrain.options.scoring import Backend, _backend_option

__all__ = [
    "BIN_LIMITS",
    "CALIBRATION_BINS",
    "CENTRE_RADIUS_FWHM",
    "CHECKINFER_FIGURES",
    "CHECKINFER_FOLDER",
    "CHECKINFER_MATCHES",
    "CHECKINFER_SUMMARY",
    "DIAGNOSTICS_EXAMPLES",
    "DIAGNOSTICS_SEED",
    "DIAGNOSTIC_FOLDERS",
    "GRADCAM_BATCH",
    "GRADCAM_GRID",
    "OUTCOMES",
    "PLOT_FILES",
    "CheckInferConfig",
    "DiagnosticsConfig",
    "GradCamConfig",
    "PlotResultsConfig",
    "ReportConfig",
]

# --------------------------------------------------------------------------------------------
# Defaults that are not options of their own.


#: Cutouts per Grad-CAM batch (gradients need more memory than a prediction).
GRADCAM_BATCH = 64
#: Candidates shown in each Grad-CAM summary grid.
GRADCAM_GRID = 25
#: Radius, in FWHM of the candidate, of the disc where a useful map of a true positive lies
#: (otrain-grad-cam reports the share of the maps inside it).
CENTRE_RADIUS_FWHM = 2.0
#: Well-classified examples otrain-diagnostics exports per class, and the seed of their choice.
DIAGNOSTICS_EXAMPLES = 30
DIAGNOSTICS_SEED = 42
#: Bins of the reliability diagram and of the expected calibration error (equal widths in [0, 1]).
CALIBRATION_BINS = 10
#: otrain-plot-results: the upper end of its magnitude-error and magnitude bins (the original's).
BIN_LIMITS = {"errmag": 0.4, "mag": 25.0}


def _overwrite_option(command: str) -> Any:
    """Declare the ``--overwrite`` switch of a command that writes into a folder the user names."""
    return option(False, f"Replace existing output files that {command} did not write (its own are always replaced).")


def _existing(folder: Path, pattern: str) -> list[Path]:
    """Return the files of ``folder`` matching ``pattern`` (the numbered images a command replaces)."""
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def _infer_table(path: Path) -> Path:
    """Return the table an --infer option names: the file itself, or infer_results.dat in the folder."""
    return path / "infer_results.dat" if path.is_dir() else path


#: <plots>/CheckInfer/: the original six figures, then otrain's tables.
CHECKINFER_FOLDER = "CheckInfer"
CHECKINFER_FIGURES = (
    "distrib_CNN_prob_sim.png",
    "distrib_CNN_prob_all.png",
    "distrib_CNNprob_all_and_sim.png",
    "fraction_per_bin.png",
    "distrib_FWHM_simulation.png",
    "distrib_FWHM_real_vs_sim.png",
)
CHECKINFER_MATCHES = "checkinfer_matches.csv"
CHECKINFER_SUMMARY = "checkinfer_summary.json"


class CheckInferConfig(CommandConfig):
    """Compare inference results with the injected sources of a crossmatch.dat."""

    command: ClassVar[str] = "otrain-checkinfer"

    plots: WritableFolder = option(..., "Base folder; figures go to <plots>/CheckInfer/.")
    crossmatch: Path = option(..., "Folder holding crossmatch.dat, or the file itself.")
    infer: Path = option(..., "Folder holding infer_results.dat, or the file itself.")
    maglim: tuple[float, ...] = option(
        (12.0, 18.0, 21.0), "Magnitudes splitting the magnitude range in the plots.", aliases=("maglim", "mag_lim")
    )
    cnn_problim: tuple[Probability, ...] = option(
        (0.1, 0.5, 0.7), "CNN probabilities splitting the results in the plots."
    )
    fwhm_ratio_lower: float = option(0.5, "Lower bound of FWHM / FWHM_PSF.")
    fwhm_ratio_upper: float = option(4.2, "Upper bound of FWHM / FWHM_PSF.")
    mlflow_run: Path | None = option(
        None, "mlflow_run.json of the training whose MLflow run gets this command's figures and counts."
    )
    overwrite: bool = _overwrite_option("otrain-checkinfer")
    tracking: bool = option(True, "Log into the run given by --mlflow-run; --no-tracking skips it.")

    @classmethod
    def check_option_rules(cls, values: dict[str, Any]) -> None:
        """Check that the FWHM-ratio bounds are ordered and the limits given in increasing order."""
        if values["fwhm_ratio_lower"] >= values["fwhm_ratio_upper"]:
            raise ValueError("--fwhm-ratio-lower: must be smaller than --fwhm-ratio-upper")
        for flag, limits in (("--maglim", values["maglim"]), ("--cnn-problim", values["cnn_problim"])):
            if not limits or list(limits) != sorted(set(limits)):
                raise ValueError(
                    f"{flag}: give one or more values in increasing order, got {' '.join(map(str, limits))}"
                )

    @model_validator(mode="after")
    def _check(self) -> CheckInferConfig:
        self.check_option_rules(self.__dict__)
        return self

    def check_disk(self) -> None:
        """Check that both tables exist and that the figures and tables are the command's to replace."""
        for flag, path in (("--crossmatch", self.crossmatch_file), ("--infer", self.infer_file)):
            if not path.is_file():
                raise ValueError(f"{flag}: {str(path)!r} does not exist (give the file or the folder holding it)")
        out = self.output_folder
        planned = [Output(out / name, "png") for name in CHECKINFER_FIGURES]
        planned.append(Output(out / CHECKINFER_MATCHES, "csv", formats.MATCHES_COLUMNS))
        planned.append(Output(out / CHECKINFER_SUMMARY, "json", formats.CHECKINFER_SUMMARY_KEYS))
        _check_outputs(self, "--plots", planned, [self.crossmatch_file, self.infer_file])

    @property
    def crossmatch_file(self) -> Path:
        """The crossmatch table: --crossmatch itself, or crossmatch.dat in that folder."""
        return self.crossmatch / "crossmatch.dat" if self.crossmatch.is_dir() else self.crossmatch

    @property
    def infer_file(self) -> Path:
        """The inference table: --infer itself, or infer_results.dat in that folder."""
        return _infer_table(self.infer)

    @property
    def output_folder(self) -> Path:
        """``<plots>/CheckInfer/``."""
        return self.plots / CHECKINFER_FOLDER

    def output_folders(self) -> list[Path]:
        """``<plots>/CheckInfer/``."""
        return [self.output_folder]


def _inside(path: Path, folder: Path) -> bool:
    """Tell whether ``path`` is ``folder`` or lies below it (links and relative spellings resolved)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _not_written_by_report(folder: Path) -> str:
    """Name a file of ``folder`` that the page's marker does not list ("" when there is none).

    A folder otrain-report wrote is replaced whole: a file saved into it since (exported marks,
    notes) would be lost, so it is refused.
    """
    held = [name for name in _held_files(folder) if not (folder / name).is_dir() or (folder / name).is_symlink()]
    if not held:
        return ""
    marker = read_marker(folder, "otrain-report")
    listed = marker.get("files", []) if marker is not None else None
    if not isinstance(listed, list):
        return held[0]
    own = {str(name) for name in listed} | {REPORT_MARKER}
    return next((name for name in held if name not in own), "")


class ReportConfig(CommandConfig):
    """Write a vetting page for a scored night: one self-contained HTML page to judge the candidates.

    The page (<output>/index.html, thumbnails in <output>/thumbs/) opens from disk with no network:
    a header with the model and the night, a histogram of P(real), and one row per scored
    candidate sorted by P(real), with thumbnails of the planes each file has (science,
    reference, difference), the Grad-CAM overlay of the model's input, P(real), magnitude,
    FWHM, position, file and candidate id. A threshold slider, a magnitude filter and sorting
    by any column; r (real), b (bogus), s (skip) mark the current row, the arrows move, marks
    stay in the browser, and a button downloads them as CSV for otrain-relabel.
    """

    command: ClassVar[str] = "otrain-report"

    infer: Path = option(..., "Scored night: infer_results.dat of otrain-infer, or the folder holding it.")
    cutouts: ExistingSource = option(
        ...,
        "Folder holding the scored cutouts or alert packets, or the packet file or tarball scored (the table's "
        "files and packets are found in it).",
    )
    model: ExistingFile = option(..., "The model that scored them (.keras or .h5); its card fills the header.")
    output: Path = option(
        ...,
        "Folder for the page (index.html, thumbs/). A folder otrain-report wrote is replaced; any other "
        "non-empty folder is refused.",
    )
    threshold: Probability | None = option(
        None, "Where the threshold slider starts: real if P(real) > threshold. Default: the model card's (0.5)."
    )
    grad_cam: bool = option(True, "Grad-CAM overlay of every candidate; --no-grad-cam leaves it out (faster).")
    method: Literal["gradcam", "gradcam++"] = option(
        "gradcam++", "tf-keras-vis GradcamPlusPlus (default) or Gradcam for the overlays."
    )
    workers: PositiveInt | None = option(None, "Worker processes reading the files (default: one per core).")
    tracking: bool = option(
        True,
        "Look up the model's registry version and log the page into the training's MLflow run (mlflow_run.json "
        "beside the model); --no-tracking does neither.",
    )

    def check_disk(self) -> None:
        """Fill --threshold from the card; check the table exists and --output is the page's to replace."""
        _use_card_threshold(self, self.model)
        if not self.infer_file.is_file():
            raise ValueError(
                f"--infer: {str(self.infer_file)!r} does not exist (give the file or the folder holding it)"
            )
        output = self.output
        if output.exists() or output.is_symlink():
            if not output.is_dir() or output.is_symlink():
                raise ValueError(f"--output: {str(output)!r} is not a folder; give a folder for the page")
            foreign = _not_written_by_report(output)
            if foreign:
                raise ValueError(
                    f"--output: {str(output)!r} exists and holds files otrain-report did not write ({foreign}); "
                    "choose another path"
                )
        for flag, source in (("--cutouts", self.cutouts), ("--infer", self.infer_file), ("--model", self.model)):
            if _inside(source, output):
                raise ValueError(f"--output: {str(output)!r} holds {flag} {str(source)!r}; choose another path")
        try:
            _writable_folder(output.parent)
        except ValueError as error:
            raise ValueError(f"--output: {error}") from None

    @property
    def infer_file(self) -> Path:
        """The inference table: --infer itself, or infer_results.dat in that folder."""
        return _infer_table(self.infer)

    def output_folders(self) -> list[Path]:
        """Return the page's parent folder (the page itself appears whole, renamed into place)."""
        return [self.output.parent]


#: The four outcomes of a decision, in the order the commands report them, and the class each
#: was given (the one Grad-CAM explains). Grad-CAM writes a folder and a summary grid per outcome.
OUTCOMES = {"TP": 1, "TN": 0, "FP": 1, "FN": 0}
#: Outcome -> folder of its exported cutouts, relative to --path-diagnostics (the original tree).
DIAGNOSTIC_FOLDERS = {
    "FP": Path("validation_set/misclassified/images_FP"),
    "FN": Path("validation_set/misclassified/images_FN"),
    "TP": Path("validation_set/well_classified/images_TP"),
    "TN": Path("validation_set/well_classified/images_TN"),
}


class DiagnosticsConfig(CommandConfig):
    """Score a validation cube and export the misclassified and well-classified cutouts."""

    command: ClassVar[str] = "otrain-diagnostics"

    path_cube_validation: ExistingFile = option(..., "Validation datacube (.npz).")
    model_path: ExistingFile = option(..., "Trained model file (.keras or .h5).")
    threshold: Probability | None = option(
        None, "Probability threshold: real if P(real) > threshold. Default: the model card's (0.5 without one)."
    )
    path_diagnostics: WritableFolder = option(Path("cnn_results"), "Folder for the exported cutouts of each outcome.")
    n_examples: NonNegativeInt = option(
        DIAGNOSTICS_EXAMPLES, "True positives and true negatives exported, each (every FP and FN is exported)."
    )
    seed: Seed = option(DIAGNOSTICS_SEED, "Seed of the random choice of exported true positives and negatives.")
    overwrite: bool = _overwrite_option("otrain-diagnostics")
    backend: Backend = _backend_option()
    tracking: bool = _log_into_training_run()

    def check_disk(self) -> None:
        """Fill --threshold from the card; check that the outputs are the command's to replace."""
        _use_card_threshold(self, self.model_path)
        out = self.path_diagnostics
        planned = [
            Output(out / "diagnostics.json", "json", formats.DIAGNOSTICS_KEYS),
            Output(out / "threshold_table.csv", "csv", formats.THRESHOLD_TABLE_COLUMNS),
        ]
        for folder in DIAGNOSTIC_FOLDERS.values():
            planned += [Output(path, "png") for path in _existing(out / folder, "cutout_*.png")]
        _check_outputs(self, "--path-diagnostics", planned, [self.path_cube_validation, self.model_path])

    def output_folders(self) -> list[Path]:
        """--path-diagnostics and its export folders."""
        return [self.path_diagnostics / folder for folder in DIAGNOSTIC_FOLDERS.values()]


#: The six original figures, then otrain's reliability diagram, by stem: each is ``<stem>.png``
#: with the data behind it in ``<stem>.csv`` (these columns).
PLOT_FILES = {
    "errmag_ROC": formats.ROC_COLUMNS,
    "mag_ROC": formats.ROC_COLUMNS,
    "errmag_recall": formats.PR_COLUMNS,
    "mag_recall": formats.PR_COLUMNS,
    "model_F1_MCC": formats.THRESHOLD_TABLE_COLUMNS,
    "prob_distribution": formats.PROBABILITY_COLUMNS,
    "calibration": formats.CALIBRATION_COLUMNS,
}


class PlotResultsConfig(CommandConfig):
    """Draw the ROC, recall, F1-MCC and probability figures of a model on a validation cube."""

    command: ClassVar[str] = "otrain-plot-results"

    path_cube_validation: ExistingFile = option(..., "Validation datacube (.npz).")
    model_path: ExistingFile = option(..., "Trained model file (.keras or .h5).")
    path_plots: WritableFolder = option(..., "Folder for the figures.")
    threshold: Probability | None = option(
        None, "Probability threshold: real if P(real) > threshold. Default: the model card's (0.5 without one)."
    )
    overwrite: bool = _overwrite_option("otrain-plot-results")
    backend: Backend = _backend_option()
    tracking: bool = _log_into_training_run()

    def check_disk(self) -> None:
        """Fill --threshold from the card; check that the figures and tables are the command's to replace."""
        _use_card_threshold(self, self.model_path)
        out = self.path_plots
        planned = [Output(out / f"{stem}.png", "png") for stem in PLOT_FILES]
        planned += [Output(out / f"{stem}.csv", "csv", columns) for stem, columns in PLOT_FILES.items()]
        _check_outputs(self, "--path-plots", planned, [self.path_cube_validation, self.model_path])

    def output_folders(self) -> list[Path]:
        """--path-plots."""
        return [self.path_plots]


class GradCamConfig(CommandConfig):
    """Show where the model looks: Grad-CAM maps of true/false positives and negatives."""

    command: ClassVar[str] = "otrain-grad-cam"

    cube: ExistingFile = option(..., "Datacube (.npz), usually the validation cube.")
    model_path: ExistingFile = option(..., "Trained model file (.keras or .h5).")
    cam_path: WritableFolder = option(Path("grad_cam"), "Folder for the Grad-CAM images.", flag="--cam_path")
    n_random: PositiveInt = option(
        30, "Number of randomly chosen well-classified candidates per class.", flag="--n_random"
    )
    threshold: Probability | None = option(
        None, "Probability threshold: real if P(real) > threshold. Default: the model card's (0.5 without one)."
    )
    method: Literal["gradcam", "gradcam++"] = option(
        "gradcam++",
        "tf-keras-vis GradcamPlusPlus (default) or Gradcam. On the demo model, Grad-CAM++ puts about half of each "
        "true positive's map on the candidate, plain Grad-CAM mostly on the cutout's border.",
    )
    seed: Seed = option(42, "Seed of the random choice of well-classified candidates.")
    overwrite: bool = _overwrite_option("otrain-grad-cam")
    tracking: bool = _log_into_training_run()

    def check_disk(self) -> None:
        """Fill --threshold from the card; check that the images are the command's to replace."""
        _use_card_threshold(self, self.model_path)
        planned = [Output(self.cam_path / f"{outcome}_summary.png", "png") for outcome in OUTCOMES]
        for outcome in OUTCOMES:
            planned += [Output(path, "png") for path in _existing(self.cam_path / outcome, "cutout_CAM_*.png")]
        _check_outputs(self, "--cam_path", planned, [self.cube, self.model_path])

    def output_folders(self) -> list[Path]:
        """--cam_path and its outcome folders."""
        return [self.cam_path / outcome for outcome in OUTCOMES]
