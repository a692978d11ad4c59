"""The presets of otrain-train's ``--recipe``: named sets of training options.

A recipe fills the options a command is not given; an option given explicitly keeps its value
(:class:`otrain.options.training.TrainingOptions` applies it before validating).
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["RECIPES", "Recipe", "recipe_flags"]

#: --recipe: named sets of training options that fill the options a command is not given (an
#: option given explicitly keeps its value). 'original' fills none: the defaults are the original
#: O'TRAIN's. 'small-real' is the recipe measured on real ZTF alerts (docs/own-survey.md), the
#: settings of benchmarks/bench_real.py; the cube's planes and cutout size are otrain-convert's.
Recipe = Literal["original", "small-real"]
RECIPES: dict[str, dict[str, Any]] = {
    "original": {},
    "small-real": {
        "architecture": "vgg",
        "normalisation": "asinh",
        "augment": True,
        "class_weight": "none",
        "epochs": 40,
        "patience": 0,
        "lr_schedule": "cosine",
        "calibration": "temperature",
    },
}


def recipe_flags(values: dict[str, Any]) -> str:
    """Spell option values as a command line would (``--augment --epochs 40``).

    Parameters
    ----------
    values : dict
        Option values by field name.

    Returns
    -------
    str
        The flags, in the order given.
    """
    flags = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        flags.append(flag if value is True else f"--no-{flag[2:]}" if value is False else f"{flag} {value}")
    return " ".join(flags)
