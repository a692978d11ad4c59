"""The command-line layer: console scripts, generated help, Fire parsing, exit codes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, call_main, make_tree, run_command
from helpers import imported_by_help

from otrain import options as cfg
from otrain.cli.app import parse_options, render_help
from otrain.cli.checkinfer import main as checkinfer_main
from otrain.cli.convert import main as convert_main
from otrain.cli.promote import main as promote_main

COMMANDS = {
    "otrain-simulate": cfg.SimulateConfig,
    "otrain-convert": cfg.ConvertConfig,
    "otrain-train": cfg.TrainConfig,
    "otrain-export": cfg.ExportConfig,
    "otrain-infer": cfg.InferConfig,
    "otrain-checkinfer": cfg.CheckInferConfig,
    "otrain-diagnostics": cfg.DiagnosticsConfig,
    "otrain-plot-results": cfg.PlotResultsConfig,
    "otrain-optimise-dataset-size": cfg.OptimiseDatasetSizeConfig,
    "otrain-grad-cam": cfg.GradCamConfig,
    "otrain-promote": cfg.PromoteConfig,
    "otrain-check-params": cfg.CheckParamsConfig,
    "otrain-summary": cfg.SummaryConfig,
    "otrain-cross-validate": cfg.CrossValidateConfig,
    "otrain-serve": cfg.ServeConfig,
    "otrain-pack": cfg.PackConfig,
    "otrain-infer-spark": cfg.InferSparkConfig,
    "otrain-relabel": cfg.RelabelConfig,
    "otrain-report": cfg.ReportConfig,
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_console_script_help_lists_every_option(command: str) -> None:
    result = run_command(command, "--help")
    assert result.returncode == 0, result.stderr
    config = COMMANDS[command]
    assert result.stdout.startswith(f"usage: {command} ")
    for name, field in config.model_fields.items():
        flag = config.flag_of(name)
        if field.annotation is bool and field.default is True:
            flag = "--no-" + flag[2:]  # on-by-default switches are shown as their negation
        assert flag in result.stdout
        assert field.description in result.stdout
    assert run_command(command, "-h").stdout == result.stdout


def test_help_into_a_closed_pipe_is_quiet() -> None:
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{BIN / 'otrain-convert'} --help | head -c 1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout == "u"
    assert result.stderr == ""
    assert result.returncode == 0


def test_help_shows_types_and_defaults() -> None:
    text = render_help(cfg.ConvertConfig)
    assert "--frac-true FLOAT  (default: 0.5)" in text
    assert "--cutout-size INT  (default: -1)" in text
    assert "--path, --path-datacube PATH  (required)" in text
    assert "--overwrite  (flag; default: off)" in text
    assert "--maglim, --mag-lim FLOAT [FLOAT ...]  (default: 12 18 21)" in render_help(cfg.CheckInferConfig)
    assert "--n_random INT  (default: 30)" in render_help(cfg.GradCamConfig)


def test_help_does_not_import_tensorflow() -> None:
    _, heavy = imported_by_help(["train", "infer", "grad_cam"], ["tensorflow", "keras", "mlflow", "astropy"])
    assert heavy == []


def test_prob_ratio_zero_is_an_option_error_not_a_crash(tmp_path: Path) -> None:
    model = tmp_path / "model.h5"
    model.write_bytes(b"")
    result = run_command("otrain-infer", "--cutouts", str(tmp_path), "--model", str(model), "--prob-ratio", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "otrain-infer: error: --prob-ratio: must be a positive ratio, got 0.0"


def test_multi_value_options_like_the_original_nargs(tmp_path: Path) -> None:
    (tmp_path / "crossmatch.dat").write_text("")
    (tmp_path / "infer_results.dat").write_text("")
    options = parse_options(
        cfg.CheckInferConfig,
        ["--maglim", "12", "18", "21", "22", "--cnn-problim", "0.2", "0.9", "--plots", str(tmp_path)],
    )
    options.update(crossmatch=tmp_path, infer=tmp_path)
    config = cfg.CheckInferConfig.model_validate(options)
    assert config.maglim == (12.0, 18.0, 21.0, 22.0)
    assert config.cnn_problim == (0.2, 0.9)
    assert parse_options(cfg.CheckInferConfig, ["--mag-lim", "15", "-3"])["mag_lim"] == ["15", "-3"]


def test_values_reach_the_config_exactly_as_typed(tmp_path: Path) -> None:
    options = parse_options(cfg.ConvertConfig, ["--cutouts", "2024", "--cube", "1_000", "--path=1e3", "--seed", "007"])
    assert options == {"cutouts": "2024", "cube": "1_000", "path": "1e3", "seed": "007"}
    assert parse_options(cfg.ConvertConfig, ["--cutout-size", "-1"]) == {"cutout_size": "-1"}
    assert parse_options(cfg.TrainConfig, ["--no-tracking", "--augment"]) == {"tracking": False, "augment": True}


def test_none_unsets_an_option_that_may_be_unset_as_dvc_writes_null() -> None:
    assert parse_options(cfg.TrainConfig, ["--target_fnr", "None", "--threshold=None"]) == {
        "target_fnr": None,
        "threshold": None,
    }
    assert parse_options(cfg.TrainConfig, ["--model-name", "None"]) == {"model_name": "None"}  # a name, not unset


def test_date_named_folders_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_tree(tmp_path / "20211214", 3, 3)
    assert call_main(convert_main, "--path", "out", "--cube", "1_000", "--cutouts", "20211214") == 0
    assert (tmp_path / "out" / "datacube" / "1_000.npz").is_file()


@pytest.mark.parametrize("option", ["--cutout-size", "--seed", "--frac-true", "--cube"])
def test_option_without_its_value(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str) -> None:
    arguments = ["--path", tmp_path / "o", "--cube", "c", "--cutouts", tmp_path]
    assert call_main(convert_main, *arguments, option) == 2
    assert capsys.readouterr().err.strip() == f"otrain-convert: error: {option}: needs a value (see --help)"
    assert not (tmp_path / "o").exists()


def test_checkinfer_accepts_several_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "crossmatch.dat").write_text("")
    (tmp_path / "infer_results.dat").write_text("")
    status = call_main(
        checkinfer_main,
        *("--plots", tmp_path, "--crossmatch", tmp_path, "--infer", tmp_path),
        *("--maglim", "12", "18", "21", "23", "--cnn-problim", "0.1", "1.5"),
    )
    assert status == 2
    assert capsys.readouterr().err.strip() == (
        "otrain-checkinfer: error: --cnn-problim: must be a probability in [0, 1], got 1.5"
    )


def test_stray_positional_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert call_main(convert_main, "--path", tmp_path, "oops") == 2
    assert capsys.readouterr().err.strip() == (
        "otrain-convert: error: unexpected argument 'oops': every option is given as --name value (see --help)"
    )


def test_unknown_and_missing_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert call_main(convert_main, "--path", tmp_path, "--cube", "c", "--cutouts", tmp_path, "--colour", "red") == 2
    assert capsys.readouterr().err.strip() == "otrain-convert: error: unknown option --colour (see --help)"
    assert call_main(convert_main, "--path", tmp_path, "--cube", "c") == 2
    assert capsys.readouterr().err.strip() == "otrain-convert: error: --cutouts: required option is missing"


@pytest.mark.parametrize(
    ("main", "option"),
    [
        (convert_main, "--no-such-thing"),
        (convert_main, "--no_such_thing"),
        (convert_main, "--colour=red"),
        (promote_main, "--no-tracking"),  # otrain-promote always tracks
    ],
)
def test_an_unknown_option_is_named_as_typed(
    main: Callable[[Sequence[str]], Any], option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert call_main(main, option) == 2
    flag = option.partition("=")[0]
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: unknown option {flag} (see --help)")


def test_every_console_script_is_installed() -> None:
    for command in COMMANDS:
        assert (BIN / command).is_file(), command


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_numbers_are_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    from otrain.cli.train import main as train_main

    cube = tmp_path / "cube.npz"
    cube.write_bytes(b"")
    status = call_main(
        train_main, "--cube", cube, "--model-path", tmp_path, "--model-name", "m", "--learning-rate", value
    )
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("otrain-train: error: --learning-rate: Input should be a finite number"), err
    assert len(err.splitlines()) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cube.npz"]


def test_a_failed_command_leaves_no_empty_folder_it_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The output folders (and their parents) that a failing command created go again; a folder
    that existed before, or that holds anything, stays."""
    tree = make_tree(tmp_path / "cutouts", 3, 0)
    (tree / "false").mkdir()
    out = tmp_path / "new" / "deeper"
    assert call_main(convert_main, "--path", out, "--cube", "c", "--cutouts", tree) == 1
    assert "no cutout files" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert call_main(convert_main, "--path", kept, "--cube", "c", "--cutouts", tree) == 1
    assert kept.is_dir()
    assert list(kept.iterdir()) == []


def test_check_params_passes_a_good_file_and_names_the_first_mistake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml
    from conftest import ROOT

    from otrain.cli.check_params import main as check_params_main

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    good, stamp = tmp_path / "params.yaml", tmp_path / "reports" / "checked.txt"
    good.write_text(yaml.safe_dump(params))
    assert call_main(check_params_main, "--params", good, "--stamp", stamp) == 0
    assert f"{good}: 13 sections, every option valid" in capsys.readouterr().out
    first = stamp.read_bytes()
    params["train"]["epochs"] = 99  # another valid file: the same stamp, so DVC reruns only what changed
    good.write_text(yaml.safe_dump(params))
    assert call_main(check_params_main, "--params", good, "--stamp", stamp) == 0
    assert stamp.read_bytes() == first == cfg.PARAMS_STAMP.encode()
    params["train"]["test_frac"] = 0.9
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    capsys.readouterr()
    assert call_main(check_params_main, "--params", bad, "--stamp", tmp_path / "other.txt") == 2
    assert capsys.readouterr().err == (
        f"otrain-check-params: error: {bad}: train.frac, train.test_frac: together must leave data for training, "
        "got 0.15 + 0.9\n"
    )
    assert not (tmp_path / "other.txt").exists()
    bad.write_text("train: [unclosed\n")
    assert call_main(check_params_main, "--params", bad) == 2
    assert capsys.readouterr().err.startswith(f"otrain-check-params: error: {bad}: not a readable YAML file (")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert call_main(check_params_main, "--params", good, "--stamp", notes) == 2
    assert "--stamp: " in capsys.readouterr().err
    assert notes.read_text() == "my notes"


def test_summary_prints_the_pipelines_reports_and_appends_markdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from otrain.cli.summary import main as summary_main

    diagnostics, promotion = tmp_path / "diagnostics.json", tmp_path / "promotion.json"
    diagnostics.write_text('{"n": 120, "threshold": 0.5, "accuracy": 0.9125, "mcc": 0.8, "roc_auc": null}')
    promotion.write_text(
        '{"registered_name": "otrain-cnn", "version": "3", "promoted": false, "metric": "mcc", "new_value": 0.8,'
        ' "champion_version": "2", "champion_value": 0.85, "reason": "mcc 0.8000 < champion v2 0.8500 - 0.005"}'
    )
    reports = ("--diagnostics", diagnostics, "--promotion", promotion)
    assert call_main(summary_main, *reports) == 0
    text = capsys.readouterr().out
    assert "Test set (120 candidates, real if P(real) > 0.5):" in text
    assert "accuracy             0.9125" in text
    assert "roc_auc              n/a" in text
    assert "otrain-cnn version 3 is not the champion" in text
    markdown = tmp_path / "summary.md"
    markdown.write_text("# earlier\n")
    for _ in range(2):
        assert call_main(summary_main, *reports, "--markdown", markdown, "--title", "Nightly") == 0
    appended = markdown.read_text()
    assert appended.startswith("# earlier\n## Nightly\n")
    assert appended.count("## Nightly") == 2
    assert "| champion before | 2 | 0.8500 |" in appended
    capsys.readouterr()
    assert call_main(summary_main, "--diagnostics", tmp_path / "none.json", "--promotion", promotion) == 2
    assert capsys.readouterr().err.strip() == (
        f"otrain-summary: error: --diagnostics: file '{tmp_path / 'none.json'}' does not exist"
    )
    promotion.write_text("{}")
    assert call_main(summary_main, *reports) == 1
    assert capsys.readouterr().err.strip() == (
        f"otrain-summary: error: {promotion}: not an otrain report (no 'registered_name'); run `dvc repro` first"
    )
    assert call_main(summary_main, *reports, "--markdown", diagnostics) == 2
    assert "is one of the reports it summarises" in capsys.readouterr().err


def test_summary_shows_the_threshold_each_model_was_judged_at(tmp_path: Path) -> None:
    from otrain.cli.summary import main as summary_main

    diagnostics, promotion = tmp_path / "diagnostics.json", tmp_path / "promotion.json"
    diagnostics.write_text('{"n": 120, "threshold": 0.5, "accuracy": 0.9125, "mcc": 0.8, "roc_auc": null}')
    decision = {"registered_name": "otrain-cnn", "version": "3", "promoted": True, "metric": "mcc", "new_value": 0.8}
    markdown = tmp_path / "summary.md"
    reports = ("--diagnostics", diagnostics, "--promotion", promotion, "--markdown", markdown)
    compared = {"champion_version": "2", "champion_value": 0.75, "new_threshold": 0.9125, "champion_threshold": 0.0625}
    promotion.write_text(json.dumps({**decision, **compared, "reason": "r"}))
    assert call_main(summary_main, *reports) == 0
    table = markdown.read_text()
    assert "| model | version | mcc | threshold |\n| --- | --- | --- | --- |\n" in table
    assert "| new | 3 | 0.8000 | 0.9125 |\n| champion before | 2 | 0.7500 | 0.0625 |\n" in table
    markdown.unlink()
    note = "v3's model card records no threshold (an older model): judged at 0.5"
    promotion.write_text(json.dumps({**decision, "reason": "no champion yet", "new_threshold": 0.5, "note": note}))
    assert call_main(summary_main, *reports) == 0
    table = markdown.read_text()
    assert "| new | 3 | 0.8000 | 0.5000 |\n| champion before | none | n/a | n/a |\n" in table
    assert f"Note: {note}." in table
