"""The pipeline's parameters: otrain-check-params, and params.yaml checked against every command's options."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict

from otrain.io.outputs import is_same_file
from otrain.options.base import CommandConfig, ExistingFile, disk_problems, option
from otrain.options.data import ConvertConfig, PackConfig, RelabelConfig, SimulateConfig
from otrain.options.judging import (
    CheckInferConfig,
    DiagnosticsConfig,
    GradCamConfig,
    PlotResultsConfig,
    ReportConfig,
)
from otrain.options.scoring import ExportConfig, InferConfig, InferSparkConfig, ServeConfig
from otrain.options.studies import CrossValidateConfig, OptimiseDatasetSizeConfig
from otrain.options.tracking import PromoteConfig, SummaryConfig
from otrain.options.training import TrainConfig

__all__ = [
    "COMMAND_CONFIGS",
    "PARAMS_SECTIONS",
    "PARAMS_STAMP",
    "PIPELINE_FIXED",
    "PIPELINE_INPUTS",
    "SHARED_SECTIONS",
    "CheckParamsConfig",
    "validate_params",
]


#: What otrain-check-params writes into --stamp: always the same, so that the stages that depend
#: on the stamp rerun only when their own parameters or code change.
PARAMS_STAMP = "params.yaml checked against the options of every otrain command\n"


class CheckParamsConfig(CommandConfig):
    """Check a pipeline's params.yaml against the options of every otrain command.

    Every section must name a command, every key one of its options, every value must be valid,
    and options that go together must agree (for example train.frac + train.test_frac < 1).
    In the pipeline this is the first stage: a mistake stops dvc repro before any stage, and
    DVC has not yet removed any output. With --stamp, a file of constant content is written when
    the parameters are valid (the other stages depend on it).
    """

    command: ClassVar[str] = "otrain-check-params"

    params: ExistingFile = option(Path("params.yaml"), "The parameters file.")
    stamp: Path | None = option(None, "Write this file (always the same text) when the parameters are valid.")

    def check_disk(self) -> None:
        """Check that --stamp is a file this command wrote (or none), and not the parameters file."""
        if self.stamp is not None:
            if self.stamp.is_dir():
                raise ValueError(f"--stamp: {str(self.stamp)!r} is a folder")
            if self.stamp.exists() and self.stamp.read_bytes() != PARAMS_STAMP.encode():
                raise ValueError(f"--stamp: {str(self.stamp)!r} exists and was not written by {self.command}")
            if is_same_file(self.stamp, self.params):
                raise ValueError(f"--stamp: {str(self.stamp)!r} is the parameters file")


#: Options that dvc.yaml sets itself (paths and names of the pipeline's files): params.yaml
#: sections hold only the tunable ones.
PIPELINE_FIXED = {
    "simulate": {"out", "overwrite", "workers", "planes"},
    "convert": {"path", "cube", "cutouts", "alerts", "labels", "overwrite", "workers", "skip_bad_files", "planes"},
    "train": {"cube", "model_path", "resume", "overwrite"},
    "infer": {"cutouts", "model", "output", "workers", "recursive", "overwrite"},
    "checkinfer": {"plots", "crossmatch", "infer", "mlflow_run", "overwrite"},
    "diagnostics": {"path_cube_validation", "model_path", "path_diagnostics", "overwrite"},
    "plot_results": {"path_cube_validation", "model_path", "path_plots", "overwrite"},
    "grad_cam": {"cube", "model_path", "cam_path", "overwrite"},
    "optimise_dataset_size": {"cube", "model_path", "outdir", "overwrite"},
    "promote": {"model_dir", "report", "overwrite"},
    "report": {"infer", "cutouts", "model", "output", "workers"},
}
#: params.yaml sections that dvc.yaml passes to several commands: section -> (its options, the
#: commands that take them). ``images.planes`` makes the survey and reads the cube with the same
#: planes: ``dvc exp run -S 'images.planes=[IMAGE,TEMPLATE,DIFF]'`` trains on triplets.
SHARED_SECTIONS: dict[str, tuple[tuple[str, ...], tuple[type[CommandConfig], ...]]] = {
    "images": (("planes",), (SimulateConfig, ConvertConfig)),
}
#: params.yaml section -> the command whose options it holds.
PARAMS_SECTIONS: dict[str, type[CommandConfig]] = {
    "simulate": SimulateConfig,
    "convert": ConvertConfig,
    "train": TrainConfig,
    "infer": InferConfig,
    "checkinfer": CheckInferConfig,
    "diagnostics": DiagnosticsConfig,
    "plot_results": PlotResultsConfig,
    "grad_cam": GradCamConfig,
    "optimise_dataset_size": OptimiseDatasetSizeConfig,
    "promote": PromoteConfig,
    "report": ReportConfig,
}


#: params.yaml sections that name the pipeline's inputs rather than a command's options: section -> key -> meaning.
PIPELINE_INPUTS: dict[str, dict[str, str]] = {
    "alerts": {"night": "the alert packets the infer_alerts stage scores (a packet file, a tarball, a folder)"},
}


def _params_key(section: str) -> Callable[[re.Match[str]], str]:
    """Return a ``re.sub`` replacement spelling ``--frac-true`` as ``<section>.frac_true``."""
    return lambda match: f"{section}.{match[1].replace('-', '_')}"


def validate_params(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Check a params.yaml mapping against the commands' models; return the validated sections.

    Each section may hold the tunable options of its command (not the pipeline's paths, which
    dvc.yaml sets); unknown sections, unknown keys, bad values and options that break a rule
    together (for example ``train.frac`` + ``train.test_frac`` >= 1) raise ``ValueError``
    naming the section and the keys. Shared sections (:data:`SHARED_SECTIONS`) must suit every
    command that takes them.
    """
    unknown = set(params) - set(PARAMS_SECTIONS) - set(SHARED_SECTIONS) - set(PIPELINE_INPUTS)
    if unknown:
        raise ValueError(f"params.yaml: unknown section(s) {', '.join(sorted(unknown))}")
    validated: dict[str, dict[str, Any]] = {}
    for section, values in params.items():
        if section in PIPELINE_INPUTS:
            validated[section] = _validate_inputs(section, values)
            continue
        if section in SHARED_SECTIONS:
            names, commands = SHARED_SECTIONS[section]
            for command in commands:  # the values must suit every command that takes them
                validated[section] = _validate_section(section, values, command, set(command.model_fields) - set(names))
            continue
        validated[section] = _validate_section(section, values, PARAMS_SECTIONS[section], PIPELINE_FIXED[section])
    return validated


def _validate_inputs(section: str, values: Any) -> dict[str, str]:
    """Validate a section of input paths (:data:`PIPELINE_INPUTS`): its keys, each a path as text."""
    if not isinstance(values, dict):
        raise ValueError(f"params.yaml: {section}: must be a mapping of names to paths")
    unknown = set(values) - set(PIPELINE_INPUTS[section])
    if unknown:
        raise ValueError(f"params.yaml: {section}.{sorted(unknown)[0]}: Extra inputs are not permitted")
    for name in PIPELINE_INPUTS[section]:
        value = values.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"params.yaml: {section}.{name}: must be a path ({PIPELINE_INPUTS[section][name]})")
    return dict(values)


def _validate_section(section: str, values: Any, model: type[CommandConfig], excluded: set[str]) -> dict[str, Any]:
    """Validate one params.yaml section against the options of ``model`` not in ``excluded``."""
    from pydantic import ValidationError, create_model

    fields = {name: (field.annotation, field) for name, field in model.model_fields.items() if name not in excluded}
    for name, field in model.model_fields.items():
        if name in fields and field.metadata:
            fields[name] = (Annotated[(field.annotation, *field.metadata)], field)
    section_model = create_model(
        f"{model.__name__}Params",
        __config__=ConfigDict(extra="forbid", coerce_numbers_to_str=True, allow_inf_nan=False),
        **fields,
    )
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"params.yaml: {section}: must be a mapping of option names to values")
    try:
        checked = section_model.model_validate(values or {})
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise ValueError(f"params.yaml: {section}.{where}: {str(first['msg']).removeprefix('Value error, ')}") from None
    # The paths' checks that a command runs in its pre-flight (a tunable path such as train.init_from).
    for name, field in model.model_fields.items():
        if name in checked.model_fields_set:
            for place, problem in disk_problems(field, getattr(checked, name)):
                where = ".".join(str(part) for part in (name, *place))
                raise ValueError(f"params.yaml: {section}.{where}: {problem}")
    if section not in SHARED_SECTIONS:
        try:
            model.check_option_rules(checked.model_dump())
        except ValueError as error:
            # The rules name command-line flags; here the keys are section.option.
            message = re.sub(r"--([a-z][\w-]*)", _params_key(section), str(error))
            raise ValueError(f"params.yaml: {message}") from None
    return checked.model_dump(mode="json")


#: Every command's config model, in the order of the original documentation.
COMMAND_CONFIGS: tuple[type[CommandConfig], ...] = (
    SimulateConfig,
    ConvertConfig,
    TrainConfig,
    ExportConfig,
    InferConfig,
    CheckInferConfig,
    DiagnosticsConfig,
    PlotResultsConfig,
    OptimiseDatasetSizeConfig,
    GradCamConfig,
    PromoteConfig,
    CheckParamsConfig,
    SummaryConfig,
    CrossValidateConfig,
    ServeConfig,
    PackConfig,
    InferSparkConfig,
    ReportConfig,
    RelabelConfig,
)
