"""How otrain does on real survey alerts: grouped cross-validation on ZTF cutouts.

Reads a folder of real alerts laid out as ``true/`` and ``false/`` STDPipe files (science
``IMAGE``, reference ``TEMPLATE``, difference ``DIFF``) plus ``truth.csv`` (one row per
``candid``: ``objectId``, ``label``, ``braai_score``, ``confident``, ``known_sso``), such as the
team's ``ztf_dev`` set. Labels there are ZTF's own CNN (braai) score at 0.5, so every figure is
agreement with ZTF's classifier, not truth; ``confident`` rows (score >= 0.9 or <= 0.1) and
known asteroids (``known_sso``: physically real point sources) give cleaner views.

Each setting runs ``otrain-cross-validate`` (the library call) with ``--folds`` folds grouped by
the ``FILE`` keyword (the ZTF objectId), so the alerts of one object never straddle folds:

a. the O'TRAIN defaults: difference only, original network, raw pixels, no class weights, no
   augmentation, 10 epochs, constant learning rate, no calibration;
b. the recipe for small, imbalanced sets on the difference only;
c. the recipe on triplets (science, reference, difference);
d. the second architecture (vgg) with the recipe, on triplets;
e. (d) started from a model pre-trained on the built-in synthetic survey (``--init-from``);
f. (e) as a cross-fitted ensemble: in each outer fold, ``otrain-train --folds 5`` (the library
   call, the outer fold as its test set) trains 5 members on the other folds' alerts, with no
   validation set, calibrated and thresholded on their own out-of-fold scores;
g. (f) with test-time augmentation (``--tta``) in every member.

From the pooled out-of-fold scores it reports ROC AUC on all rows and on confident rows; the
recall of known asteroids at the threshold where the false-positive rate on confident bogus
alerts is at most 0.10; the false-positive rate at 1 % false negatives; the expected
calibration error; the training time of the whole cross-validation; and, for the true
positives, the share of the Grad-CAM map (``gradcam`` and ``gradcam++``) within two FWHM of the
cutout centre, against the share of the area there (what a map spread evenly would give).

Run: ``.venv/bin/python benchmarks/bench_real.py --data PATH/ztf_dev [--settings a,b,c,d,e,f,g]``.
Writes ``benchmarks/results/bench_real.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OTRAIN_PROGRESS", "0")

import numpy as np
from common import BIN, RESULTS

#: The options of each setting (otrain-train's, by field name) and its planes.
ORIGINAL: dict[str, Any] = {
    "normalisation": "none",
    "class_weight": "none",
    "augment": False,
    "calibration": "none",
    "epochs": 10,
    "patience": 5,
}
#: The recipe for small, imbalanced real sets (docs/own-survey.md, "Training on your own survey").
RECIPE: dict[str, Any] = {
    "normalisation": "asinh",
    "class_weight": "none",
    "augment": True,
    "lr_schedule": "cosine",
    "calibration": "temperature",
    "epochs": 40,
    "patience": 0,
}
TRIPLET = ("IMAGE", "TEMPLATE", "DIFF")
SETTINGS: dict[str, dict[str, Any]] = {
    "a": {"title": "O'TRAIN defaults, DIFF", "planes": ("DIFF",), "options": ORIGINAL},
    "b": {"title": "recipe, DIFF", "planes": ("DIFF",), "options": RECIPE},
    "c": {"title": "recipe, triplets", "planes": TRIPLET, "options": RECIPE},
    "d": {"title": "vgg + recipe, triplets", "planes": TRIPLET, "options": {**RECIPE, "architecture": "vgg"}},
    "e": {
        "title": "(d) from synthetic pre-training",
        "planes": TRIPLET,
        "options": {**RECIPE, "architecture": "vgg"},
        "pretrain": True,
    },
    "f": {
        "title": "(e) as a cross-fitted ensemble (--folds 5)",
        "planes": TRIPLET,
        "options": {**RECIPE, "architecture": "vgg", "folds": 5},
        "pretrain": True,
        "ensemble": True,
    },
    "g": {
        "title": "(f) with test-time augmentation (--tta)",
        "planes": TRIPLET,
        "options": {**RECIPE, "architecture": "vgg", "folds": 5, "tta": True},
        "pretrain": True,
        "ensemble": True,
    },
}


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OTRAIN_PROGRESS": "0"})


def build_cube(data: Path, work: Path, planes: tuple[str, ...], size: int) -> Path:
    """Convert every labelled alert (``--frac-true -1``), grouped by objectId, once per planes and size."""
    name = f"ztf_{'_'.join(planes).lower()}_{size}"
    cube = work / "datacube" / f"{name}.npz"
    if not cube.is_file():
        command = [str(BIN / "otrain-convert"), "--path", str(work), "--cube", name, "--cutouts", str(data)]
        command += ["--frac-true", "-1", "--cutout-size", str(size), "--group-keyword", "FILE", "--planes", *planes]
        _run(command)
    return cube


def pretrained_model(work: Path, planes: tuple[str, ...], size: int, options: dict[str, Any]) -> Path:
    """Train once on the built-in synthetic survey (same planes, size, network and recipe)."""
    from otrain.options import TrainConfig
    from otrain.train.training import train

    model = work / "pretrain" / "CNN_training" / "synthetic" / "synthetic.keras"
    if model.is_file():
        return model
    survey = work / "synthetic"
    if not survey.is_dir():
        command = [str(BIN / "otrain-simulate"), "--out", str(survey), "--n-true", "1500", "--n-false", "1500"]
        command += ["--n-night", "0", "--cutout-size", "64", "--seed", "42", "--planes", *planes]
        _run(command)
    command = [str(BIN / "otrain-convert"), "--path", str(work), "--cube", "synthetic", "--cutouts", str(survey)]
    command += ["--frac-true", "0.5", "--cutout-size", str(size), "--planes", *planes]
    _run(command)
    single = {name: value for name, value in options.items() if name not in ("folds", "tta")}  # one plain model
    config = TrainConfig.model_validate(
        {
            **single,
            "epochs": min(int(options.get("epochs", 30)), 20),
            "cube": work / "datacube" / "synthetic.npz",
            "model_path": work / "pretrain",
            "model_name": "synthetic",
            "tracking": False,
            "overwrite": True,
        }
    )
    config.preflight()
    train(config)
    return model


def _truth(data: Path) -> dict[int, dict[str, Any]]:
    with open(data / "truth.csv", newline="") as stream:
        return {
            int(row["candid"]): {
                "label": int(row["label"]),
                "confident": row["confident"] == "True",
                "known_sso": row["known_sso"] == "True",
            }
            for row in csv.DictReader(stream)
        }


def score_table(oof: Path, data: Path) -> dict[str, np.ndarray]:
    """Out-of-fold P(real) joined with the truth table by candid."""
    truth = _truth(data)
    with open(oof, newline="") as stream:
        rows = list(csv.DictReader(stream))
    known = [truth[int(row["candid"])] for row in rows]
    return {
        "index": np.array([int(row["index"]) for row in rows]),
        "fold": np.array([int(row["fold"]) for row in rows]),
        "p": np.array([float(row["p_real"]) for row in rows]),
        "threshold": np.array([float(row["threshold"]) for row in rows]),
        "label": np.array([item["label"] for item in known]),
        "confident": np.array([item["confident"] for item in known]),
        "sso": np.array([item["known_sso"] for item in known]),
    }


def figures(table: dict[str, np.ndarray]) -> dict[str, float]:
    """The benchmark's figures of merit from pooled out-of-fold scores.

    The false-positive rates at 1 % false negatives are exact operating points
    (:func:`otrain.metrics.evaluation.operating_point`): ``fpr_at_fnr_1pc`` on all rows,
    ``fpr_confident_at_fnr_1pc`` on confident bogus rows at 1 % of the confident real ones missed.
    """
    from sklearn.metrics import roc_auc_score

    from otrain.metrics.evaluation import expected_calibration_error, operating_point, threshold_for_fpr

    p, label, confident, sso = table["p"], table["label"], table["confident"], table["sso"]
    confident_bogus = confident & (label == 0)
    at_fpr = threshold_for_fpr(np.zeros(confident_bogus.sum(), dtype=int), p[confident_bogus], 0.10)
    return {
        "roc_auc": float(roc_auc_score(label, p)),
        "roc_auc_confident": float(roc_auc_score(label[confident], p[confident])),
        "sso_threshold": at_fpr,
        "sso_recall": float(np.mean(p[sso] > at_fpr)) if sso.any() else math.nan,
        "n_sso": int(sso.sum()),
        "fpr_confident_bogus": float(np.mean(p[confident_bogus] > at_fpr)),
        "fpr_at_fnr_1pc": operating_point(label, p, target_fnr=0.01)["fpr"],
        "fpr_confident_at_fnr_1pc": operating_point(label[confident], p[confident], target_fnr=0.01)["fpr"],
        "ece": expected_calibration_error(label, p),
        "n": len(p),
        "n_confident": int(confident.sum()),
    }


def centre_shares(cv_folder: Path, cube_file: Path, table: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of the Grad-CAM maps of true positives within two FWHM of the centre, per method."""
    import keras

    from otrain.data.datacube import Datacube
    from otrain.judge.gradcam import GradCamExplainer, centre_share
    from otrain.nets.model import load_model

    cube = Datacube.load(cube_file)
    result: dict[str, float] = {}
    for method in ("gradcam", "gradcam++"):
        maps, fwhms = [], []
        for fold in np.unique(table["fold"]):
            rows = (table["fold"] == fold) & (table["label"] == 1) & (table["p"] > table["threshold"])
            if not rows.any():
                continue
            index = table["index"][rows]
            model = load_model(cv_folder / "CNN_training" / f"fold-{fold}" / f"fold-{fold}.keras")
            maps.append(GradCamExplainer(model, method).maps(cube.cube[index], np.ones(len(index), dtype=int)))
            fwhms.append(cube.fwhms[index])
            keras.backend.clear_session()
        share, area = centre_share(np.concatenate(maps), np.concatenate(fwhms)) if maps else (math.nan, math.nan)
        result[f"centre_share_{method}"], result["centre_area"] = share, area
    return result


def _onnx_seconds(twin: Path, pixels: np.ndarray, repeats: int) -> float:
    """Median wall time of ONNX Runtime scoring ``pixels`` (batches of the default size) with ``twin``."""
    from otrain.options import PREDICT_BATCH
    from otrain.score.backends import OnnxClassifier

    classifier = OnnxClassifier(twin)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        for start in range(0, len(pixels), PREDICT_BATCH):
            classifier.predict_on_batch(pixels[start : start + PREDICT_BATCH])
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))  # the first run warms the session up


def scoring_speed(model_file: Path, work: Path, pixels: np.ndarray, repeats: int = 10) -> dict[str, float]:
    """Cutouts per second of an ensemble's ONNX twin against one member's (its network alone, without TTA)."""
    import keras

    from otrain.io.layout import twin_path
    from otrain.nets.ensemble import ensemble_members
    from otrain.nets.model import load_model, save_model
    from otrain.nets.tta import without_tta
    from otrain.score.twin import export_onnx

    single = work / "single_member" / "single.keras"
    single.parent.mkdir(parents=True, exist_ok=True)
    member = without_tta(ensemble_members(load_model(model_file))[0])
    save_model(keras.Model(member.inputs, member.outputs), single)
    export_onnx(load_model(single), single, pixels[:256])
    ensemble_seconds = _onnx_seconds(twin_path(model_file), pixels, repeats)
    single_seconds = _onnx_seconds(twin_path(single), pixels, repeats)
    keras.backend.clear_session()
    return {
        "ensemble_cutouts_per_s": len(pixels) / ensemble_seconds,
        "single_cutouts_per_s": len(pixels) / single_seconds,
        "speed_vs_single": single_seconds / ensemble_seconds,
    }


def run_ensemble(cube_file: Path, data: Path, output: Path, options: dict[str, Any], folds: int, seed: int) -> dict:
    """Outer grouped cross-validation of ``otrain-train --folds``: per outer fold, an ensemble trained on the others.

    Returns the pooled out-of-fold table (as :func:`score_table`, with the members' ``spread``)
    and the seconds of the trainings.
    """
    import keras

    from otrain.data.datacube import Datacube
    from otrain.options import TrainConfig
    from otrain.score.backends import OnnxClassifier
    from otrain.train.ensemble import train_ensemble
    from otrain.train.folds import fold_splits, groups_of

    cube = Datacube.load(cube_file)
    groups, _ = groups_of(cube)
    truth = _truth(data)
    columns: dict[str, list] = {name: [] for name in ("index", "fold", "p", "spread", "threshold")}
    seconds = 0.0
    for fold, split in enumerate(fold_splits(cube.labels, groups, folds, 0.15, seed), start=1):
        config = TrainConfig.model_validate(
            {
                **options,
                "cube": cube_file,
                "model_path": output,
                "model_name": f"fold-{fold}",
                "seed": seed,
                "tracking": False,
                "overwrite": True,
            }
        )
        config.preflight()
        started = time.perf_counter()
        result = train_ensemble(config, cube=cube, test_rows=split.test)
        seconds += time.perf_counter() - started
        card = json.loads(Path(f"{result.model_file}.card.json").read_text())
        twin = OnnxClassifier(result.model_file.with_suffix(".onnx"))
        scored = twin.predict_on_batch(cube.cube[split.test])
        columns["index"].append(split.test)
        columns["fold"].append(np.full(len(split.test), fold))
        columns["p"].append(scored[:, 1].astype(np.float64))
        columns["spread"].append(scored[:, 2].astype(np.float64))
        columns["threshold"].append(np.full(len(split.test), card["threshold"]))
        keras.backend.clear_session()
    table = {name: np.concatenate(values) for name, values in columns.items()}
    known = [truth[int(candid)] for candid in cube.candids[table["index"]]]
    table["label"] = cube.labels[table["index"]]
    table["confident"] = np.array([item["confident"] for item in known])
    table["sso"] = np.array([item["known_sso"] for item in known])
    return {"table": table, "seconds": seconds}


def spread_figures(table: dict[str, np.ndarray]) -> dict[str, float]:
    """Do the most uncertain candidates hold the mistakes? ROC AUC of the spread as a detector of them."""
    from sklearn.metrics import roc_auc_score

    mistakes = (table["p"] > table["threshold"]) != (table["label"] == 1)
    both = 0 < mistakes.sum() < len(mistakes)
    ranked = np.argsort(-table["spread"])
    top = ranked[: max(1, len(ranked) // 10)]
    return {
        "spread_mistake_roc_auc": float(roc_auc_score(mistakes, table["spread"])) if both else math.nan,
        "mistakes": int(mistakes.sum()),
        "mistakes_in_top_decile_spread": int(mistakes[top].sum()),
        "top_decile": len(top),
        "spread_median": float(np.median(table["spread"])),
    }


def run_setting(
    key: str, data: Path, work: Path, size: int, folds: int, seed: int, epochs: int | None = None
) -> dict[str, Any]:
    """Cross-validate one setting (``epochs``, when given, replaces the setting's); return its figures."""
    from sklearn.metrics import roc_auc_score

    from otrain.options import CrossValidateConfig
    from otrain.train.crossval import cross_validate

    setting = SETTINGS[key]
    cube = build_cube(data, work, setting["planes"], size)
    options = dict(setting["options"])
    if epochs is not None:
        options["epochs"] = epochs
    pretrain_seconds = 0.0
    if setting.get("pretrain"):
        started = time.perf_counter()
        options["init_from"] = pretrained_model(work, setting["planes"], size, options)
        pretrain_seconds = time.perf_counter() - started
    output = work / f"cv_{key}"
    if setting.get("ensemble"):
        started = time.perf_counter()
        outcome = run_ensemble(cube, data, output, options, folds, seed)
        table = outcome["table"]
        folds_auc = [
            roc_auc_score(table["label"][table["fold"] == fold], table["p"][table["fold"] == fold])
            for fold in np.unique(table["fold"])
        ]
        result = {
            "setting": key,
            "title": setting["title"],
            "options": {name: str(value) for name, value in options.items()},
            "planes": list(setting["planes"]),
            "train_seconds": outcome["seconds"],
            "pretrain_seconds": pretrain_seconds,
            "fold_roc_auc_mean": float(np.mean(folds_auc)),
            "fold_roc_auc_std": float(np.std(folds_auc)),
            **figures(table),
            **spread_figures(table),
        }
        from otrain.data.datacube import Datacube

        result.update(
            scoring_speed(output / "CNN_training" / "fold-1" / "fold-1.keras", work, Datacube.load(cube).cube)
        )
        result.update(centre_shares(output, cube, table))
        result["wall_seconds"] = time.perf_counter() - started
        return result
    config = CrossValidateConfig.model_validate(
        {**options, "cube": cube, "folds": folds, "output": output, "seed": seed, "tracking": False, "overwrite": True}
    )
    config.preflight()
    started = time.perf_counter()
    report = cross_validate(config)
    seconds = time.perf_counter() - started
    table = score_table(output / "oof_scores.csv", data)
    result = {
        "setting": key,
        "title": setting["title"],
        "options": {name: str(value) for name, value in options.items()},
        "planes": list(setting["planes"]),
        "train_seconds": seconds,
        "pretrain_seconds": pretrain_seconds,
        "fold_roc_auc_mean": report.mean["roc_auc"],
        "fold_roc_auc_std": report.std["roc_auc"],
        **figures(table),
    }
    result.update(centre_shares(output, cube, table))
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    """The table of docs/own-survey.md."""
    lines = [
        "| setting | ROC AUC all (folds) | ROC AUC confident | asteroid recall at FPR<=0.10 | FPR at 1 % FNR "
        "(all / confident) | ECE | Grad-CAM TP share near centre (gradcam / ++ / area) | CV time | "
        "ONNX speed vs one model | spread ROC AUC for mistakes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        confident = row.get("fpr_confident_at_fnr_1pc", math.nan)
        speed = f"{row['speed_vs_single']:.2f}" if "speed_vs_single" in row else "1"
        spread = f"{row['spread_mistake_roc_auc']:.3f}" if "spread_mistake_roc_auc" in row else "-"
        lines.append(
            f"| ({row['setting']}) {row['title']} | {row['roc_auc']:.3f} ({row['fold_roc_auc_mean']:.3f} ± "
            f"{row['fold_roc_auc_std']:.3f}) | {row['roc_auc_confident']:.3f} | {row['sso_recall']:.3f} "
            f"(FPR {row['fpr_confident_bogus']:.2f}) | {row['fpr_at_fnr_1pc']:.3f} / {confident:.3f} | "
            f"{row['ece']:.3f} | {row['centre_share_gradcam']:.2f} / {row['centre_share_gradcam++']:.2f} / "
            f"{row['centre_area']:.2f} | {row['train_seconds'] / 60:.1f} min | {speed} | {spread} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with true/, false/ and truth.csv")
    parser.add_argument("--work", type=Path, default=RESULTS / "real-data", help="scratch folder (cubes, folds)")
    parser.add_argument("--settings", default="a,b,c,d,e,f,g", help="comma-separated settings among a-g")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cutout-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="replace every setting's epochs (a quick look)")
    arguments = parser.parse_args()
    keys = [key.strip() for key in arguments.settings.split(",") if key.strip()]
    unknown = sorted(set(keys) - set(SETTINGS))
    if unknown:
        parser.error(f"--settings: unknown {', '.join(unknown)} (choose among {', '.join(SETTINGS)})")
    arguments.work.mkdir(parents=True, exist_ok=True)
    from otrain.cli.tf_setup import prepare_tensorflow

    prepare_tensorflow()  # without TensorFlow's C++ start-up lines
    results_file = RESULTS / "bench_real.json"
    previous = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results = {row["setting"]: row for row in previous.get("results", [])}
    for key in keys:
        print(f"setting ({key}) {SETTINGS[key]['title']} ...", flush=True)
        results[key] = run_setting(
            key, arguments.data, arguments.work, arguments.cutout_size, arguments.folds, arguments.seed
        )
        print(json.dumps(results[key], indent=1), flush=True)
        ordered = [results[name] for name in sorted(results)]
        record = {
            "folds": arguments.folds,
            "cutout_size": arguments.cutout_size,
            "seed": arguments.seed,
            "results": ordered,
        }
        results_file.write_text(json.dumps(record, indent=1) + "\n")
    print(markdown([results[name] for name in sorted(results)]))


if __name__ == "__main__":
    main()
