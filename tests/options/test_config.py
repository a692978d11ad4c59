"""Every command's parameters: defaults, ranges and path checks live in otrain.options."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from otrain import options as cfg
from otrain.errors import OptionError
from otrain.io.outputs import INFER_COLUMNS


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    cube = tmp_path / "cube.npz"
    cube.write_bytes(b"")
    model = tmp_path / "model.h5"
    model.write_bytes(b"")
    cutouts = tmp_path / "cutouts"
    cutouts.mkdir()
    (cutouts / "crossmatch.dat").write_text("")
    (cutouts / "infer_results.dat").write_text("# " + " ".join(INFER_COLUMNS) + "\n")
    return {"cube": cube, "model": model, "cutouts": cutouts, "out": tmp_path / "out"}


def minimal_options(files: dict[str, Path]) -> dict[type[cfg.CommandConfig], dict[str, object]]:
    return {
        cfg.SimulateConfig: {"out": files["out"]},
        cfg.ConvertConfig: {"path": files["out"], "cube": "c", "cutouts": files["cutouts"]},
        cfg.TrainConfig: {"cube": files["cube"], "model_path": files["out"], "model_name": "m"},
        cfg.InferConfig: {"cutouts": files["cutouts"], "model": files["model"]},
        cfg.ExportConfig: {"model": files["model"]},
        cfg.CheckInferConfig: {"plots": files["out"], "crossmatch": files["cutouts"], "infer": files["cutouts"]},
        cfg.DiagnosticsConfig: {"path_cube_validation": files["cube"], "model_path": files["model"]},
        cfg.PlotResultsConfig: {
            "path_cube_validation": files["cube"],
            "model_path": files["model"],
            "path_plots": files["out"],
        },
        cfg.OptimiseDatasetSizeConfig: {
            "cube": files["cube"],
            "model_path": files["out"],
            "model_name": "m",
            "outdir": files["out"],
        },
        cfg.GradCamConfig: {"cube": files["cube"], "model_path": files["model"]},
        cfg.PromoteConfig: {"model_dir": files["cutouts"]},
        cfg.CheckParamsConfig: {"params": files["cube"]},
        cfg.SummaryConfig: {"diagnostics": files["cube"], "promotion": files["cube"]},
        cfg.CrossValidateConfig: {"cube": files["cube"], "output": files["out"]},
        cfg.ServeConfig: {},
        cfg.PackConfig: {"cutouts": files["cutouts"], "output": files["out"]},
        cfg.InferSparkConfig: {"cutouts": str(files["cutouts"]), "model": str(files["model"]), "output": files["out"]},
        cfg.RelabelConfig: {"marks": files["cube"], "cutouts": files["cutouts"], "out": files["out"]},
        cfg.ReportConfig: {
            "infer": files["cube"],
            "cutouts": files["cutouts"],
            "model": files["model"],
            "output": files["out"],
        },
    }


def test_every_command_has_a_config_that_validates_minimal_options(files: dict[str, Path]) -> None:
    options = minimal_options(files)
    assert set(options) == set(cfg.COMMAND_CONFIGS)
    for model, values in options.items():
        instance = model.model_validate(values)
        instance.preflight()
        assert instance.command.startswith("otrain-")


def test_original_defaults_are_kept(files: dict[str, Path]) -> None:
    options = minimal_options(files)
    convert = cfg.ConvertConfig.model_validate(options[cfg.ConvertConfig])
    assert (convert.frac_true, convert.cutout_size) == (0.5, -1)
    train = cfg.TrainConfig.model_validate(options[cfg.TrainConfig])
    assert (train.epochs, train.frac, train.dropout) == (10, 0.15, 0.3)
    # The threshold is the original 0.5 unless a target rate chooses it (None: neither given).
    assert (train.threshold, train.target_fnr, train.target_fpr) == (None, None, None)
    assert train.architecture == "otrain"
    check = cfg.CheckInferConfig.model_validate(options[cfg.CheckInferConfig])
    assert check.maglim == (12.0, 18.0, 21.0)
    assert check.cnn_problim == (0.1, 0.5, 0.7)
    assert (check.fwhm_ratio_lower, check.fwhm_ratio_upper) == (0.5, 4.2)
    diagnostics = cfg.DiagnosticsConfig.model_validate(options[cfg.DiagnosticsConfig])
    assert diagnostics.path_diagnostics == Path("cnn_results")
    optimise = cfg.OptimiseDatasetSizeConfig.model_validate(options[cfg.OptimiseDatasetSizeConfig])
    assert (optimise.n_sections, optimise.epochs, optimise.architecture) == (20, 10, "otrain")
    assert cfg.GradCamConfig.model_validate(options[cfg.GradCamConfig]).n_random == 30


def test_configs_are_frozen(files: dict[str, Path]) -> None:
    convert = cfg.ConvertConfig.model_validate(minimal_options(files)[cfg.ConvertConfig])
    with pytest.raises(ValidationError, match="frozen"):
        convert.frac_true = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, r"fraction in \(0, 1\)"),
        (1.5, r"fraction in \(0, 1\)"),
        (1, r"fraction in \(0, 1\)"),
        (-0.5, r"fraction in \(0, 1\)"),
        ("abc", "valid number"),
    ],
)
def test_frac_true_range(files: dict[str, Path], value: object, message: str) -> None:
    options = {**minimal_options(files)[cfg.ConvertConfig], "frac_true": value}
    with pytest.raises(ValidationError, match=message):
        cfg.ConvertConfig.model_validate(options)


@pytest.mark.parametrize("value", [-1, 0.3, 0.5, 0.99])
def test_frac_true_accepted_values(files: dict[str, Path], value: float) -> None:
    options = {**minimal_options(files)[cfg.ConvertConfig], "frac_true": value}
    assert cfg.ConvertConfig.model_validate(options).frac_true == value


@pytest.mark.parametrize(("value", "ok"), [(-1, True), (32, True), (0, False), (-2, False)])
def test_cutout_size_positive_or_minus_one(files: dict[str, Path], value: int, ok: bool) -> None:
    options = {**minimal_options(files)[cfg.ConvertConfig], "cutout_size": value}
    if ok:
        assert cfg.ConvertConfig.model_validate(options).cutout_size == value
    else:
        with pytest.raises(ValidationError, match="positive number of pixels, or -1"):
            cfg.ConvertConfig.model_validate(options)


def test_path_datacube_alias_and_cube_name(files: dict[str, Path]) -> None:
    options = minimal_options(files)[cfg.ConvertConfig]
    config = cfg.ConvertConfig.model_validate(
        {"path_datacube": options["path"], "cube": "mine.npz", "cutouts": options["cutouts"]}
    )
    assert config.output_file == files["out"] / "datacube" / "mine.npz"
    with pytest.raises(ValidationError, match="plain file name"):
        cfg.ConvertConfig.model_validate({**options, "cube": "a/b"})


def test_unknown_option_is_refused(files: dict[str, Path]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        cfg.ConvertConfig.model_validate({**minimal_options(files)[cfg.ConvertConfig], "frac_tru": 0.5})


def test_missing_input_paths_are_refused(tmp_path: Path, files: dict[str, Path]) -> None:
    with pytest.raises(OptionError, match="does not exist"):
        cfg.ConvertConfig.model_validate({"path": tmp_path, "cube": "c", "cutouts": tmp_path / "nope"}).preflight()
    with pytest.raises(OptionError, match="is not a folder"):
        cfg.ConvertConfig.model_validate({"path": tmp_path, "cube": "c", "cutouts": files["cube"]}).preflight()
    config = cfg.TrainConfig.model_validate({"cube": tmp_path / "x.npz", "model_path": tmp_path, "model_name": "m"})
    with pytest.raises(OptionError, match="does not exist"):
        config.preflight()


def test_output_folder_under_a_file_is_refused(files: dict[str, Path]) -> None:
    options = {**minimal_options(files)[cfg.ConvertConfig], "path": files["cube"] / "sub"}
    with pytest.raises(OptionError, match="is not a folder"):
        cfg.ConvertConfig.model_validate(options).preflight()


def test_unwritable_output_folder_is_refused(files: dict[str, Path]) -> None:
    # /proc refuses new files even to root, unlike a chmod-ed folder.
    options = {**minimal_options(files)[cfg.ConvertConfig], "path": Path("/proc/otrain-test")}
    with pytest.raises(OptionError, match="cannot write in '/proc'"):
        cfg.ConvertConfig.model_validate(options).preflight()


def test_writability_check_leaves_nothing_behind(tmp_path: Path, files: dict[str, Path]) -> None:
    out = tmp_path / "fresh"
    cfg.ConvertConfig.model_validate({**minimal_options(files)[cfg.ConvertConfig], "path": out}).preflight()
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube.npz", "cutouts", "model.h5"]
    assert sorted(p.name for p in (tmp_path / "cutouts").iterdir()) == ["crossmatch.dat", "infer_results.dat"]


@pytest.mark.parametrize(
    ("model", "field", "value", "message"),
    [
        (cfg.TrainConfig, "threshold", 1.5, r"probability in \[0, 1\]"),
        (cfg.TrainConfig, "frac", 0.0, r"fraction in \(0, 1\)"),
        (cfg.TrainConfig, "epochs", 0, "positive whole number"),
        (cfg.TrainConfig, "dropout", 1.0, r"dropout rate in \[0, 1\)"),
        (cfg.TrainConfig, "mixed_precision", True, "needs --normalisation robust"),
        (cfg.InferConfig, "prob_ratio", 0, "positive ratio"),
        (cfg.InferConfig, "prob_ratio", -2.0, "positive ratio"),
        (cfg.CheckInferConfig, "cnn_problim", (0.1, 1.2), r"probability in \[0, 1\]"),
        (cfg.CheckInferConfig, "fwhm_ratio_lower", 5.0, "smaller than --fwhm-ratio-upper"),
        (cfg.OptimiseDatasetSizeConfig, "n_sections", 1, "at least 2"),
        (cfg.TrainConfig, "architecture", "resnet", "Input should be 'otrain' or 'vgg'"),
        (cfg.OptimiseDatasetSizeConfig, "architecture", "VGG", "Input should be 'otrain' or 'vgg'"),
        (cfg.GradCamConfig, "n_random", 0, "positive whole number"),
        (cfg.SimulateConfig, "mef_fraction", 1.1, r"probability in \[0, 1\]"),
        (cfg.SimulateConfig, "cutout_size", 8, "at least 16 pixels"),
        (cfg.TrainConfig, "learning_rate", float("nan"), "finite number"),
        (cfg.TrainConfig, "learning_rate", float("inf"), "finite number"),
        (cfg.TrainConfig, "dropout", float("nan"), "finite number"),
        (cfg.InferConfig, "threshold", float("nan"), "finite number"),
        (cfg.InferConfig, "prob_ratio", float("inf"), "finite number"),
        (cfg.CheckInferConfig, "fwhm_ratio_upper", float("inf"), "finite number"),
        (cfg.CheckInferConfig, "maglim", (12.0, float("nan")), "finite number"),
        (cfg.PromoteConfig, "tolerance", float("nan"), "finite number"),
        (cfg.ConvertConfig, "frac_true", float("nan"), "finite number"),
    ],
)
def test_ranges(
    files: dict[str, Path], model: type[cfg.CommandConfig], field: str, value: object, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        model.model_validate({**minimal_options(files)[model], field: value})


def test_flag_spellings_follow_the_original() -> None:
    assert cfg.ConvertConfig.flag_of("frac_true") == "--frac-true"
    assert cfg.ConvertConfig.flag_of("path_datacube") == "--path"
    assert cfg.OptimiseDatasetSizeConfig.flag_of("n_sections") == "--n_sections"
    assert cfg.GradCamConfig.flag_of("cam_path") == "--cam_path"
    assert cfg.GradCamConfig.flag_of("n_random") == "--n_random"
    assert cfg.CheckInferConfig.flag_of("mag_lim") == "--maglim"


#: The commands that score with a model's ONNX twin or the Keras model (otrain-grad-cam needs Keras' gradients).
SCORING_CONFIGS = [cfg.InferConfig, cfg.InferSparkConfig, cfg.DiagnosticsConfig, cfg.PlotResultsConfig]


@pytest.mark.parametrize("model", SCORING_CONFIGS)
def test_scoring_commands_choose_their_backend(files: dict[str, Path], model: type[cfg.CommandConfig]) -> None:
    options = minimal_options(files)[model]
    assert model.model_validate(options).backend == "auto"  # type: ignore[attr-defined]
    for backend in cfg.BACKENDS:
        assert model.model_validate({**options, "backend": backend}).backend == backend  # type: ignore[attr-defined]
    *others, last = (f"'{name}'" for name in cfg.BACKENDS)
    with pytest.raises(ValidationError, match=f"Input should be {', '.join(others)} or {last}"):
        model.model_validate({**options, "backend": "tflite"})
    assert model.flag_of("backend") == "--backend"


def test_grad_cam_and_promote_have_no_backend() -> None:
    assert "backend" not in cfg.GradCamConfig.model_fields
    assert "backend" not in cfg.PromoteConfig.model_fields


def test_promote_compares_by_rank_and_at_each_models_threshold_by_default(files: dict[str, Path]) -> None:
    config = cfg.PromoteConfig.model_validate({"model_dir": files["cutouts"]})
    assert config.metric == "roc_auc"
    assert config.threshold is None  # each model's own card threshold
    assert cfg.PromoteConfig.model_validate({"model_dir": files["cutouts"], "threshold": 0.3}).threshold == 0.3
    with pytest.raises(ValidationError, match="threshold"):
        cfg.PromoteConfig.model_validate({"model_dir": files["cutouts"], "threshold": 1.5})
