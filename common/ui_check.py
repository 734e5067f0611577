"""``python -m common.ui_check [--smoke] [--out DIR] [--port N]``: the MLflow UI and the comparison report, checked in
a real browser.

What ``nox -s ui-check`` runs. It starts the MLflow server over the lab's store (``MLFLOW_TRACKING_URI`` moves it)
on 127.0.0.1 and opens, in a headless Chromium (``common.browser``): ``reports/compare/report.html``
(``PAPERZOO_REPORTS`` moves it), which must have figures that all load; MLflow's run-comparison view of the FINISHED
runs of the newest complete reproduction of the experiment ``compare``, which must list each one's name and id;
and the runs table of that reproduction, which must list their names (its first page: 100 runs). A full-page
screenshot of each page goes to ``--out`` (default ``reports/compare/screenshots/``). The server is stopped (its
whole process group) however the check ends.

``--smoke`` first makes the data itself, what CI runs: ``python -m common.compare scale=smoke`` with the store, the
checkpoints and the report in a new temporary folder (nothing in the repository changes), then checks those;
the screenshots go to that folder too unless ``--out`` is given. Without Chromium, chromedriver or selenium it
prints ``ui-check skipped: ...`` and exits 0, or 1 under CI (``CI=true``); any other failure is one line and a
non-zero exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from common import browser
from common.errors import PaperzooError
from common.experiment import COMPARE
from common.paths import REPO_ROOT, env_vars, reports_dir
from common.tracking import tracking_uri

EXPERIMENT = COMPARE  # the one MLflow experiment of the comparison
USAGE = "usage: python -m common.ui_check [--smoke] [--out DIR] [--port N]"
WIDTH, HEIGHT = 1600, 1200  # the browser window
MAX_HEIGHT = 12000  # the tallest full-page screenshot
TABLE_PAGE, TABLE_ROW = 100, 40  # MLflow's runs table loads 100 runs at first; pixels per row, with a margin


@contextlib.contextmanager
def mlflow_server(port: int | None = None, timeout: float = 90.0) -> Iterator[str]:
    """The MLflow server over ``tracking_uri()`` on 127.0.0.1:``port`` (a free one by default) while the block runs;
    its base URL. Raises PaperzooError when the port is taken or the server does not answer within ``timeout`` s."""
    from common.mlflow_ui import answers, free_port, port_in_use, server_command, stop_group

    port = port or free_port()
    if port_in_use(port):
        raise PaperzooError(f"port {port} is already in use; pick another with --port N")
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(server_command(port, []), env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + timeout
            while not answers(port):
                if process.poll() is not None:
                    log.seek(0)
                    last = next((line for line in reversed(log.read().splitlines()) if line.strip()), "")
                    raise PaperzooError(f"the MLflow server over {tracking_uri()} exited with status "
                                        f"{process.returncode} before answering: {last.strip()}")  # fmt: skip
                if time.monotonic() > deadline:
                    raise PaperzooError(f"the MLflow server on {base} did not answer within {timeout:.0f} s")
                time.sleep(0.1)
            yield base
        finally:
            stop_group(process)


def newest_comparison(mlflow_client):
    """The newest complete reproduction of the experiment ``compare`` (``common.claims.Reproduction``)."""
    from common.claims import reproductions

    found = reproductions(mlflow_client, EXPERIMENT)
    complete = next((rep for rep in found if rep.complete), None)
    if complete is None:
        state = f"{len(found)} reproductions, none complete" if found else "no reproduction"
        raise PaperzooError(f"the experiment '{EXPERIMENT}' in {tracking_uri()} has {state}; "
                            "run `nox -s compare` first (or check with --smoke)")  # fmt: skip
    return complete


def wait_for_listed(driver, url: str, where: str, needles: list[str], what: str, timeout: float) -> None:
    """Open ``url`` and wait until the text of the elements ``where`` (a CSS selector) shows each of ``needles``
    (MLflow's UI is a React app: it renders after the page has loaded)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def unlisted(d) -> list[str]:
        found = d.find_elements(By.CSS_SELECTOR, where)
        text = "\n".join(element.get_attribute("innerText") or "" for element in found)
        return [needle for needle in needles if needle not in text]

    driver.get(url)
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: not unlisted(d))
    except TimeoutException:
        raise PaperzooError(f"{what} ({url}) does not list {', '.join(unlisted(driver))} "
                            f"after {timeout:.0f} s") from None  # fmt: skip


def json_param(values: list[str]) -> str:
    """A list as MLflow's UI writes it into its own links (``JSON.stringify``): ``["a","b"]``, quotes escaped."""
    return urllib.parse.quote(json.dumps(values, separators=(",", ":")), safe="[],")


# The height of the page's content: the document's, or the document's plus what its tallest scrolling box hides
# (MLflow's pages scroll inside a box that fits the window).
PAGE_HEIGHT_JS = """
let hidden = 0;
for (const e of document.querySelectorAll('*')) {
  const overflow = getComputedStyle(e).overflowY;
  if ((overflow === 'auto' || overflow === 'scroll') && e.clientHeight > 0)
    hidden = Math.max(hidden, e.scrollHeight - e.clientHeight);
}
return [Math.max(document.documentElement.scrollHeight, window.innerHeight + hidden),
        window.outerHeight - window.innerHeight];
"""


def screenshot(driver, path: Path) -> Path:
    """A PNG of the whole page (up to MAX_HEIGHT pixels tall): the window is made as tall as the content first."""
    content, chrome = driver.execute_script(PAGE_HEIGHT_JS)
    driver.set_window_size(WIDTH, min(MAX_HEIGHT, content) + chrome)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise PaperzooError(f"could not save the screenshot {path}")
    driver.set_window_size(WIDTH, HEIGHT)
    return path


def check_mlflow(driver, base: str, experiment_id: str, reproduction: str, runs: dict[str, str], out: Path,
                 timeout: float = 120.0) -> list[Path]:  # fmt: skip
    """MLflow's comparison view of ``runs`` ({run id: run name}, the newest first) lists each one's id and name, and
    the runs table of ``reproduction``'s FINISHED runs the names on its first page; their screenshots."""
    compare = f"{base}/#/compare-runs?runs={json_param(list(runs))}&experiments={json_param([experiment_id])}"
    # its tables, not an error message that names a run: "Run ID:", "Run Name:", then params, metrics and tags
    wait_for_listed(driver, compare, "table", [*runs, *runs.values()], "MLflow's comparison view", timeout)
    shots = [screenshot(driver, out / "mlflow-compare-runs.png")]
    search = f"tags.reproduction = '{reproduction}' and attributes.status = 'FINISHED'"
    query = urllib.parse.urlencode({"workflowType": "machine_learning", "searchFilter": search},
                                   quote_via=urllib.parse.quote)  # fmt: skip
    table = f"{base}/#/experiments/{experiment_id}/runs?{query}"
    first_page = list(runs.values())[:TABLE_PAGE]
    driver.set_window_size(WIDTH, min(MAX_HEIGHT, HEIGHT + TABLE_ROW * len(first_page)))  # every row drawn
    what = f"the runs table of experiment '{EXPERIMENT}'"
    wait_for_listed(driver, table, "body", first_page, what, timeout)
    return [*shots, screenshot(driver, out / "mlflow-runs.png")]


def check_report(driver, report: Path, out: Path, timeout: float = 30.0) -> tuple[int, Path]:
    """``report`` (an HTML file) has figures and every one loaded; their number and the page's screenshot."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    if not report.is_file():
        raise PaperzooError(f"no {report}; `nox -s compare` writes it")
    driver.get(report.as_uri())
    images = (
        "return Array.from(document.images, i => [i.alt || i.src.slice(0, 60), i.complete, i.naturalWidth]);"
    )
    with contextlib.suppress(TimeoutException):  # the figures still loading are named below
        WebDriverWait(driver, timeout, poll_frequency=0.2).until(
            lambda d: (
                d.execute_script("return document.readyState === 'complete';")
                and all(complete for _, complete, _ in d.execute_script(images))
            )
        )
    found = driver.execute_script(images)
    if not found:
        raise PaperzooError(f"{report} has no figures (no <img>)")
    broken = [alt for alt, complete, width in found if not (complete and width > 0)]
    if broken:
        raise PaperzooError(
            f"{report}: {len(broken)} of {len(found)} figures did not load: {', '.join(broken)}"
        )
    return len(found), screenshot(driver, out / "report.png")


def check(out: Path, port: int | None = None) -> list[Path]:
    """The whole check over ``tracking_uri()`` and ``reports_dir()``; the screenshots. Prints what it checked."""
    from common.tracking import client

    mlflow_client = client(tracking_uri())
    rep = newest_comparison(mlflow_client)
    newest = sorted(rep.runs.values(), key=lambda run: run.info.start_time or 0, reverse=True)
    runs = {run.info.run_id: run.info.run_name for run in newest}
    experiment_id = mlflow_client.get_experiment_by_name(EXPERIMENT).experiment_id
    report = reports_dir() / EXPERIMENT / "report.html"
    from selenium.common.exceptions import WebDriverException

    driver = browser.headless_chromium(WIDTH, HEIGHT)
    try:
        figures, shot = check_report(driver, report, out)  # first: it needs no server
        print(f"ui-check: {report}: all {figures} figures loaded", flush=True)
        with mlflow_server(port) as base:
            print(f"ui-check: MLflow UI on {base} over {tracking_uri()}", flush=True)
            shots = check_mlflow(driver, base, experiment_id, rep.id, runs, out)
            print(f"ui-check: the comparison view and the runs table list the {len(runs)} runs of "
                  f"reproduction {rep.id}", flush=True)  # fmt: skip
    except WebDriverException as err:  # the browser itself failed (crashed, lost its session)
        raise PaperzooError(f"Chromium failed: {browser.first_line(err)}") from None
    finally:
        driver.quit()
    return [*shots, shot]


def smoke_data(root: Path) -> dict[str, str]:
    """``python -m common.compare scale=smoke`` into ``root``; the environment that points at what it wrote."""
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PAPERZOO_RUNS": str(root / "runs"),
        "PAPERZOO_REPORTS": str(root / "reports"),
    }
    command = [sys.executable, "-m", "common.compare", "scale=smoke", "progress=false"]
    print(f"ui-check --smoke: {' '.join(command[1:])} into {root}", flush=True)
    code = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, **env}).returncode
    if code != 0:
        raise PaperzooError(
            f"`python -m common.compare scale=smoke` exited with status {code} (its output is above)"
        )
    return env


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other command of the lab
        raise PaperzooError(f"{message}; {USAGE}")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m common.ui_check", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="first run a smoke comparison in a temporary folder"
    )
    parser.add_argument(
        "--out", type=Path, help="where the screenshots go (default: reports/compare/screenshots)"
    )
    parser.add_argument("--port", type=int, help="the MLflow server's port (default: a free one)")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        lacks = browser.missing()
        if lacks:
            under_ci = os.environ.get("CI") == "true"
            print(f"ui-check skipped: {lacks}" + ("; under CI that is a failure" if under_ci else ""),
                  file=sys.stderr if under_ci else sys.stdout)  # fmt: skip
            return 1 if under_ci else 0
        env: dict[str, str] = {}
        out = args.out
        if args.smoke:
            root = Path(tempfile.mkdtemp(prefix="paperzoo-ui-check-"))
            env, out = smoke_data(root), out or root / "screenshots"
        with env_vars(env):
            shots = check((out or reports_dir() / EXPERIMENT / "screenshots").resolve(), args.port)
    except PaperzooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"ui-check: screenshots in {shots[0].parent}: {', '.join(shot.name for shot in shots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
