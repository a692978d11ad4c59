"""otrain-serve: serve the registered champion (or another MLflow model) over HTTP."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from otrain.cli.app import run_command
from otrain.options import ServeConfig

__all__ = ["main"]

logger = logging.getLogger("otrain")


def _serve(config: ServeConfig) -> None:
    from otrain.score.serving import check_port_free, describe_model, request_body, server_command
    from otrain.track.tracking import resolve_tracking_uri

    if config.print_request is None:
        check_port_free(config.host, config.port)
    tracking_uri = resolve_tracking_uri()
    model = describe_model(config.model, tracking_uri)
    if config.print_request is not None:
        body = json.dumps(request_body(config.print_request, model.input_shape, model.planes))
        sys.stdout.write(body + "\n")  # built whole first: a bad file leaves no partial output
        return
    served = model.uri if model.uri == model.requested else f"{model.requested} ({model.uri})"
    logger.info(
        'serving %s on http://%s:%d/invocations: POST {"inputs": (N, %d, %d, %d) pixels}, '
        'answer {"predictions": [[%s], ...]}; GET /ping is 200 once the model is loaded',
        served,
        config.host,
        config.port,
        *model.input_shape,
        ", ".join(model.answer),
    )
    command = server_command(model.uri, config.host, config.port, config.workers)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    # MLflow starts its server as `uvicorn` from PATH: this environment's scripts go first, so
    # that a venv's otrain-serve works without the venv being activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    # The server replaces this process: signals (Ctrl-C, a container's SIGTERM) reach it directly.
    os.execve(command[0], command, {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path})


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run otrain-serve."""
    run_command(ServeConfig, _serve, argv)


if __name__ == "__main__":
    main()
