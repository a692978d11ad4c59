"""Options of the commands that score cutouts with a model: otrain-infer, -infer-spark, -export and -serve.

Also the grammar of the MLflow model URIs that otrain-serve and otrain-infer-spark take.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import AfterValidator, model_validator

from otrain.io import outputs as formats
from otrain.io.alerts import sniff_file
from otrain.io.layout import TEST_CUBE, card_file, int8_path, twin_path
from otrain.io.outputs import Output, check_outputs
from otrain.options.base import (
    FITS_SUFFIXES,
    CommandConfig,
    ExistingFile,
    ExistingFolder,
    ExistingSource,
    Planes,
    PositiveInt,
    Probability,
    Seed,
    _check_outputs,
    _existing_file,
    _existing_folder,
    _log_into_training_run,
    _use_card_threshold,
    _writable_folder,
    option,
)
from otrain.options.data import _parquet_output
from otrain.options.stream import DEFAULT_TRIGGER, check_stream_folders, check_stream_options
from otrain.options.uris import is_mlflow_uri, parse_model_uri

__all__ = [
    "BACKENDS",
    "DEFAULT_SERVED_MODEL",
    "DEFAULT_SERVE_PORT",
    "INT8_CALIBRATION_CUTOUTS",
    "PARITY_TOLERANCE",
    "PREDICT_BATCH",
    "SOURCE_SHA256",
    "Backend",
    "ExportConfig",
    "InferConfig",
    "InferSparkConfig",
    "ServeConfig",
]


#: What scores cutouts: the Keras model, its ONNX twin or its int8 model with ONNX Runtime, or (auto) the best usable.
Backend = Literal["auto", "keras", "onnx", "int8"]
BACKENDS: tuple[str, ...] = get_args(Backend)
#: Cutouts per prediction batch: scoring a cube, and otrain-infer's default --batch-size.
PREDICT_BATCH = 256


def _backend_option() -> Any:
    """Declare the ``--backend`` option of the commands that score cutouts."""
    return option(
        "auto",
        "What scores: onnx (the model's ONNX twin <stem>.onnx, with ONNX Runtime), int8 (its int8 model "
        "<stem>.int8.onnx, from otrain-export --quantize int8), keras (the Keras model), or auto: the int8 model when "
        "its card says it passed the gates, else the twin, when exported from this model file and onnxruntime is "
        "installed, else Keras.",
    )


def _is_under(path: Path, folder: Path, recursive: bool) -> bool:
    """Tell whether ``path`` lies in ``folder`` (or below it, when ``recursive``)."""
    parent, base = path.resolve().parent, folder.resolve()
    return parent == base or (recursive and base in parent.parents)


class InferConfig(CommandConfig):
    """Score a folder of candidate cutouts with a trained model; writes infer_results.dat.

    Reads gmadet and STDPipe cutouts and ZTF or Rubin alert packets (an Avro file, a nightly
    tarball, or a folder of them beside the FITS files), centre-crops them to the model's input
    size, skips EDGE cutouts and unreadable files or packets (counted and reported), and scores
    them chunk by chunk in threads while the next ones are read, so memory does not grow with
    the number of files.
    The table has the original 13 columns (filename RA Dec originalFile Xpos Ypos mag magerr
    FWHM FWHMPSF cand_ID label0 label1), then 'real' (label1 > --threshold).
    """

    command: ClassVar[str] = "otrain-infer"

    cutouts: ExistingSource = option(
        ...,
        "Folder of candidate cutouts (*.fits, *.fit, *.fits.gz) and/or alert packets (Avro files, .tar or .tar.gz "
        "nightly archives, recognised by content), or one packet file or archive.",
    )
    model: ExistingFile = option(..., "Trained model file (.keras or .h5, original O'TRAIN models included).")
    prob_ratio: float | None = option(None, "Prior re-weighting p' = p / (p + (1 - p) * r) of P(real); default: none.")
    output: Path | None = option(
        None,
        "Output table (default: <cutouts>/infer_results.dat, beside it for a packet file). An existing file is "
        "replaced only when it is a table otrain-infer wrote, or with --overwrite; never the model or a cutout.",
    )
    batch_size: PositiveInt = option(PREDICT_BATCH, "Cutouts scored per batch.")
    threshold: Probability | None = option(
        None,
        "Probability threshold of the 'real' column: real if label1 > threshold. Default: the model card's "
        "(chosen by otrain-train, for example with --target-fnr), 0.5 for a model without a card.",
    )
    planes: Planes = option(
        None,
        "Image planes to read, in channel order (see otrain-convert). Default: those the model was trained on "
        "(its card); for a model without a card, DIFF of STDPipe cutouts and the whole image of gmadet ones.",
    )
    recursive: bool = option(False, "Also score cutouts in sub-folders.")
    workers: PositiveInt | None = option(
        None,
        "Processes reading the files (default: one per four cores; 1 reads in this process while the network scores).",
    )
    overwrite: bool = option(False, "Replace an existing --output file that otrain-infer did not write.")
    backend: Backend = _backend_option()
    tracking: bool = _log_into_training_run()

    @classmethod
    def check_option_rules(cls, values: dict[str, Any]) -> None:
        """Check that the prior ratio, when given, is positive."""
        if values.get("prob_ratio") is not None and values["prob_ratio"] <= 0:
            raise ValueError(f"--prob-ratio: must be a positive ratio, got {values['prob_ratio']}")

    @model_validator(mode="after")
    def _check(self) -> InferConfig:
        self.check_option_rules(self.__dict__)
        return self

    def check_disk(self) -> None:
        """Fill --threshold from the card; check that the table can be written and is the command's to replace."""
        _use_card_threshold(self, self.model)
        output = self.output_file
        if output.is_dir():
            raise ValueError(f"--output: {str(output)!r} is a folder; give a file name")
        try:
            _writable_folder(output.parent)
        except ValueError as error:
            raise ValueError(f"--output: {error}") from None
        what = "a cutout" if output.name.lower().endswith(FITS_SUFFIXES) else "an alert packet"
        if (what == "a cutout" or sniff_file(output) in ("avro", "tar")) and _is_under(
            output, self.cutouts, self.recursive
        ):
            raise ValueError(f"--output: {str(output)!r} is {what} being scored; choose another path")
        _check_outputs(
            self,
            "--output",
            [Output(output, "table", formats.INFER_COLUMNS, (formats.INFER_ENSEMBLE_COLUMNS,))],
            [self.model, card_file(self.model), *([self.cutouts] if self.cutouts.is_file() else [])],
        )

    @property
    def output_file(self) -> Path:
        """Where the table goes: --output, else infer_results.dat in the folder (beside a packet file)."""
        if self.output is not None:
            return self.output
        folder = self.cutouts.parent if self.cutouts.is_file() else self.cutouts
        return folder / "infer_results.dat"

    def output_folders(self) -> list[Path]:
        """Return the table's folder."""
        return [self.output_file.parent]


_SPARK_MASTER = re.compile(r"local(\[(\d+|\*)(,\d+)?\])?|yarn|(spark|k8s|mesos)://\S+")
_SPARK_CONF = re.compile(r"[A-Za-z0-9_.-]+=.*")
_JVM_SIZE = (re.compile(r"[0-9]+[kmgt]", re.IGNORECASE), "a whole number and a unit k, m, g or t (4g, 512m)")
_SPARK_SIZE = (re.compile(r"[0-9]+([kmgtp]b?|b)?", re.IGNORECASE), "a size such as 4g or 512m")
_POSITIVE = (re.compile(r"[1-9][0-9]*"), "a positive whole number")
#: Values of well-known Spark settings checked before Java starts (a bad spark.driver.memory stops the JVM
#: itself, with no word of which setting): the pattern and the rule.
_SPARK_CONF_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "spark.driver.memory": _JVM_SIZE,  # the JVM's -Xmx
    **dict.fromkeys(
        (
            "spark.executor.memory",
            "spark.driver.maxResultSize",
            "spark.executor.memoryOverhead",
            "spark.driver.memoryOverhead",
            "spark.executor.pyspark.memory",
        ),
        _SPARK_SIZE,
    ),
    **dict.fromkeys(("spark.executor.cores", "spark.driver.cores"), _POSITIVE),
}


def _has_scheme(text: str) -> bool:
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", text) is not None and not re.match(r"[A-Za-z]:[\\/]", text)


class InferSparkConfig(CommandConfig):
    """Score candidate cutouts on Apache Spark; writes the results as Parquet (and infer_results.dat).

    Reads FITS cutouts from a folder or URI (every file below it, as otrain-infer --recursive;
    a URI's through Spark's binaryFile source: file:, hdfs:, s3a: ...) and the ZTF or Rubin alert
    packets there (Avro files and tarballs, told from their bytes), or the Parquet folder of otrain-pack
    or a Parquet table of ZTF alerts (Fink's), and scores them with the same reading, cropping,
    plane and EDGE rules as otrain-infer. The model (a .keras/.h5 file, or an MLflow URI such as
    models:/otrain-cnn@champion) is shipped to the executors and loaded once per Python worker: its
    ONNX twin, run by ONNX Runtime, when --backend chooses it, else the Keras model.
    The results have the columns of infer_results.dat; unreadable files are counted and listed.
    With --stream, a Spark Structured Streaming query scores the files as they land in --cutouts,
    each once, adding to --output run after run (its checkpoint records what was read and written).
    """

    command: ClassVar[str] = "otrain-infer-spark"

    output: Path = option(..., "Output folder of Parquet part files (appears complete or not at all).")
    model: str = option(
        ...,
        "Trained model: a .keras or .h5 file (original O'TRAIN models included), or an MLflow model URI "
        "(models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model), fetched from MLFLOW_TRACKING_URI.",
    )
    cutouts: str | None = option(
        None,
        "Folder or URI (file:, hdfs:, s3a: ...) of FITS cutouts and alert packets (Avro, tarballs), sub-folders "
        "included; or give --parquet.",
    )
    parquet: ExistingFolder | None = option(
        None, "Parquet folder written by otrain-pack, or of ZTF alerts (Fink's columns); or give --cutouts."
    )
    table: Path | None = option(
        None, "Also write the results as an infer_results.dat table (the format of otrain-infer) at this path."
    )
    master: str = option("local[*]", "Spark master: local[*], local[N], spark://HOST:PORT, yarn, k8s://...")
    conf: tuple[str, ...] = option((), "Spark settings KEY=VALUE passed to the session (spark.executor.memory=4g).")
    threshold: Probability | None = option(
        None, "Probability threshold of the 'real' column: real if label1 > threshold. Default: the model card's."
    )
    prob_ratio: float | None = option(None, "Prior re-weighting p' = p / (p + (1 - p) * r) of P(real); default: none.")
    planes: Planes = option(None, "Image planes to read, in channel order. Default: those of the model card.")
    batch_size: PositiveInt = option(PREDICT_BATCH, "Cutouts scored per batch on each executor.")
    overwrite: bool = option(
        False, "Replace an existing --output folder (only one otrain wrote) and a --table otrain-infer did not write."
    )
    backend: Backend = _backend_option()
    stream: bool = option(
        False, "Score the files that land in --cutouts as they come (Spark Structured Streaming) into --output."
    )
    checkpoint: Path | None = option(
        None, "With --stream: the query's checkpoint folder (what was read and written). Default: <output>/_checkpoint."
    )
    trigger: float | None = option(None, f"With --stream: seconds between micro-batches (default {DEFAULT_TRIGGER:g}).")
    available_now: bool = option(False, "With --stream: score the files there now, then stop.")

    @model_validator(mode="after")
    def _check(self) -> InferSparkConfig:
        check_stream_options(self.__dict__)
        if (self.cutouts is None) == (self.parquet is None):
            raise ValueError("--cutouts, --parquet: give exactly one of them")
        if is_mlflow_uri(self.model):
            try:
                _model_uri(self.model)
            except ValueError as error:
                raise ValueError(f"--model: {error}") from None
        if not _SPARK_MASTER.fullmatch(self.master):
            raise ValueError(
                f"--master: must be local[*], local[N], spark://HOST:PORT, yarn, k8s://... or mesos://..., "
                f"got {self.master!r}"
            )
        for entry in self.conf:
            if not _SPARK_CONF.fullmatch(entry):
                raise ValueError(f"--conf: must be KEY=VALUE (spark.executor.memory=4g), got {entry!r}")
            key, value = entry.split("=", 1)
            pattern, rule = _SPARK_CONF_RULES.get(key, (None, ""))
            if pattern is not None and not pattern.fullmatch(value):
                raise ValueError(f"--conf: {key} must be {rule}, got {value!r}")
        InferConfig.check_option_rules(self.__dict__)
        return self

    def check_disk(self) -> None:
        """Check the local inputs, fill --threshold from the card, check that the outputs are otrain's to replace."""
        if self.cutouts is not None and not _has_scheme(self.cutouts):
            try:
                _existing_folder(Path(self.cutouts))
            except ValueError as error:
                raise ValueError(f"--cutouts: {error}") from None
        if not is_mlflow_uri(self.model):
            try:
                _existing_file(Path(self.model))
            except ValueError as error:
                raise ValueError(f"--model: {error}") from None
            _use_card_threshold(self, Path(self.model))
        local_inputs = [Path(self.cutouts)] if self.cutouts is not None and not _has_scheme(self.cutouts) else []
        if self.stream and self.cutouts is not None:
            check_stream_folders(
                self.output, self.checkpoint, self.cutouts, bool(local_inputs), self.model, self.threshold
            )
            return
        _parquet_output(self, self.output, [*local_inputs, *([self.parquet] if self.parquet is not None else [])])
        if self.table is not None:
            if self.table.is_dir():
                raise ValueError(f"--table: {str(self.table)!r} is a folder; give a file name")
            if self.output.resolve() in self.table.resolve().parents:
                raise ValueError(
                    f"--table: {str(self.table)!r} is inside --output, which is replaced whole; put it beside"
                )
            inputs = [Path(self.model)] if not is_mlflow_uri(self.model) else []
            check_outputs(
                [Output(self.table, "table", formats.INFER_COLUMNS, (formats.INFER_ENSEMBLE_COLUMNS,))],
                flag="--table",
                command="otrain-infer",
                inputs=inputs,
                overwrite=self.overwrite,
            )

    def output_folders(self) -> list[Path]:
        """Return the folders of the outputs."""
        return (
            [self.output.parent]
            + ([self.table.parent] if self.table is not None else [])
            + ([self.checkpoint.parent] if self.checkpoint is not None else [])
        )


#: Cutouts of the training cube that calibrate an int8 model's activation ranges, by default.
INT8_CALIBRATION_CUTOUTS = 512
#: The ONNX metadata key of every ONNX file otrain writes: the SHA-256 of the Keras file it is the twin of.
SOURCE_SHA256 = "otrain.source_sha256"
#: How far a model's ONNX twin may be from it, in machine epsilons of each cutout's logit scale
#: (otrain.score.twin.parity_allowance; docs/onnx.md says why 64).
PARITY_TOLERANCE = 64.0


def _parity_tolerance(value: float) -> float:
    """Check a parity tolerance: machine epsilons of the logit scale, at least 1 (not a probability)."""
    if value < 1:
        raise ValueError(f"must be at least 1 (machine epsilons of the logit scale, docs/onnx.md), got {value}")
    return value


class ExportConfig(CommandConfig):
    """Write the ONNX twin <stem>.onnx of a Keras model (original O'TRAIN .h5 models included).

    The twin (normalisation and calibration layers included) is checked against the Keras model
    on --cube before it is written: P(real) must agree as closely as float32 arithmetic allows
    (--tolerance, docs/onnx.md). The check is recorded in the model card (<model>.card.json,
    created for a model without one). otrain-infer and the other scoring commands then score
    with ONNX Runtime. With --quantize int8, an int8 model <stem>.int8.onnx is written too:
    ONNX Runtime's static quantisation, calibrated on a sample of the training cube; the card
    records how far its ROC AUC and its decisions at the card's threshold move on --cube, and
    --backend auto uses it only when both move by less than 0.002 in AUC and 0.5 % of
    decisions.
    """

    command: ClassVar[str] = "otrain-export"

    model: ExistingFile = option(..., "Trained model file (.keras or .h5, original O'TRAIN models included).")
    cube: ExistingFile | None = option(
        None,
        "Datacube (.npz) on which the twin must agree with the model (and on which int8 is judged). Default: the "
        "training's test set (test_set/datacube/cube_test.npz beside the model); without one, 256 seeded random "
        "cutouts (int8 then needs --cube).",
    )
    tolerance: Annotated[float, AfterValidator(_parity_tolerance)] = option(
        PARITY_TOLERANCE,
        "How far the twin's log-odds may be from the model's on each cutout of --cube, in machine epsilons (at least "
        "1; not a difference of P(real), as before; float32's, float16's for a --mixed-precision model) of the "
        "cutout's logit scale, the size of the terms its last layer sums (docs/onnx.md); the card records it.",
    )
    quantize: Literal["none", "int8"] = option("none", "Also write an int8 model <stem>.int8.onnx.")
    calibration_cube: ExistingFile | None = option(
        None,
        "Datacube whose cutouts calibrate the int8 model. Default: the training cube the model card names "
        "(its training rows), else --cube.",
    )
    calibration_size: PositiveInt = option(
        INT8_CALIBRATION_CUTOUTS,
        "Cutouts (a seeded sample, rounded down to whole batches of 64) that calibrate the int8 model.",
    )
    seed: Seed = option(42, "Seed of the calibration sample and of the random cutouts.")
    overwrite: bool = option(False, "Replace an existing <stem>.onnx or <stem>.int8.onnx that otrain did not write.")
    tracking: bool = _log_into_training_run()

    @model_validator(mode="after")
    def _check(self) -> ExportConfig:
        if self.model.suffix not in (".keras", ".h5", ".hdf5"):
            raise ValueError(f"--model: {str(self.model)!r} is not a Keras model file (.keras or .h5)")
        if self.quantize == "none":
            for name in ("calibration_cube", "calibration_size"):
                if name in self.model_fields_set:
                    raise ValueError(f"{self.flag_of(name)}: only with --quantize int8")
        return self

    def check_disk(self) -> None:
        """Check the cubes of the checks and that the ONNX files are otrain's to replace."""
        planned = [Output(self.twin, "onnx", (SOURCE_SHA256,))]
        if self.quantize == "int8":
            planned.append(Output(self.int8_twin, "onnx", (SOURCE_SHA256,)))
        if self.calibration_cube is not None and self.calibration_cube.resolve() == self.check_cube.resolve():
            raise ValueError(
                f"--calibration-cube: {str(self.calibration_cube)!r} is the cube the int8 model is judged on; "
                "calibrate on training cutouts"
            )
        if self.quantize == "int8" and not self.check_cube.is_file():
            raise ValueError(
                f"--quantize: int8 is judged on a labelled cube and {str(self.model)!r} has no test set beside it "
                "(test_set/datacube/cube_test.npz); give --cube"
            )
        inputs = [self.model, *(path for path in (self.cube, self.calibration_cube) if path is not None)]
        _check_outputs(self, "--model", planned, inputs)

    @property
    def check_cube(self) -> Path:
        """The cube of the checks: --cube, else the training's test set beside the model (which may not exist)."""
        return self.cube if self.cube is not None else self.model.parent / TEST_CUBE

    @property
    def twin(self) -> Path:
        """The float ONNX twin: <stem>.onnx beside the model."""
        return twin_path(self.model)

    @property
    def int8_twin(self) -> Path:
        """The int8 model: <stem>.int8.onnx beside the model."""
        return int8_path(self.model)

    def output_folders(self) -> list[Path]:
        """Return the model's folder."""
        return [self.model.parent]


#: What otrain-serve serves by default, and the port of its server (MLflow's 5000 is often a tracking server's).
DEFAULT_SERVED_MODEL = "models:/otrain-cnn@champion"
DEFAULT_SERVE_PORT = 5001
_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def _model_uri(value: str) -> str:
    uri = value.strip()
    if uri.lower().endswith(_KERAS_SUFFIXES):
        raise ValueError(
            f"{uri!r} is a Keras model file, not an MLflow model; serve a registered model "
            f"({DEFAULT_SERVED_MODEL}, see otrain-promote) or a training's runs:/<run id>/model"
        )
    if is_mlflow_uri(uri):
        parse_model_uri(uri)
    elif not uri:
        raise ValueError(f"must be an MLflow model URI such as {DEFAULT_SERVED_MODEL}")
    return uri


def _host(value: str) -> str:
    import ipaddress

    host = value.strip()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        label = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
        if len(host) > 253 or not re.fullmatch(rf"{label}(\.{label})*", host):
            raise ValueError(
                f"must be an IP address or a host name (127.0.0.1, 0.0.0.0, localhost), got {value!r}"
            ) from None
    return host


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"must be a TCP port in [1, 65535], got {value}")
    return value


class ServeConfig(CommandConfig):
    """Serve an MLflow model (by default the registered champion) over HTTP with MLflow's scoring server.

    Checks that the model exists (a registry alias is resolved to its version, which is what gets
    served), then runs 'mlflow models serve' in this environment (--env-manager local), with the
    tracking URI of the other commands (MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).
    POST {"inputs": [cutouts as (H, W, C) nested lists]} to http://HOST:PORT/invocations; the
    answer is {"predictions": [[P(bogus), P(real)], ...]}. GET /ping answers 200 once the model is
    loaded. With --print-request, prints the JSON body for the given cutout files instead
    (centre-cropped to the model's input, its planes, as otrain-infer reads them) and exits.
    """

    command: ClassVar[str] = "otrain-serve"

    model: Annotated[str, AfterValidator(_model_uri)] = option(
        DEFAULT_SERVED_MODEL,
        "MLflow model URI: models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/model, or an MLflow "
        "model folder. A plain .keras/.h5 file is refused (log it by training, or register it).",
    )
    host: Annotated[str, AfterValidator(_host)] = option(
        "127.0.0.1", "Interface the server listens on (0.0.0.0: every interface, as in a container)."
    )
    port: Annotated[int, AfterValidator(_port)] = option(DEFAULT_SERVE_PORT, "TCP port the server listens on.")
    workers: PositiveInt = option(1, "Server worker processes; each loads its own copy of the model.")
    print_request: tuple[ExistingFile, ...] | None = option(
        None,
        "Print the request body scoring these cutout files (.fits) and exit, instead of serving.",
    )
