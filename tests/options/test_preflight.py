"""The options' two steps: validation checks values and never touches the disk; the pre-flight checks the disk.

The messages below are those that validation gave before the pre-flight existed (same text,
same option named first, same count of further problems): moving the checks changed where they
run, not what they say.
"""

from __future__ import annotations

import ipaddress  # noqa: F401 - imported before any hook listens: otrain's host check imports it
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import call_main
from pydantic import ValidationError

from otrain import options as cfg
from otrain.cli.pack import main as pack_main
from otrain.errors import OptionError

#: Audit events of a process that reads, lists, creates or removes files (os.stat has none: the
#: paths below do not exist, so a check of their existence would refuse them instead).
DISK_EVENTS = {
    "open",
    "os.listdir",
    "os.scandir",
    "os.mkdir",
    "os.rmdir",
    "os.remove",
    "os.rename",
    "os.link",
    "os.symlink",
    "os.truncate",
    "os.chmod",
    "os.utime",
    "glob.glob",
    "shutil.rmtree",
    "tempfile.mkstemp",
    "tempfile.mkdtemp",
    "fcntl.flock",
}
#: What the audit hook heard while it listened (None: not listening); a hook cannot be removed.
_heard: list[tuple[str, tuple[Any, ...]]] | None = None
_hooked: list[bool] = []


def _listen(event: str, arguments: tuple[Any, ...]) -> None:
    if _heard is not None and event in DISK_EVENTS:
        _heard.append((event, arguments))


@contextmanager
def disk_events() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    """Record the disk's audit events while the block runs."""
    global _heard
    if not _hooked:
        sys.addaudithook(_listen)
        _hooked.append(True)
    _heard = []
    try:
        yield _heard
    finally:
        _heard = None


def absent_options(root: Path) -> dict[type[cfg.CommandConfig], dict[str, object]]:
    """Options of every command whose paths lie under a folder that does not exist."""
    a = root / "absent"
    return {
        cfg.SimulateConfig: {"out": a / "survey"},
        cfg.ConvertConfig: {"path": a / "base", "cube": "c", "cutouts": a / "cutouts"},
        cfg.TrainConfig: {
            "cube": a / "cube.npz",
            "model_path": a / "models",
            "model_name": "m",
            "init_from": a / "old.keras",
        },
        cfg.ExportConfig: {"model": a / "model.keras", "cube": a / "test.npz"},
        cfg.InferConfig: {"cutouts": a / "night", "model": a / "model.keras", "output": a / "scores.dat"},
        cfg.CheckInferConfig: {"plots": a / "plots", "crossmatch": a / "night", "infer": a / "night"},
        cfg.DiagnosticsConfig: {
            "path_cube_validation": a / "cube.npz",
            "model_path": a / "model.keras",
            "path_diagnostics": a / "d",
        },
        cfg.PlotResultsConfig: {
            "path_cube_validation": a / "cube.npz",
            "model_path": a / "model.keras",
            "path_plots": a / "plots",
        },
        cfg.OptimiseDatasetSizeConfig: {
            "cube": a / "cube.npz",
            "model_path": a / "models",
            "model_name": "m",
            "outdir": a / "study",
        },
        cfg.GradCamConfig: {"cube": a / "cube.npz", "model_path": a / "model.keras", "cam_path": a / "cam"},
        cfg.PromoteConfig: {"model_dir": a / "training", "report": a / "promotion.json"},
        cfg.CheckParamsConfig: {"params": a / "params.yaml", "stamp": a / "checked.txt"},
        cfg.SummaryConfig: {
            "diagnostics": a / "diagnostics.json",
            "promotion": a / "promotion.json",
            "markdown": a / "summary.md",
        },
        cfg.CrossValidateConfig: {"cube": a / "cube.npz", "output": a / "cv", "init_from": a / "old.keras"},
        cfg.ServeConfig: {"print_request": [a / "one.fits", a / "two.fits"]},
        cfg.PackConfig: {"cutouts": a / "night", "output": a / "night.parquet"},
        cfg.InferSparkConfig: {
            "cutouts": str(a / "night"),
            "model": str(a / "model.keras"),
            "output": a / "scores.parquet",
            "table": a / "scores.dat",
        },
        cfg.RelabelConfig: {
            "marks": a / "marks.csv",
            "cutouts": a / "night",
            "out": a / "labelled",
            "include": [a / "old", a / "older"],
        },
        cfg.ReportConfig: {
            "infer": a / "night",
            "cutouts": a / "night",
            "model": a / "model.keras",
            "output": a / "page",
        },
    }


#: What each command says of the options above ({a}: the absent folder); None: nothing to refuse.
ABSENT_MESSAGES: dict[type[cfg.CommandConfig], str | None] = {
    cfg.SimulateConfig: None,
    cfg.ConvertConfig: "--cutouts: folder '{a}/cutouts' does not exist",
    cfg.TrainConfig: "--cube: file '{a}/cube.npz' does not exist (and 1 more problem)",
    cfg.ExportConfig: "--model: file '{a}/model.keras' does not exist (and 1 more problem)",
    cfg.InferConfig: "--cutouts: folder '{a}/night' does not exist (and 1 more problem)",
    cfg.CheckInferConfig: "--crossmatch: '{a}/night' does not exist (give the file or the folder holding it)",
    cfg.DiagnosticsConfig: "--path-cube-validation: file '{a}/cube.npz' does not exist (and 1 more problem)",
    cfg.PlotResultsConfig: "--path-cube-validation: file '{a}/cube.npz' does not exist (and 1 more problem)",
    cfg.OptimiseDatasetSizeConfig: "--cube: file '{a}/cube.npz' does not exist",
    cfg.GradCamConfig: "--cube: file '{a}/cube.npz' does not exist (and 1 more problem)",
    cfg.PromoteConfig: "--model-dir: folder '{a}/training' does not exist",
    cfg.CheckParamsConfig: "--params: file '{a}/params.yaml' does not exist",
    cfg.SummaryConfig: "--diagnostics: file '{a}/diagnostics.json' does not exist (and 1 more problem)",
    cfg.CrossValidateConfig: "--cube: file '{a}/cube.npz' does not exist (and 1 more problem)",
    cfg.ServeConfig: "--print-request: file '{a}/one.fits' does not exist (and 1 more problem)",
    cfg.PackConfig: "--cutouts: folder '{a}/night' does not exist",
    cfg.InferSparkConfig: "--cutouts: folder '{a}/night' does not exist",
    cfg.RelabelConfig: "--marks: file '{a}/marks.csv' does not exist (and 3 more problems)",
    cfg.ReportConfig: "--cutouts: folder '{a}/night' does not exist (and 1 more problem)",
}


def test_every_option_model_validates_without_touching_the_disk(tmp_path: Path) -> None:
    options = absent_options(tmp_path)
    assert set(options) == set(cfg.COMMAND_CONFIGS)
    with disk_events() as heard:
        configs = [model.model_validate(values) for model, values in options.items()]
    assert heard == []
    assert not (tmp_path / "absent").exists()
    for config in configs:
        if isinstance(config, cfg.InferConfig | cfg.DiagnosticsConfig | cfg.ReportConfig):
            assert config.threshold is None  # the card's, filled by the pre-flight only


@pytest.mark.parametrize("model", list(ABSENT_MESSAGES), ids=lambda model: model.command)
def test_the_preflight_refuses_what_validation_refused_before(tmp_path: Path, model: type[cfg.CommandConfig]) -> None:
    config = model.model_validate(absent_options(tmp_path)[model])
    expected = ABSENT_MESSAGES[model]
    if expected is None:
        config.preflight()
        return
    with pytest.raises(OptionError) as refused:
        config.preflight()
    assert str(refused.value) == expected.format(a=tmp_path / "absent")
    assert refused.value.exit_code == 2


def test_a_read_only_root_is_refused_by_the_preflight_only() -> None:
    # /proc refuses new files even to root, unlike a chmod-ed folder.
    config = cfg.ConvertConfig.model_validate({"path": "/proc/otrain-test", "cube": "c", "cutouts": "/proc/self"})
    with pytest.raises(OptionError, match=r"^--path: cannot write in '/proc' \("):
        config.preflight()


def made_cases(root: Path) -> list[tuple[type[cfg.CommandConfig], dict[str, object], str]]:
    """Options whose files exist, each refused by a check of the command as a whole ({r}: root)."""
    survey = root / "survey"
    (survey / "true").mkdir(parents=True)
    night = root / "night"
    night.mkdir()
    model = root / "model.keras"
    model.write_bytes(b"")
    (root / "model.keras.card.json").write_text("{not json")
    cube = root / "cube.npz"
    cube.write_bytes(b"")
    (root / "datacube").mkdir()
    (root / "datacube" / "cube.npz").write_bytes(b"")
    (root / "models" / "CNN_training" / "m").mkdir(parents=True)
    (root / "models" / "CNN_training" / "m" / "history.csv").write_text("")
    page = root / "page"
    page.mkdir()
    (page / "notes.txt").write_text("")
    training = {"cube": cube, "model_path": root / "models", "model_name": "m"}
    return [
        (
            cfg.SimulateConfig,
            {"out": survey},
            "--out: '{r}/survey' already holds a survey (true); pass --overwrite to replace it",
        ),
        (
            cfg.InferConfig,
            {"cutouts": night, "model": model},
            "{r}/model.keras.card.json: not a readable model card "
            "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        ),
        (
            cfg.TrainConfig,
            training,
            "--model-name: '{r}/models/CNN_training/m' already holds a training; pass --overwrite to replace it",
        ),
        (
            cfg.TrainConfig,
            {**training, "resume": True},
            "--resume: nothing to resume in '{r}/models/CNN_training/m': no interrupted training "
            "(it holds a finished training; pass --overwrite to train again)",
        ),
        (
            cfg.ConvertConfig,
            {"path": root, "cube": "cube", "cutouts": night},
            "--cube: '{r}/datacube/cube.npz' already exists; pass --overwrite to replace it",
        ),
        (
            cfg.ReportConfig,
            {"infer": cube, "cutouts": night, "model": model, "output": page, "threshold": 0.5},
            "--output: '{r}/page' exists and holds files otrain-report did not write (notes.txt); choose another path",
        ),
        (
            cfg.PackConfig,
            {"cutouts": night, "output": night / "inside.parquet"},
            "--output: '{r}/night/inside.parquet' is the input '{r}/night' or inside it; choose another path",
        ),
    ]


def test_the_commands_own_checks_of_the_disk_run_in_the_preflight(tmp_path: Path) -> None:
    for model, values, message in made_cases(tmp_path):
        config = model.model_validate(values)
        with pytest.raises(OptionError) as refused:
            config.preflight()
        assert str(refused.value) == message.format(r=tmp_path), model.command


def test_value_rules_are_still_refused_by_validation(tmp_path: Path) -> None:
    options = {"plots": tmp_path / "absent", "crossmatch": tmp_path / "absent", "infer": tmp_path / "absent"}
    with pytest.raises(ValidationError, match=r"--maglim: give one or more values in increasing order, got 18\.0 12"):
        cfg.CheckInferConfig.model_validate({**options, "maglim": [18, 12]})
    with pytest.raises(ValidationError, match="--resume, --overwrite: give one or the other"):
        cfg.TrainConfig.model_validate(
            {"cube": "absent.npz", "model_path": "absent", "model_name": "m", "resume": True, "overwrite": True}
        )


def test_the_preflight_fills_the_threshold_from_the_card(tmp_path: Path) -> None:
    model = tmp_path / "model.keras"
    model.write_bytes(b"")
    (tmp_path / "model.keras.card.json").write_text('{"threshold": 0.3}')
    config = cfg.InferConfig.model_validate({"cutouts": tmp_path, "model": model})
    assert config.threshold is None
    config.preflight()
    assert config.threshold == 0.3
    given = cfg.InferConfig.model_validate({"cutouts": tmp_path, "model": model, "threshold": 0.7})
    given.preflight()
    assert given.threshold == 0.7


def test_a_default_path_is_not_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As validation never checked a default (validate_default=False), the pre-flight checks only given paths."""
    monkeypatch.chdir(tmp_path)  # no reports/ here
    diagnostics = tmp_path / "diagnostics.json"
    diagnostics.write_text("{}")
    cfg.SummaryConfig.model_validate({"diagnostics": diagnostics}).preflight()


def test_params_yaml_still_checks_the_paths_it_may_set(tmp_path: Path) -> None:
    absent = tmp_path / "absent.keras"
    with pytest.raises(ValueError, match=rf"^params\.yaml: train\.init_from: file '{absent}' does not exist$"):
        cfg.validate_params({"train": {"model_name": "m", "init_from": str(absent)}})


def test_the_command_line_runs_the_preflight_after_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line naming the option, exit status 2: from validation first, then from the pre-flight."""
    absent = tmp_path / "absent"
    options = ("--cutouts", absent, "--output", tmp_path / "night.parquet")
    assert call_main(pack_main, *options, "--workers", "0") == 2
    assert capsys.readouterr().err == "otrain-pack: error: --workers: must be a positive whole number, got 0\n"
    assert call_main(pack_main, *options) == 2
    assert capsys.readouterr().err == f"otrain-pack: error: --cutouts: folder '{absent}' does not exist\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == []
