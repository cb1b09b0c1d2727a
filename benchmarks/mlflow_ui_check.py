"""Does the MLflow UI show what a sweep recorded? Headless Chromium over a real `mlflow server`.

Reads the store with `MlflowClient` first (what must be on screen), then starts `mlflow server` on
127.0.0.1 over the same store and opens, in headless Chromium driven by Playwright:

1. the experiment's runs table sorted by the sweep metric: every trial run's name is listed;
2. the comparison page of the trial runs: every trial's name and its metric value;
3. a trial's `eval_generations.json` (the `log_table` artifact) in the artifact view: every column of the
   logged table is a header and the first policy answer is in a cell;
4. the registered model's page and its latest version's page: the version and its source run.

A screenshot of each page goes to `--shots` (PNG). Exit status 0 when all hold, 1 (with what was missing)
otherwise, 2 when no browser can run.

    .venv/bin/python -m benchmarks.mlflow_ui_check --store sqlite:///mlflow.db --experiment prefsweep --model demo

Needs Debian's Chromium (`apt-get install chromium`; Playwright's own browser download is not used, the
machine may be offline) and `pip install playwright`. `PREFSWEEP_CHROMIUM` names another executable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from rayjobs.tracking.store import experiment_name
from rayjobs.tracking.tags import TAG_KIND
from rayjobs.tracking.trial_outputs import GENERATION_TABLE

REPO = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PAGE_TIMEOUT_MS = 90_000  # first paint on a busy 2-core machine; a quiet one needs a few seconds
SHOWN_TIMEOUT_MS = 10_000  # for more of a page already painted


def chromium_path() -> str | None:
    """The Chromium executable to drive, or None when there is none (or Playwright is not installed)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None
    named = os.environ.get("PREFSWEEP_CHROMIUM")
    return named if named and Path(named).is_file() else next(filter(None, map(shutil.which, BROWSERS)), None)


@dataclass
class Expected:
    """What the UI must show, read from the store."""

    experiment_id: str
    metric: str
    trials: dict[str, tuple[str, float]]
    """run id -> (run name, last value of `metric`)."""
    table_run: str
    columns: list[str]
    first_policy: str
    model: str
    version: str
    version_run_name: str
    problems: list[str] = field(default_factory=list)


def expected_from_store(uri: str, experiment: str, model: str, metric: str) -> Expected:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no experiment {experiment!r} in {uri}")
    runs = client.search_runs([found.experiment_id], max_results=1000)
    trials = {r.info.run_id: (r.info.run_name, r.data.metrics[metric]) for r in runs
              if r.data.tags.get(TAG_KIND) in ("trial", "run") and metric in r.data.metrics}
    if not trials:
        raise LookupError(f"experiment {experiment!r}: no trial run has metric {metric!r}")
    with_table = [r for r in runs if r.info.run_id in trials and GENERATION_TABLE in r.data.tags.get("mlflow.loggedArtifacts", "")]
    if not with_table:
        raise LookupError(f"experiment {experiment!r}: no trial logged {GENERATION_TABLE} (eval_generate: N)")
    table_run = with_table[0].info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        logged = json.loads(Path(client.download_artifacts(table_run, GENERATION_TABLE, tmp)).read_text())
    versions = client.search_model_versions(f"name = '{model}'")
    if not versions:
        raise LookupError(f"no registered model {model!r} in {uri} (register_best: true)")
    latest = max(versions, key=lambda v: int(v.version))
    return Expected(
        experiment_id=found.experiment_id, metric=metric, trials=trials, table_run=table_run,
        columns=logged["columns"], first_policy=logged["data"][0][logged["columns"].index("policy")],
        model=model, version=str(latest.version), version_run_name=client.get_run(latest.run_id).info.run_name,
    )


def _shown(page, text: str, *, exact: bool = True, timeout_ms: int = SHOWN_TIMEOUT_MS) -> bool:
    """Whether `text` becomes visible on the page (waiting for the app to render it)."""
    try:
        page.get_by_text(text, exact=exact).first.wait_for(state="visible", timeout=timeout_ms)
        return True
    except Exception:  # noqa: BLE001 - Playwright's TimeoutError: reported as a problem, not raised
        return False


def _open(page, url: str, ready: str) -> bool:
    page.goto(url)
    ok = _shown(page, ready, timeout_ms=PAGE_TIMEOUT_MS)
    close = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():  # the assistant side panel covers half the screenshot
        close.first.click()
    return ok


def metric_text(value: float) -> str:
    """A metric as the MLflow UI prints it (its `Utils.formatMetric`): 0; 3 significant digits in
    exponent form below 1e-3; else rounded half up to 3 decimals below 10, 2 below 100, 1 above;
    JavaScript's shortest number text (no trailing zeros, "-40" not "-40.0", "1.5e-4" not "1.5e-04")."""
    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent):+d}"
    decimals = 3 if abs(value) < 10 else 2 if abs(value) < 100 else 1
    rounded = math.floor(value * 10**decimals + 0.5) / 10**decimals
    return str(int(rounded)) if rounded == int(rounded) else repr(rounded)


def check_pages(page, url: str, want: Expected, shots: Path) -> list[str]:
    """Open the four pages; the list of what was not shown (empty: all there)."""
    problems = []
    exp = want.experiment_id
    key = urllib.parse.quote(f"metrics.`{want.metric}`")
    names = [name for name, _ in want.trials.values()]
    if not _open(page, f"{url}/#/experiments/{exp}/runs?orderByKey={key}&orderByAsc=false", names[0]):
        problems.append(f"runs table: {names[0]} not shown")
    problems += [f"runs table: trial {n} not listed" for n in names[1:] if not _shown(page, n)]
    page.screenshot(path=str(shots / "mlflow_ui_runs.png"), full_page=True)

    ids = urllib.parse.quote(json.dumps(list(want.trials)))
    if not _open(page, f"{url}/#/compare-runs?runs={ids}&experiments={urllib.parse.quote(json.dumps([exp]))}",
                 "Run details"):
        problems.append("comparison page did not render")
    if not _shown(page, want.metric):
        problems.append(f"comparison page: no row {want.metric}")
    for name, value in want.trials.values():
        if not _shown(page, name):
            problems.append(f"comparison page: trial {name} missing")
        if not _shown(page, metric_text(value)):
            problems.append(f"comparison page: {want.metric} = {metric_text(value)} of {name} missing")
    page.screenshot(path=str(shots / "mlflow_ui_compare.png"), full_page=True)

    table_url = f"{url}/#/experiments/{exp}/runs/{want.table_run}/artifacts/{GENERATION_TABLE}"
    if not _open(page, table_url, want.columns[-1]):
        problems.append(f"generation table: column {want.columns[-1]} not shown")
    problems += [f"generation table: column {c} not shown" for c in want.columns if not _shown(page, c)]
    if not _shown(page, want.first_policy.strip()[:40], exact=False):
        problems.append("generation table: the first policy answer is not in a cell")
    page.screenshot(path=str(shots / "mlflow_ui_generations.png"), full_page=True)

    if not _open(page, f"{url}/#/models/{urllib.parse.quote(want.model)}", f"Version {want.version}"):
        problems.append(f"registered model {want.model}: version {want.version} not listed")
    page.screenshot(path=str(shots / "mlflow_ui_model.png"), full_page=True)
    version_url = f"{url}/#/models/{urllib.parse.quote(want.model)}/versions/{want.version}"
    if not _open(page, version_url, want.version_run_name):
        problems.append(f"model version page: source run {want.version_run_name} not shown")
    page.screenshot(path=str(shots / "mlflow_ui_model_version.png"), full_page=True)
    return problems


def check(uri: str, experiment: str, model: str, metric: str, shots: Path, workdir: Path) -> list[str]:
    """Serve `uri`, drive Chromium over it; the problems found (empty: the UI shows everything)."""
    from playwright.sync_api import sync_playwright

    from tests.mlflow_servers import MlflowServer

    browser_path = chromium_path()
    if browser_path is None:
        raise RuntimeError("no Chromium or no Playwright: apt-get install chromium; pip install playwright")
    want = expected_from_store(uri, experiment, model, metric)
    shots.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(workdir, uri).start()
    try:
        with sync_playwright() as playwright:
            # --no-sandbox: root in a container has no user namespaces for Chromium's sandbox
            browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1300})
                return check_pages(page, server.url, want, shots)
            finally:
                browser.close()
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=f"sqlite:///{REPO / 'mlflow.db'}", help="tracking URI (make demo's store)")
    parser.add_argument("--experiment", default=experiment_name(), help="experiment name (MLFLOW_EXPERIMENT_NAME)")
    parser.add_argument("--model", default="demo", help="registered model name (the sweep's name)")
    parser.add_argument("--metric", default="eval_rewards/accuracies")
    parser.add_argument("--shots", type=Path, default=REPO / "benchmarks" / "results", help="where the PNGs go")
    args = parser.parse_args(argv)
    if chromium_path() is None:
        print("no browser: apt-get install chromium; pip install playwright", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mlflow-ui-") as tmp:
        try:
            problems = check(args.store, args.experiment, args.model, args.metric, args.shots, Path(tmp))
        except LookupError as err:  # the store lacks what the check needs
            print(err, file=sys.stderr)
            return 1
    for problem in problems:
        print("MISSING:", problem)
    print("ok: the UI shows the trials, their metric, the generation table and the registered model"
          if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
