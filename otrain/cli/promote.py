"""otrain-promote: register a model and move the champion alias through a promotion gate."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.cli.tf_setup import prepare_tensorflow
from otrain.options import PromoteConfig

__all__ = ["main"]


def _promote(config: PromoteConfig) -> None:
    prepare_tensorflow()
    from otrain.judge.gate import PromotionGate
    from otrain.track.registry import promote

    decision = promote(config, functools.partial(PromotionGate, config))
    at = "" if decision.new_threshold is None else f" at threshold {decision.new_threshold:.4g}"
    print(
        f"registered {decision.registered_name} version {decision.version} "
        f"({decision.metric} {decision.new_value:.4f}{at})"
    )
    verdict = f"promoted to '{config.alias}'" if decision.promoted else "not promoted"
    print(f"{verdict}: {decision.reason}")
    if decision.note is not None and decision.champion_value is None:  # otherwise the reason says it
        print(f"note: {decision.note}")
    if config.report is not None:
        print(f"written: {config.report}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-promote."""
    run_command(PromoteConfig, _promote, argv)
