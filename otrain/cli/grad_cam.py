"""otrain-grad-cam: Grad-CAM maps of a model's decisions on a labelled cube."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.cli.tf_setup import prepare_tensorflow
from otrain.options import CENTRE_RADIUS_FWHM, GradCamConfig

__all__ = ["main"]


def _grad_cam(config: GradCamConfig) -> None:
    prepare_tensorflow()
    from otrain.judge.gradcam import run_grad_cam

    report = run_grad_cam(config)
    counts = ", ".join(f"{count} {outcome}" for outcome, count in report.counts.items())
    print(f"Grad-CAM ({config.method}) maps: {counts}")
    if report.tp_centre_share == report.tp_centre_share:  # not NaN: there were true positives
        print(
            f"true positives: {report.tp_centre_share:.0%} of the maps within {CENTRE_RADIUS_FWHM:g} FWHM of the "
            f"centre, on {report.tp_centre_area:.0%} of the pixels"
        )
    print(f"written: {config.cam_path}/{{TP,TN,FP,FN}}/cutout_CAM_<i>.png and <outcome>_summary.png")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-grad-cam."""
    run_command(GradCamConfig, _grad_cam, argv)
