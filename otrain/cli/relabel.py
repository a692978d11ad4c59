"""otrain-relabel: the marks exported from a vetting page to a labelled tree for otrain-convert."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.options import RELABEL_FOLDERS, RelabelConfig

__all__ = ["main"]


def _relabel(config: RelabelConfig) -> None:
    from otrain.vet.relabel import relabel

    report = relabel(config)
    included = "".join(
        f", + {counts[RELABEL_FOLDERS['real']]} true, {counts[RELABEL_FOLDERS['bogus']]} false from {folder}"
        for folder, counts in report.included.items()
    )
    print(
        f"{report.n_real} real -> {config.out / RELABEL_FOLDERS['real']}, "
        f"{report.n_bogus} bogus -> {config.out / RELABEL_FOLDERS['bogus']}, "
        f"{report.n_skipped} skipped{included} (mode {config.mode})"
    )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-relabel."""
    run_command(RelabelConfig, _relabel, argv)


if __name__ == "__main__":
    main()
