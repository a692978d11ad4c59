"""otrain-check-params: check a pipeline's params.yaml before any stage runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.errors import OptionError, first_line
from otrain.options import PARAMS_STAMP, CheckParamsConfig, validate_params

__all__ = ["main"]


def _check_params(config: CheckParamsConfig) -> None:
    import yaml

    from otrain.io.atomic import write_text_atomic

    try:
        params = yaml.safe_load(config.params.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise OptionError(f"{config.params}: not a readable YAML file ({first_line(error)})") from None
    if not isinstance(params, dict):
        raise OptionError(f"{config.params}: must be a mapping of sections (simulate, convert, train, ...)")
    try:
        sections = validate_params(params)
    except ValueError as error:
        raise OptionError(str(error).replace("params.yaml", str(config.params), 1)) from None
    print(f"{config.params}: {len(sections)} sections, every option valid")
    if config.stamp is not None:
        write_text_atomic(config.stamp, PARAMS_STAMP)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-check-params."""
    run_command(CheckParamsConfig, _check_params, argv)
