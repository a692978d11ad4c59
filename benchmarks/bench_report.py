"""otrain-report: writing the vetting page of a 10,000-candidate night, and using it in headless Chromium.

The goal (the vetting page's issue): the page of a 10,000-candidate night opens in under 3 s in
headless Chromium, and scrolls smoothly. One run, one machine; the baseline is a 100-candidate
night made the same way.

1. The nights, cached in ``--work``: simulated night cutouts, 64x64, science, reference and
   difference planes (``otrain-simulate --n-night``, 6 % more than ``--n``, default 10,000:
   otrain-infer skips the ~3 % flagged EDGE; the night is always gmadet-style,
   ``--mef-fraction`` only concerns labelled cutouts), scored by ``otrain-infer`` with a small
   O'TRAIN CNN on the three planes (``otrain-convert`` and ``otrain-train``, 10 epochs on 2,000
   simulated labelled cutouts, half of them STDPipe-style; test ROC AUC about 0.8). The large
   night is the first ``--n`` rows of that table, the baseline the first 100, each with its
   files hard-linked into a folder of its own.
2. Writing the page: ``otrain-report --no-tracking`` with Grad-CAM (the default) and with
   ``--no-grad-cam``: wall time, candidates/s, peak memory of the process tree, page size
   (``index.html``, the sprite sheets). Ratios: the cost per candidate against the baseline's,
   and the marginal rate (the candidates beyond 100 over the time beyond the baseline's).
3. Opening the Grad-CAM page (``file://``, network off) in a fresh headless Chromium each time,
   median of ``--opens`` (default 3), both pages in turn: from navigation start until the page
   says it is ready (``document.body.dataset.ready``), the sprite sheets of the drawn rows are
   decoded (an ``Image().decode()`` of each) and the next frame has started; also Navigation
   Timing's ``domContentLoadedEventEnd`` and ``loadEventEnd``.
4. In the last large page: scrolling, each step timed from ``window.scrollTo`` to the second
   animation frame (the page draws its rows in the first, from its scroll handler): 200 steps
   of one viewport from the top, 200 steps spread over the whole page, jumps (end, top,
   middle, end), then 200 viewport steps again, each also waiting until the sprite sheets of
   the drawn rows are decoded (the time until the thumbnails can show), and the same once the
   rows are sorted by magnitude (the sheets follow P(real)). Per mode: median and
   p95 ms, steps over 50 ms, rows in the DOM, distinct sheets the drawn rows use and sheets
   fetched. Then sorting by magnitude (a click on the column's header, and again to reverse)
   and moving the threshold slider (with all rows shown, then with only those above it),
   each timed in the handler and to the second frame; the run stops if the page did not sort,
   count or filter as the table says.
5. A screenshot of the large page as it opened: ``benchmarks/results/bench_report.png``.

Run: ``.venv/bin/python benchmarks/bench_report.py [--n 10000] [--opens 3]`` (on 2 cores about
4 minutes the first time, of which 1.5 for the model and the night (simulating 10,600
candidates: 20-35 s), cached for the next runs, which take 2.5). Results:
``benchmarks/results/bench_report.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OTRAIN_PROGRESS", "0")

import numpy as np
from common import BIN, HERE, RESULTS, run_measured, simulated_survey

sys.path.insert(0, str(HERE.parent / "tests"))
from browser import chromium, requested_urls

from otrain.options import REPORT_MARKER
from otrain.vet.report import PAGE, THUMBS

PLANES = ("IMAGE", "TEMPLATE", "DIFF")
BASELINE = 100
#: otrain-infer skips the cutouts the simulated night flags EDGE (about 3 %): simulate this many more.
EDGE_MARGIN = 0.06
GOAL_OPEN_S = 3.0

# Runs before the page's own script (DevTools injects it, so the page's CSP does not apply): notes
# when the page says it is ready, then decodes every sprite sheet the drawn rows show.
OPEN_PROBE = """
(() => {
  const mark = { ready: null, decoded: null, painted: null, sheets: 0, error: null };
  window.__otrainOpen = mark;
  window.__otrainSheets = () => {
    const urls = new Set();
    document.querySelectorAll("#body .thumb").forEach((element) => {
      const found = /url\\("?([^")]*)"?\\)/.exec(element.style.backgroundImage);
      if (found) urls.add(found[1]);
    });
    return [...urls];
  };
  window.__otrainDecode = (urls) => Promise.all(urls.map((url) => {
    const image = new Image();
    image.src = url;
    return image.decode();
  }));
  new MutationObserver((records, observer) => {
    if (!document.body || document.body.dataset.ready !== "true") return;
    observer.disconnect();
    mark.ready = performance.now();
    const urls = window.__otrainSheets();
    mark.sheets = urls.length;
    window.__otrainDecode(urls).then(() => {
      mark.decoded = performance.now();
      requestAnimationFrame(() => requestAnimationFrame(() => { mark.painted = performance.now(); }));
    }).catch((error) => { mark.error = "a sprite sheet did not decode: " + error; });
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-ready"] });
})();
"""

WAIT_OPEN = """
const done = arguments[arguments.length - 1];
const poll = () => {
  const mark = window.__otrainOpen;
  if (mark && (mark.painted !== null || mark.error)) {
    const navigation = performance.getEntriesByType("navigation")[0];
    done({ ...mark, dom_content_loaded: navigation.domContentLoadedEventEnd, load: navigation.loadEventEnd,
      rows_in_dom: document.querySelectorAll("#body .row").length, title: document.title,
      js_heap_mb: performance.memory ? performance.memory.usedJSHeapSize / 1e6 : null });
  } else setTimeout(poll, 5);
};
poll();
"""

# Each step: scroll, then two animation frames; the page draws its rows in the first (its scroll
# handler asks for a frame), the second starts once that frame is rendered.
SCROLL = """
const [steps, mode] = arguments, done = arguments[arguments.length - 1];
(async () => {
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const body = document.getElementById("body");
  const bottom = document.documentElement.scrollHeight - innerHeight;
  const times = [], thumbs = [], rows = [], sheets = [];
  let uncovered = 0;
  const check = () => {
    rows.push(body.querySelectorAll(".row").length);
    sheets.push(window.__otrainSheets().length);
    // the row at the middle of the window (or the first or last row) must be in the DOM
    const count = Math.round(body.offsetHeight / 72);
    const middle = Math.floor((innerHeight / 2 - body.getBoundingClientRect().top) / 72);
    const position = Math.max(0, Math.min(count - 1, middle));
    if (!body.querySelector('.row[data-position="' + position + '"]')) uncovered += 1;
  };
  const targets = [];
  for (let i = 1; i <= steps; i++) {
    targets.push(mode === "spread" ? Math.round((bottom * i) / steps) : Math.min(bottom, i * innerHeight));
  }
  if (mode === "jumps") targets.splice(0, targets.length, bottom, 0, Math.round(bottom / 2), bottom);
  const sortBy = (key) => document.querySelector("#head > div[data-key=" + key + "]").click();
  if (mode === "by_magnitude") {
    sortBy("mag");
    await frame();
    await frame();
  }
  for (const y of targets) {
    const started = performance.now();
    window.scrollTo(0, y);
    await frame();
    await frame();
    times.push(performance.now() - started);
    check();
    if (mode === "viewport_thumbs" || mode === "by_magnitude") {
      await window.__otrainDecode(window.__otrainSheets());
      thumbs.push(performance.now() - started);
    }
  }
  if (mode === "by_magnitude") sortBy("p");
  window.scrollTo(0, 0);
  await frame();
  done({ times, thumbs, rows, sheets, uncovered, bottom });
})().catch((error) => done({ error: String(error) }));
"""

# Sorting and the slider: the synchronous handler, then the frame after it.
INTERACT = """
const [first, second] = arguments, done = arguments[arguments.length - 1];
(async () => {
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const timed = async (action) => {
    const started = performance.now();
    action();
    const handler = performance.now() - started;
    await frame();
    await frame();
    return { handler_ms: handler, frame_ms: performance.now() - started };
  };
  const magnitudes = () => [...document.querySelectorAll("#body .row")]
    .sort((a, b) => a.dataset.position - b.dataset.position)
    .map((row) => parseFloat(row.children[row.children.length - 7].textContent));
  const ordered = (values, sign) => values.every(
    (value, i) => i === 0 || isNaN(value) || isNaN(values[i - 1]) || sign * (value - values[i - 1]) >= 0);
  const header = document.querySelector("#head > div[data-key=mag]");
  const result = {};
  result.sort_mag = await timed(() => header.click());
  result.sort_mag.ordered = ordered(magnitudes(), 1);
  result.sort_mag_reverse = await timed(() => header.click());
  result.sort_mag_reverse.ordered = ordered(magnitudes(), -1);
  document.querySelector("#head > div[data-key=p]").click();
  await frame();
  const slider = document.getElementById("threshold"), show = document.getElementById("show");
  const move = (value) => () => { slider.value = value; slider.dispatchEvent(new Event("input", { bubbles: true })); };
  result.slider = await timed(move(first));
  result.slider.above = Number(document.getElementById("n-above").textContent);
  result.show_above = await timed(() => {
    show.value = "above";
    show.dispatchEvent(new Event("input", { bubbles: true }));
  });
  result.slider_filtered = await timed(move(second));
  result.slider_filtered.shown = Number(document.getElementById("n-shown").textContent);
  done(result);
})().catch((error) => done({ error: String(error) }));
"""


def _command(name: str, *args: object) -> list[str]:
    return [str(BIN / name), *map(str, args)]


def _run(name: str, *args: object) -> None:
    subprocess.run(_command(name, *args), check=True, stdout=subprocess.DEVNULL)


def trained_model(work: Path, n_train: int, epochs: int) -> Path:
    """A small O'TRAIN CNN on the three planes, trained once on simulated labelled cutouts."""
    name = f"report-{n_train}-{epochs}"
    model = work / "model" / "CNN_training" / name / f"{name}.keras"
    if model.is_file():
        return model
    survey = simulated_survey(work / "survey", n_train, seed=3, mef_fraction=0.5, planes=PLANES)
    cube = ("--path", work / "cube", "--cube", "survey", "--cutouts", survey, "--planes", *PLANES, "--overwrite")
    _run("otrain-convert", *cube)
    _run(
        "otrain-train",
        *("--cube", work / "cube" / "datacube" / "survey.npz", "--model-path", work / "model"),
        *("--model-name", name, "--epochs", epochs, "--patience", 0, "--no-tracking", "--overwrite"),
    )
    return model


def scored_night(work: Path, n: int, model: Path) -> tuple[Path, Path, dict[str, float]]:
    """Simulate the night and score it, once: its folder, otrain-infer's table, and the seconds each took."""
    folder = work / f"simulated-{n}-{model.stem}"
    night, table, made = folder / "night", folder / "scores.dat", folder / "made.json"
    if not made.exists():
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        _run(
            "otrain-simulate",
            *("--out", folder, "--n-true", 0, "--n-false", 0, "--n-night", n, "--seed", 7, "--planes", *PLANES),
        )
        seconds = {"simulate_s": round(time.perf_counter() - started, 1)}
        started = time.perf_counter()
        _run("otrain-infer", "--cutouts", night, "--model", model, "--output", table, "--no-tracking")
        seconds["infer_s"] = round(time.perf_counter() - started, 1)
        made.write_text(json.dumps(seconds) + "\n")
    return night, table, json.loads(made.read_text())


def subset_night(night: Path, table: Path, folder: Path, count: int) -> tuple[Path, Path]:
    """A night of the first ``count`` rows of ``table``: those rows, their files hard-linked into a folder."""
    lines = table.read_text(encoding="utf-8").splitlines(keepends=True)
    header = [line for line in lines if line.startswith("#")]
    rows = [line for line in lines if line.strip() and not line.startswith("#")][:count]
    if len(rows) < count:
        raise SystemExit(f"{table}: {len(rows)} scored candidates, fewer than {count}")
    shutil.rmtree(folder, ignore_errors=True)
    cutouts = folder / "night"
    cutouts.mkdir(parents=True)
    for row in rows:
        name = Path(row.split()[0]).name
        os.link(night / name, cutouts / name)
    subset = folder / "scores.dat"
    subset.write_text("".join(header + rows), encoding="utf-8")
    return cutouts, subset


def write_page(table: Path, cutouts: Path, model: Path, output: Path, grad_cam: bool) -> dict[str, Any]:
    """Run otrain-report once: time, peak memory and the size of what it wrote."""
    command = _command("otrain-report", "--infer", table, "--cutouts", cutouts, "--model", model, "--output", output)
    command.append("--no-tracking")
    if not grad_cam:
        command.append("--no-grad-cam")
    seconds, peak = run_measured(command)
    page = output / PAGE
    sheets = sorted((output / THUMBS).glob("*.png"))
    scored = json.loads((output / REPORT_MARKER).read_text())["night"]["scored"]
    figures = {
        "candidates": scored,
        "wall_s": round(seconds, 2),
        "per_s": round(scored / seconds, 1),
        "peak_mb": round(peak / 1e6),
        "index_html_mb": round(page.stat().st_size / 1e6, 3),
        "thumbs_mb": round(sum(sheet.stat().st_size for sheet in sheets) / 1e6, 2),
        "sheets": len(sheets),
    }
    print(f"otrain-report, {scored} candidates, Grad-CAM {'on' if grad_cam else 'off'}: {figures}", flush=True)
    return figures


def open_page(
    page: Path, screenshot: Path | None = None, thresholds: tuple[float, float] | None = None
) -> dict[str, Any]:
    """Open the page in a fresh headless Chromium; time it; with ``thresholds``, also scroll, sort and move the slider.

    The slider goes to the first threshold with all rows shown, then to the second with only the
    rows above the threshold shown.
    """
    with chromium() as driver:
        driver.set_script_timeout(300)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": OPEN_PROBE})
        requested_urls(driver)
        started = time.perf_counter()
        driver.get(page.resolve().as_uri())
        mark = driver.execute_async_script(WAIT_OPEN)
        wall = time.perf_counter() - started
        if mark["error"]:
            raise SystemExit(f"{page}: {mark['error']}")
        urls = requested_urls(driver)
        figures: dict[str, Any] = {
            "open_ms": round(mark["painted"]),
            "ready_ms": round(mark["ready"]),
            "decoded_ms": round(mark["decoded"]),
            "dom_content_loaded_ms": round(mark["dom_content_loaded"]),
            "load_ms": round(mark["load"]),
            "webdriver_wall_ms": round(wall * 1000),
            "sheets_decoded": mark["sheets"],
            "rows_in_dom": mark["rows_in_dom"],
            "js_heap_mb": None if mark["js_heap_mb"] is None else round(mark["js_heap_mb"], 1),
            "requests": len(urls),
            "requests_not_file": len([url for url in urls if not url.startswith("file:")]),
            "browser": driver.capabilities.get("browserVersion"),
        }
        if screenshot is not None and not driver.save_screenshot(str(screenshot)):
            raise SystemExit(f"the screenshot could not be written to {screenshot}")
        if thresholds is not None:
            figures["scroll"] = {}
            modes = (("viewport", 200), ("spread", 200), ("jumps", 4), ("viewport_thumbs", 200), ("by_magnitude", 200))
            for mode, steps in modes:
                result = driver.execute_async_script(SCROLL, steps, mode)
                sheets = [url for url in requested_urls(driver) if f"/{THUMBS}/" in url]
                result["sheet_requests"], result["sheets_distinct"] = len(sheets), len(set(sheets))
                figures["scroll"][mode] = _steps(result)
            result = driver.execute_async_script(INTERACT, *thresholds)
            if "error" in result:
                raise SystemExit(f"{page}: {result['error']}")
            figures["interactions"] = result
    return figures


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _steps(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        raise SystemExit(f"scrolling failed: {result['error']}")
    times = result["times"]
    figures = {
        "steps": len(times),
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(_p95(times), 1),
        "max_ms": round(max(times), 1),
        "over_50ms": sum(1 for value in times if value > 50),
        "rows_in_dom_max": max(result["rows"]),
        "rows_in_dom_median": statistics.median(result["rows"]),
        "sheets_in_view_median": statistics.median(result["sheets"]),
        "middle_row_missing": result["uncovered"],
        "sheet_requests": result["sheet_requests"],
        "sheets_distinct": result["sheets_distinct"],
        "page_height_px": result["bottom"],
    }
    if result["thumbs"]:
        figures["thumbnails_median_ms"] = round(statistics.median(result["thumbs"]), 1)
        figures["thumbnails_p95_ms"] = round(_p95(result["thumbs"]), 1)
    return figures


def _median_open(opens: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("open_ms", "ready_ms", "decoded_ms", "dom_content_loaded_ms", "load_ms", "webdriver_wall_ms", "js_heap_mb")
    median = {key: statistics.median(run[key] for run in opens) for key in keys if opens[0][key] is not None}
    median["each_open_ms"] = [run["open_ms"] for run in opens]
    for key in ("sheets_decoded", "rows_in_dom", "requests", "requests_not_file", "browser"):
        median[key] = opens[0][key]
    return median


def p_real_of(scores: Path) -> np.ndarray:
    """P(real) of every row of otrain-infer's table."""
    from otrain.judge.checkinfer import read_table

    return np.asarray(read_table(scores, ("label1",))["label1"], dtype=float)


def check_interactions(actions: dict[str, Any], p_real: np.ndarray, thresholds: tuple[float, float]) -> None:
    """Stop when the page did not do what was timed: sorted, counted and filtered as its table says."""
    first, second = thresholds
    expected = {f"above {first}": int((p_real > first).sum()), f"shown above {second}": int((p_real > second).sum())}
    found = {f"above {first}": actions["slider"]["above"], f"shown above {second}": actions["slider_filtered"]["shown"]}
    if found != expected or not (actions["sort_mag"]["ordered"] and actions["sort_mag_reverse"]["ordered"]):
        raise SystemExit(f"the page did not follow: counts {found}, expected {expected}; sorting {actions}")


def table(result: dict[str, Any]) -> str:
    """Return the results as the table printed at the end."""
    n, pages, opens = result["n"], result["pages"], result["open"]
    ratios = result["ratios"]
    lines = [
        f"otrain-report on a simulated night of {n} candidates (64x64, science, reference, difference), "
        f"baseline {BASELINE} ({result['machine']['processor']}, {result['machine']['cores']} cores)",
        "  writing the page          candidates/s   wall s   peak MB   index.html MB   sheets MB (n)",
    ]
    for key, label in (("large_grad_cam", f"{n}, Grad-CAM"), ("large_no_grad_cam", f"{n}, --no-grad-cam")):
        for name, text in ((f"baseline_{key.removeprefix('large_')}", f"{BASELINE}, "), (key, "")):
            page = pages[name]
            shown = text + label.split(", ")[1] if text else label
            lines.append(
                f"  {shown:24s} {page['per_s']:12.1f} {page['wall_s']:8.1f} {page['peak_mb']:9d} "
                f"{page['index_html_mb']:15.2f} {page['thumbs_mb']:9.1f} ({page['sheets']})"
            )
    lines += [
        f"  cost per candidate, {n} / {BASELINE}: Grad-CAM {ratios['per_candidate_grad_cam']:.3f}, "
        f"--no-grad-cam {ratios['per_candidate_no_grad_cam']:.3f}; beyond the first {BASELINE}: "
        f"{ratios['marginal_per_s_grad_cam']:.0f}/s and {ratios['marginal_per_s_no_grad_cam']:.0f}/s",
        f"opening the page in headless Chromium {opens['large']['browser']}, file://, network off, "
        f"median of {len(opens['large']['each_open_ms'])} fresh browsers (ms from navigation start)",
        "  page        DOMContentLoaded   load   ready   thumbnails decoded + frame   sheets   rows in DOM",
    ]
    for key, label in (("baseline", str(BASELINE)), ("large", str(n))):
        run = opens[key]
        lines.append(
            f"  {label:10s} {run['dom_content_loaded_ms']:17.0f} {run['load_ms']:6.0f} {run['ready_ms']:7.0f} "
            f"{run['open_ms']:28.0f} {run['sheets_decoded']:8d} {run['rows_in_dom']:13d}"
        )
    verdict = "met" if result["goal_open_met"] else "missed"
    lines.append(
        f"  {n} / {BASELINE}: {ratios['open_large_vs_baseline']:.2f}; goal: {n} candidates open in "
        f"< {GOAL_OPEN_S:.0f} s: {verdict} ({opens['large']['open_ms'] / 1000:.2f} s)"
    )
    lines.append("scrolling the large page, each step timed to the second animation frame after window.scrollTo")
    for mode, label in (
        ("viewport", "one viewport a step"),
        ("spread", "over the whole page"),
        ("jumps", "end, top, middle, end"),
        ("viewport_thumbs", "viewport, await thumbs"),
        ("by_magnitude", "sorted by mag, thumbs"),
    ):
        run = result["scroll"][mode]
        lines.append(
            f"  {label:22s} {run['steps']:3d} steps: median {run['median_ms']:5.1f} ms, p95 {run['p95_ms']:5.1f}, "
            f"max {run['max_ms']:5.1f}, {run['over_50ms']} over 50 ms; rows in DOM <= {run['rows_in_dom_max']}, "
            f"middle row missing {run['middle_row_missing']}; sheets: {run['sheets_in_view_median']:.0f} in view, "
            f"{run['sheets_distinct']} fetched"
        )
        if "thumbnails_median_ms" in run:
            lines.append(
                f"  {'':22s} thumbnails of the drawn rows decoded: median {run['thumbnails_median_ms']:.0f} ms, "
                f"p95 {run['thumbnails_p95_ms']:.0f} ms after window.scrollTo"
            )
    actions = result["interactions"]
    sort = actions["sort_mag"]
    lines.append(
        f"  sort by magnitude: {sort['frame_ms']:.0f} ms to the frame ({sort['handler_ms']:.0f} ms "
        f"in the handler), reversed {actions['sort_mag_reverse']['frame_ms']:.0f} ms"
    )
    first, second = result["slider_thresholds"]
    lines.append(
        f"  threshold slider to {first} ({actions['slider']['above']} above): {actions['slider']['frame_ms']:.0f} ms; "
        f"showing those above: {actions['show_above']['frame_ms']:.0f} ms; then slider to {second} "
        f"({actions['slider_filtered']['shown']} shown): {actions['slider_filtered']['frame_ms']:.0f} ms"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="candidates of the simulated night")
    parser.add_argument("--opens", type=int, default=3, help="fresh browsers per page for the open time")
    parser.add_argument("--train-n", type=int, default=2_000, help="labelled cutouts for the small model")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of the small model")
    parser.add_argument("--work", type=Path, default=RESULTS / "report-data", help="scratch and cache folder")
    arguments = parser.parse_args()
    arguments.work.mkdir(parents=True, exist_ok=True)
    work = arguments.work

    started = time.perf_counter()
    model = trained_model(work, arguments.train_n, arguments.epochs)
    simulated = math.ceil(arguments.n * (1 + EDGE_MARGIN))
    night, scores, made = scored_night(work, simulated, model)
    large_night, large_scores = subset_night(night, scores, work / f"night-{arguments.n}", arguments.n)
    small_night, small_scores = subset_night(night, scores, work / f"night-{BASELINE}", BASELINE)
    print(f"model and night ready in {time.perf_counter() - started:.0f} s", flush=True)

    pages: dict[str, dict[str, Any]] = {}
    for grad_cam in (True, False):
        suffix = "grad_cam" if grad_cam else "no_grad_cam"
        for name, (cutouts, scored) in (
            ("baseline", (small_night, small_scores)),
            ("large", (large_night, large_scores)),
        ):
            output = work / "pages" / f"{name}_{suffix}"
            pages[f"{name}_{suffix}"] = write_page(scored, cutouts, model, output, grad_cam)

    # The slider goes to the median P(real), then to its 90th percentile (the slider's step is 0.001).
    p_real = p_real_of(large_scores)
    thresholds = (round(float(np.quantile(p_real, 0.5)), 3), round(float(np.quantile(p_real, 0.9)), 3))
    opens: dict[str, list[dict[str, Any]]] = {"baseline": [], "large": []}
    RESULTS.mkdir(exist_ok=True)
    screenshot = RESULTS / "bench_report.png"
    for attempt in range(arguments.opens):
        for name in ("baseline", "large"):
            last_large = name == "large" and attempt == arguments.opens - 1
            run = open_page(
                work / "pages" / f"{name}_grad_cam" / PAGE,
                screenshot=screenshot if last_large else None,
                thresholds=thresholds if last_large else None,
            )
            print(f"open {name}: {run['open_ms']} ms", flush=True)
            opens[name].append(run)
    interactive = opens["large"][-1]
    check_interactions(interactive["interactions"], p_real, thresholds)
    medians = {name: _median_open(runs) for name, runs in opens.items()}

    def per_candidate(key: str) -> float:
        large, small = pages[f"large_{key}"], pages[f"baseline_{key}"]
        return (large["wall_s"] / large["candidates"]) / (small["wall_s"] / small["candidates"])

    def marginal(key: str) -> float:
        large, small = pages[f"large_{key}"], pages[f"baseline_{key}"]
        return (large["candidates"] - small["candidates"]) / (large["wall_s"] - small["wall_s"])

    result = {
        "n": pages["large_grad_cam"]["candidates"],
        "n_simulated": simulated,
        "night_made": made,
        "pages": pages,
        "open": medians,
        "scroll": interactive["scroll"],
        "interactions": interactive["interactions"],
        "slider_thresholds": list(thresholds),
        "ratios": {
            "per_candidate_grad_cam": round(per_candidate("grad_cam"), 3),
            "per_candidate_no_grad_cam": round(per_candidate("no_grad_cam"), 3),
            "marginal_per_s_grad_cam": round(marginal("grad_cam"), 1),
            "marginal_per_s_no_grad_cam": round(marginal("no_grad_cam"), 1),
            "open_large_vs_baseline": round(medians["large"]["open_ms"] / medians["baseline"]["open_ms"], 2),
        },
        "goal_open_s": GOAL_OPEN_S,
        "goal_open_met": medians["large"]["open_ms"] < GOAL_OPEN_S * 1000,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "chromium": medians["large"]["browser"],
        },
        "screenshot": screenshot.name,
    }
    text = table(result)
    print()
    print(text)
    (RESULTS / "bench_report.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / 'bench_report.json'}, {screenshot}")


if __name__ == "__main__":
    main()
