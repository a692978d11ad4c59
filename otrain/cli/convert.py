"""otrain-convert: labelled cutout folders, or labelled alert packets, to one training datacube."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.options import ConvertConfig

__all__ = ["main"]


def _convert(config: ConvertConfig) -> None:
    from otrain.data.convert import convert

    started = time.perf_counter()
    report = convert(config)
    elapsed = time.perf_counter() - started
    unit = "files"
    n_files = sum(counts.n_files for counts in report.classes.values())
    if report.n_packets is not None:
        unit = "packets"
        print(
            f"read {report.n_packets} alert packets in {elapsed:.1f} s: {n_files} labelled, "
            f"{report.n_unlabelled} not in {config.labels} (left out), {report.n_bad_packets} unreadable"
        )
        print(f"  labels without a packet: {report.n_labels_without_packet}")
    else:
        print(f"read {n_files} cutout files in {elapsed:.1f} s")
    for counts in (report.classes[1], report.classes[0]):
        print(
            f"  {counts.name + ':':6} {counts.n_files} {unit}, {counts.n_kept} kept; rejected: "
            f"{counts.n_edge} EDGE, {counts.n_bad} bad, {counts.n_unselected} by balancing"
        )
    if report.n_replaced_pixels:
        print(f"  non-finite pixels replaced: {report.n_replaced_pixels} in {report.n_cutouts_with_replaced} cutouts")
    n_real, n_bogus = report.classes[1].n_kept, report.classes[0].n_kept
    height, width, channels = report.shape
    size_mb = (n_real + n_bogus) * height * width * channels * 4 / 1e6
    contents = f"{n_real} real, {n_bogus} bogus"
    print(f"datacube: {n_real + n_bogus} cutouts of {height}x{width}x{channels} ({contents}), {size_mb:.1f} MB")
    if report.n_groups is not None:
        print(f"  groups: {report.n_groups} distinct values of {report.group_keyword}")
    print(f"written: {report.output}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-convert."""
    run_command(ConvertConfig, _convert, argv)
