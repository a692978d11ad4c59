"""otrain-report: a vetting page for a scored night, to look at the candidates and judge them.

The page is one HTML file with its script, styles and data inline, and its thumbnails in PNG
sprite sheets beside it (``thumbs/sheet_NNNN.png``, :data:`SHEET_ROWS` candidates each, one
grey column per plane: science, reference, difference; ``thumbs/cam_NNNN.png``, the Grad-CAM
overlays in colour). It opens from disk with
no network access. The browser draws only the rows in view and loads a sheet only when one of
its rows is drawn. The sheets hold the candidates in the page's first order, P(real) highest
first, so the rows in view share one or two sheets and a night of 10,000 candidates opens
about as fast as one of 40.

A night scored by an ensemble has a ``spread`` column (the standard deviation of its members'
P(real)): the page shows it and sorts by it, "uncertain first" putting the candidates a scanner
should label next at the top.

Worker processes read the cutouts and render the plane thumbnails; this process computes the
Grad-CAM maps on the model's input, as otrain-infer read it, and writes the sheets.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from otrain.errors import DataError, first_line
from otrain.io.alerts import Alert
from otrain.io.atomic import atomic_folder
from otrain.io.card import read_card
from otrain.io.cutouts import list_cutouts
from otrain.io.ids import candidate_key
from otrain.io.layout import RUN_FILE
from otrain.io.markers import write_marker
from otrain.options import ReportConfig
from otrain.score.inference import printable_path
from otrain.vet.packets import index_packets
from otrain.vet.thumbs import CAM_SLOT, PLANE_SLOTS, TILE, overlay, render_chunk, tile, write_sheet

__all__ = ["PAGE", "SHEET_ROWS", "THUMBS", "ReportSummary", "write_report"]

logger = logging.getLogger("otrain")

#: The page, and the folder of its sprite sheets, inside --output.
PAGE = "index.html"
THUMBS = "thumbs"
#: Candidates per sprite sheet.
SHEET_ROWS = 100
_GRADCAM_BATCH = 128
_TABLE_COLUMNS = ("filename", "RA", "Dec", "mag", "magerr", "FWHM", "cand_ID", "label1")
#: A P(real) of the model that differs from the table's by more is another model's (or a re-weighted one).
_AGREEMENT = 1e-4


@dataclass
class ReportSummary:
    """What one page holds."""

    output: Path
    n_scored: int
    n_skipped: int
    n_above: int
    threshold: float
    grad_cam: bool
    seconds: float


def _locate(names: Sequence[str], cutouts: Path) -> tuple[list[str], dict[str, Path | Alert], int]:
    """Find each table file name in ``cutouts``: the path relative to it, as the page names it.

    otrain-infer writes the names as it was given them (relative to where it ran, or absolute),
    with bytes that are not UTF-8 escaped; a name is matched on its longest trailing part that
    is a cutout of the folder, or an alert packet under ``cutouts`` (:mod:`otrain.vet.packets`).
    (The candidate ids in the files' headers are then compared with the table's, which catches
    a folder of another night with the same file names.)

    Returns
    -------
    list of str
        Each row's file, relative to ``cutouts`` (as :func:`otrain.score.inference.printable_path` spells it).
    dict
        Those names -> the files, or the packets.
    int
        The cutouts and packets of the folder (its sub-folders too when the table names files in them).

    Raises
    ------
    DataError
        When names are not found in the folder, naming the first.
    """
    every = list_cutouts(cutouts, recursive=True) if cutouts.is_dir() else []
    known: dict[str, Path | Alert] = {printable_path(path.relative_to(cutouts)): path for path in every}
    packets = index_packets(cutouts, names)
    known.update(packets.alerts)
    base = cutouts.resolve()
    found: list[str] = []
    missing: list[str] = []
    for name in names:
        path = Path(name)
        if path.is_absolute():
            resolved = path.resolve()
            inside = printable_path(resolved.relative_to(base)) if base in resolved.parents else None
            if inside in known:
                found.append(inside)
                continue
        parts = PurePosixPath(path.as_posix()).parts
        match = next(
            (
                "/".join(parts[start:])
                for start in range(len(parts))
                if parts[start] != "/" and "/".join(parts[start:]) in known
            ),
            None,
        )
        if match is None:
            missing.append(name)
        else:
            found.append(match)
    if missing:
        raise DataError(
            f"{cutouts}: {len(missing)} scored file(s) of the table are not in this folder, the first: {missing[0]}"
        )
    nested = any("/" in name for name in found if isinstance(known[name], Path))
    n_files = len(every) if nested else sum(1 for path in every if path.parent == cutouts)
    nested = nested or any(name in packets.nested for name in found)
    return found, known, n_files + (packets.n_all if nested else packets.n_top)


def _read_spread(path: Path, table: Any, names: Sequence[str]) -> np.ndarray | None:
    """Return an ensemble's ``spread`` column of the table; None for a single model's table (no such column).

    Raises
    ------
    DataError
        When a row's spread is missing, not a number or negative; the message names the row.
    """
    if "spread" not in table.colnames:
        return None
    spread = np.array([_finite_or_none(value) for value in table["spread"]], dtype=float)
    outside = ~(np.isfinite(spread) & (spread >= 0))
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"{path}: row {bad + 1} ({names[bad]}) has no spread of at least 0 (spread: {table['spread'][bad]})"
        )
    return spread


def _finite_or_none(value: Any) -> float | None:
    """Return a card or table value as a finite float; None for a missing, non-numeric, NaN or infinite one."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _registry_version(model: Path) -> dict[str, Any]:
    """Return what the registry knows of the model's training run: name, version, aliases, or a status.

    Only asks a store that exists (MLflow would create a missing SQLite file) and a server that
    answers within seconds (MLflow's client retries for minutes).
    """
    from otrain.track.tracking import check_tracking_uri, read_run_file, resolve_tracking_uri, sqlite_file

    try:
        run = read_run_file(model.parent)
    except DataError as error:
        return {"status": f"unknown ({error})"}
    if run is None:
        return {"status": f"unknown (no {RUN_FILE} beside the model)"}
    uri = resolve_tracking_uri(run.tracking_uri)
    database = sqlite_file(uri)
    if database is not None and not database.is_file():
        return {"run_id": run.run_id, "status": f"unknown (no tracking store {database})"}
    try:
        from mlflow import MlflowClient

        if database is None:
            check_tracking_uri(uri, timeout=5)
        client = MlflowClient(tracking_uri=uri)
        versions = client.search_model_versions(f"run_id = '{run.run_id}'")
        if not versions:
            return {"run_id": run.run_id, "status": "not registered"}
        # A run may be registered under several names: the page names its newest registration.
        latest = max(versions, key=lambda version: (version.creation_timestamp or 0, int(version.version)))
        # A search does not fill in the aliases.
        aliases = client.get_model_version(latest.name, latest.version).aliases
    except Exception as error:  # the page is still useful without the registry
        logger.info("registry version of %s unknown (%s)", model, first_line(error))
        return {"run_id": run.run_id, "status": "unknown (the tracking store did not answer)"}
    return {"run_id": run.run_id, "name": latest.name, "version": str(latest.version), "aliases": sorted(aliases)}


def _finite(value: Any) -> Any:
    """Replace non-finite numbers (a hand-edited card's NaN) by None, in nested lists and dicts."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _threshold_rule(card: dict[str, Any], threshold: float) -> str:
    recorded = _finite_or_none(card.get("threshold"))
    if recorded is None:
        given = "0.5, the default" if threshold == 0.5 else "given with --threshold"
        return f"{given} (the model has no card)" if not card else f"{given} (the card records none)"
    if not math.isclose(recorded, threshold):
        return f"given with --threshold (the card's is {float(recorded):g})"
    rule = card.get("threshold_rule")
    rule = rule if isinstance(rule, dict) else {"method": str(rule)} if rule else {}
    method = rule.get("method", "default")
    if method == "default":
        return "the default, 0.5"
    details = ", ".join(f"{key} {value}" for key, value in rule.items() if key != "method" and value is not None)
    return f"{method}" + (f" ({details})" if details else "") + " on the validation set"


def _model_header(config: ReportConfig, card: dict[str, Any], registry: dict[str, Any]) -> dict[str, Any]:
    metrics = card.get("test_metrics") if isinstance(card.get("test_metrics"), dict) else {}
    calibration = card.get("calibration") if isinstance(card.get("calibration"), dict) else {}
    ece = _finite_or_none(metrics.get("expected_calibration_error", calibration.get("ece_test_after")))
    shape = card.get("input_shape")
    header = {
        "file": str(config.model),
        "name": config.model.stem,
        "registry": registry,
        "planes": card.get("planes"),
        "architecture": card.get("architecture"),
        "input_shape": shape,
        "calibration": calibration.get("method"),
        "threshold": config.threshold,
        "threshold_rule": _threshold_rule(card, config.threshold),
        "test": {key: _finite_or_none(metrics.get(key)) for key in ("n", "accuracy", "roc_auc", "mcc", "fpr", "fnr")}
        if metrics
        else None,
        "ece": ece,
    }
    return _finite(header)


#: Characters of the JSON that the HTML parser could read inside <script> ("</script>", "<!--"), as escapes.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _page_html(data: dict[str, Any]) -> str:
    template = resources.files("otrain.vet").joinpath("templates", "vetting.html").read_text(encoding="utf-8")
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).translate(_SCRIPT_SAFE)
    values = {"__OTRAIN_TITLE__": html.escape(f"otrain vetting: {data['night']['table']}"), "__OTRAIN_DATA__": payload}
    # One pass: a placeholder's text inside a value (a file named __OTRAIN_DATA__) stays as it is.
    return re.sub("|".join(values), lambda match: values[match.group(0)], template)


def write_report(config: ReportConfig) -> ReportSummary:
    """Write the vetting page of a scored night.

    Parameters
    ----------
    config : ReportConfig
        Validated options of otrain-report.

    Returns
    -------
    ReportSummary
        Where the page is and what it holds.

    Raises
    ------
    DataError
        When the table, the model or a scored file cannot be read, or the table has no row;
        nothing is written then.
    """
    from otrain.io.parallel import map_chunks
    from otrain.judge.checkinfer import read_table
    from otrain.score.scoring import predict

    started = time.perf_counter()
    table = read_table(config.infer_file, _TABLE_COLUMNS, text_columns=("cand_ID",))
    if len(table) == 0:
        raise DataError(f"{config.infer_file}: the table has no scored candidate")
    names = [str(name) for name in table["filename"]]
    p_real = np.array([_finite_or_none(value) for value in table["label1"]], dtype=float)
    outside = ~(np.isfinite(p_real) & (p_real >= 0) & (p_real <= 1))
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"{config.infer_file}: row {bad + 1} ({names[bad]}) has no P(real) in [0, 1] "
            f"(label1: {table['label1'][bad]})"
        )
    spread = _read_spread(config.infer_file, table, names)
    files, known, n_files = _locate(names, config.cutouts)
    card = read_card(config.model)
    shape, planes, model = None, None, None
    if config.grad_cam:
        from otrain.io.card import card_planes
        from otrain.judge.gradcam import GradCamExplainer
        from otrain.nets.model import input_shape_of, load_model
        from otrain.score.inference import resolve_planes

        model = load_model(config.model)
        shape = input_shape_of(model)
        planes = resolve_planes(None, card_planes(config.model))
        explainer = GradCamExplainer(model, config.method)
        model_planes = planes or ("DIFF",)
        diff_channel = model_planes.index("DIFF") if "DIFF" in model_planes else 0
    registry = _registry_version(config.model) if config.tracking else {"status": "not looked up (--no-tracking)"}
    # In table order, the rows in view would come from as many sheets (each decoded whole) as rows.
    order = np.argsort(-p_real, kind="stable")
    jobs = [(known[files[source]], shape, planes) for source in order]
    rows: list[list[Any]] = []
    n_differ, largest = 0, 0.0
    with atomic_folder(config.output) as folder:
        (folder / THUMBS).mkdir()
        index = 0
        for chunk, results in map_chunks(
            render_chunk,
            jobs,
            workers=config.workers,
            description="rendering thumbnails",
            preload=["otrain.vet.thumbs"],
            chunk_size=SHEET_ROWS,
        ):
            problems = [result for result in results if isinstance(result, str)]
            if problems:
                raise DataError(problems[0])
            # Grey planes and colour overlays in two sheets: a grey PNG is about a third of an RGB one.
            tiles = np.zeros((len(chunk), len(PLANE_SLOTS), TILE, TILE), dtype=np.uint8)
            overlays = np.zeros((len(chunk), 1, TILE, TILE, 3), dtype=np.uint8)
            present = np.zeros(len(chunk), dtype=int)
            for position, (planes_tiles, mask, _, candid) in enumerate(results):
                tiles[position] = planes_tiles
                present[position] = mask
                source = int(order[index + position])
                expected = candidate_key(table["cand_ID"][source])
                if candid and expected and candid != expected:
                    where = known[files[source]]
                    raise DataError(
                        f"{where.name if isinstance(where, Alert) else where}: its header names candidate {candid}, "
                        f"the table's row {source + 1} "
                        f"{expected}: is {config.cutouts} the folder that was scored?"
                    )
            if model is not None:
                pixels = np.stack([model_input for _, _, model_input, _ in results])
                chosen = p_real[order[index : index + len(chunk)]] > config.threshold
                # The overlays explain this model's decision: say so when it did not score the table.
                difference = np.abs(predict(model, pixels) - p_real[order[index : index + len(chunk)]])
                n_differ += int(np.count_nonzero(difference > _AGREEMENT))
                largest = max(largest, float(difference.max()))
                for start in range(0, len(chunk), _GRADCAM_BATCH):
                    batch = slice(start, start + _GRADCAM_BATCH)
                    cams = np.nan_to_num(explainer.maps(pixels[batch], chosen[batch].astype(int)))
                    for position, cam in enumerate(cams, start=start):
                        overlays[position, 0] = tile(overlay(pixels[position], cam, diff_channel))
                    present[batch] |= 1 << CAM_SLOT
            sheet_number = index // SHEET_ROWS
            write_sheet(folder / THUMBS / f"sheet_{sheet_number:04d}.png", tiles)
            if model is not None:
                write_sheet(folder / THUMBS / f"cam_{sheet_number:04d}.png", overlays)
            for position in range(len(chunk)):
                source = int(order[index + position])
                row = table[source]
                rows.append(
                    [
                        index + position,
                        float(p_real[source]),
                        _finite_or_none(row["mag"]),
                        _finite_or_none(row["magerr"]),
                        _finite_or_none(row["FWHM"]),
                        _finite_or_none(row["RA"]),
                        _finite_or_none(row["Dec"]),
                        files[source],
                        candidate_key(row["cand_ID"]),
                        int(present[position]),
                        None if spread is None else float(spread[source]),
                    ]
                )
            index += len(chunk)
        n_above = int(np.count_nonzero(p_real > config.threshold))
        # Marks are kept per page: the same night scored by the same model shares them across rewrites.
        identity = hashlib.sha256(config.infer_file.read_bytes() + str(config.model.resolve()).encode()).hexdigest()
        night = {
            "table": str(config.infer_file),
            "cutouts": str(config.cutouts),
            "files": n_files,
            "scored": len(rows),
            "skipped": max(n_files - len(set(files)), 0),
            "above": n_above,
        }
        data = {
            "page_id": identity[:16],
            "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "model": _model_header(config, card, registry),
            "night": night,
            "columns": [
                *("sheet_index", "p_real", "mag", "magerr", "fwhm", "ra", "dec", "file", "cand_id", "planes"),
                "spread",
            ],
            "rows": sorted(rows, key=lambda row: -row[1]),
            "sheet_rows": SHEET_ROWS,
            "tile": TILE,
            "slots": [*PLANE_SLOTS, "GRADCAM"],
            "grad_cam": model is not None,
            "method": config.method if model is not None else None,
            "agreement": {"differ": n_differ, "largest": largest} if model is not None else None,
            # An ensemble's table: the page shows the spread and sorts "uncertain first".
            "spread": spread is not None,
        }
        (folder / PAGE).write_text(_page_html(data), encoding="utf-8")
        marker = {
            "page": PAGE,
            "night": night,
            "model": str(config.model),
            "threshold": config.threshold,
            "files": sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()),
        }
        write_marker(folder, "otrain-report", marker)
    if n_differ:
        logger.warning(
            "%s gives another P(real) than %s for %d of %d candidates (by up to %.3g): was the night scored by "
            "another model, or with --prob-ratio? The Grad-CAM overlays explain this model's decisions",
            config.model,
            config.infer_file,
            n_differ,
            len(rows),
            largest,
        )
    summary = ReportSummary(
        output=config.output,
        n_scored=len(rows),
        n_skipped=night["skipped"],
        n_above=n_above,
        threshold=config.threshold,
        grad_cam=model is not None,
        seconds=time.perf_counter() - started,
    )
    if config.tracking:
        from otrain.track.tracking import log_into_training_run

        log_into_training_run(
            config.model.parent,
            metrics={"scored": summary.n_scored, "above": summary.n_above},
            artifacts=[config.output],
            artifact_path="report",
            prefix="report_",
        )
    return summary
