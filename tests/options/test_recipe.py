"""--recipe: a named set of training options fills those not given; options given override it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import call_main
from pydantic import ValidationError

from otrain import options as cfg
from otrain.cli.app import render_help
from otrain.cli.cross_validate import main as cross_validate_main
from otrain.cli.train import main as train_main
from otrain.options.pipeline import validate_params

#: The recipe of docs/own-survey.md (and of benchmarks/bench_real.py, setting (d)), written out.
SMALL_REAL = {
    "architecture": "vgg",
    "normalisation": "asinh",
    "augment": True,
    "class_weight": "none",
    "epochs": 40,
    "patience": 0,
    "lr_schedule": "cosine",
    "calibration": "temperature",
}
TRAINING_COMMANDS = [cfg.TrainConfig, cfg.CrossValidateConfig, cfg.OptimiseDatasetSizeConfig]


def required(model: type[cfg.CommandConfig], tmp_path: Path) -> dict[str, object]:
    paths = {"cube": tmp_path / "cube.npz", "model_path": tmp_path, "model_name": "m"}
    paths |= {"output": tmp_path, "outdir": tmp_path}
    return {name: paths[name] for name, field in model.model_fields.items() if field.is_required()}


@pytest.mark.parametrize("model", TRAINING_COMMANDS)
def test_small_real_fills_the_options_not_given(model: type[cfg.TrainingOptions], tmp_path: Path) -> None:
    config = model.model_validate({**required(model, tmp_path), "recipe": "small-real"})
    assert {name: getattr(config, name) for name in SMALL_REAL} == SMALL_REAL
    assert cfg.RECIPES["small-real"] == SMALL_REAL
    assert config.recipe_record() == {"name": "small-real", "values": SMALL_REAL, "overridden": {}}
    # The options the recipe does not name keep their defaults.
    default = model.model_validate(required(model, tmp_path))
    others = set(model.model_fields) - set(SMALL_REAL) - {"recipe"}
    assert {name: getattr(config, name) for name in others} == {name: getattr(default, name) for name in others}


@pytest.mark.parametrize("model", TRAINING_COMMANDS)
def test_options_given_override_the_recipe(model: type[cfg.TrainingOptions], tmp_path: Path) -> None:
    given = {"epochs": 5, "augment": False, "architecture": "otrain", "normalisation": "robust"}
    config = model.model_validate({**required(model, tmp_path), "recipe": "small-real", **given})
    assert {name: getattr(config, name) for name in given} == given
    assert (config.patience, config.lr_schedule) == (0, "cosine")  # not given: the recipe's
    assert config.recipe_record()["overridden"] == given


def test_the_command_line_overrides_the_recipe(tmp_path: Path) -> None:
    from otrain.cli.app import parse_options

    argv = ["--cube", "c.npz", "--model-path", "m", "--model-name", "n", "--recipe", "small-real"]
    options = parse_options(cfg.TrainConfig, [*argv, "--no-augment", "--epochs", "3"])
    config = cfg.TrainConfig.model_validate(options)
    assert (config.augment, config.epochs, config.architecture, config.patience) == (False, 3, "vgg", 0)


@pytest.mark.parametrize("model", TRAINING_COMMANDS)
def test_the_default_is_the_original(model: type[cfg.TrainingOptions], tmp_path: Path) -> None:
    default = model.model_validate(required(model, tmp_path))
    original = model.model_validate({**required(model, tmp_path), "recipe": "original"})
    assert default.recipe == "original"
    assert default.model_dump() == original.model_dump()
    assert (default.architecture, default.normalisation, default.augment) == ("otrain", "none", False)
    assert (default.patience, default.lr_schedule, default.monitor) == (5, "constant", "val_loss")
    assert default.epochs == 10
    assert default.recipe_record() == {"name": "original", "values": {}, "overridden": {}}


@pytest.mark.parametrize("main", [train_main, cross_validate_main])
def test_an_unknown_recipe_is_one_line_and_exit_2(
    main: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = ("--cube", tmp_path / "c.npz", "--model-path", tmp_path, "--model-name", "m")
    if main is cross_validate_main:
        options = ("--cube", tmp_path / "c.npz", "--output", tmp_path)
    assert call_main(main, *options, "--recipe", "big-real") == 2  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.endswith("error: --recipe: Input should be 'original' or 'small-real' (got 'big-real')\n")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("model", TRAINING_COMMANDS)
def test_help_lists_the_recipes_and_what_they_set(model: type[cfg.TrainingOptions]) -> None:
    text = render_help(model)
    assert "--recipe {original,small-real}  (default: original)" in text
    assert "--architecture vgg --normalisation asinh --augment --class-weight none --epochs 40 --patience 0" in text


def test_docs_give_the_recipe_as_one_option() -> None:
    root = Path(__file__).resolve().parents[2]
    assert "--recipe small-real" in (root / "README.md").read_text()
    own_survey = (root / "docs" / "own-survey.md").read_text()
    assert "--recipe small-real" in own_survey
    assert "--recipe" in (root / "docs" / "training.md").read_text()


def test_params_yaml_takes_a_recipe() -> None:
    validated = validate_params({"train": {"model_name": "m", "recipe": "small-real", "epochs": 3}})
    assert validated["train"]["recipe"] == "small-real"
    with pytest.raises(ValueError, match=r"train\.recipe"):
        validate_params({"train": {"model_name": "m", "recipe": "tiny"}})


def test_the_rules_see_the_recipes_values(tmp_path: Path) -> None:
    # Mixed precision needs scaled inputs: the recipe's asinh counts, as if it had been given.
    options = {**required(cfg.TrainConfig, tmp_path), "mixed_precision": True}
    with pytest.raises(ValidationError, match="--mixed-precision: needs --normalisation robust or asinh"):
        cfg.TrainConfig.model_validate(options)
    assert cfg.TrainConfig.model_validate({**options, "recipe": "small-real"}).normalisation == "asinh"
