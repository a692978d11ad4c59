"""otrain-pack: a folder of candidate cutouts to Parquet files, for otrain-infer-spark --parquet."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.options import PackConfig

__all__ = ["main"]


def _pack(config: PackConfig) -> None:
    from otrain.score.pack import pack

    started = time.perf_counter()
    report = pack(config)
    elapsed = time.perf_counter() - started
    print(
        f"packed {report.n_files} cutouts in {elapsed:.1f} s ({report.n_files / max(elapsed, 1e-9):.0f}/s) "
        f"into {report.n_parts} part file(s); {report.n_edge} flagged EDGE, {len(report.bad_files)} unreadable"
    )
    print(f"written: {report.output}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-pack."""
    run_command(PackConfig, _pack, argv)


if __name__ == "__main__":
    main()
