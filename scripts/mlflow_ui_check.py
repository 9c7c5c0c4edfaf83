"""Open the MLflow UI's runs table in a real headless browser and screenshot it (``make mlflow-ui-check``).

Serves an MLflow store with ``mlflow ui`` on a free local port, opens the runs-table link that
``make mlflow-ui`` prints (``bifrepro.tracking.runs_table_urls``) in headless Chromium driven by
Playwright, and checks what a researcher should see there: the runs table (not the GenAI
overview), a parent run, and, after expanding it, its child runs. Writes a full-page screenshot
and exits non-zero when a check fails.

    python scripts/mlflow_ui_check.py --tracking-uri sqlite:////abs/results/mlflow.db \
        --out docs/img/mlflow_runs_table.png

Needs Chromium (Debian: ``apt-get install chromium``; or ``--chromium PATH``) and the Python
package ``playwright`` (``pip install -e '.[ui]'``); the browser Playwright would download is
not used.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: Chromium flags for a sandboxed machine without outside network (no background connections).
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@dataclass
class UICheck:
    """What the browser saw: each named check's outcome and the screenshot path."""

    experiment: str
    url: str
    screenshot: Path
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


def find_chromium(explicit: str | None = None) -> str:
    """Path of a Chromium executable: ``explicit``, ``$CHROMIUM``, or one on PATH."""
    for candidate in (explicit, os.environ.get("CHROMIUM")):
        if candidate:
            if not Path(candidate).exists():
                raise FileNotFoundError(f"Chromium not found at {candidate}")
            return candidate
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(
        "no Chromium found: install it (Debian: apt-get install chromium) or pass --chromium PATH"
    )


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_mlflow_ui(tracking_uri: str, port: int, timeout: float = 180.0) -> Iterator[str]:
    """Run ``mlflow ui`` on ``tracking_uri`` at 127.0.0.1:``port`` until the block ends."""
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli)] if mlflow_cli.exists() else [sys.executable, "-m", "mlflow"]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    # the server's log goes to a file: a pipe nobody reads would block it once full
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [
            *command,
            "ui",
            "--backend-store-uri",
            tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                err = log.read().decode(errors="replace")
                raise RuntimeError(f"mlflow ui exited with {proc.returncode}:\n{err[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow ui did not answer at {base} within {timeout:.0f} s")
            time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        log.close()


def parent_with_children(tracking_uri: str, experiment: str | None) -> tuple[str, str, list[str]]:
    """``(experiment name, parent run name, child run names)``: the newest parent run that has
    children, in ``experiment`` or in any experiment of the store."""
    from mlflow.entities import ViewType

    from bifrepro.tracking import get_client

    client = get_client(tracking_uri)
    experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    if experiment is not None:
        experiments = [e for e in experiments if e.name == experiment]
        if not experiments:
            raise ValueError(f"no experiment named {experiment!r} in {tracking_uri}")
    for exp in sorted(experiments, key=lambda e: e.name):
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
        children: dict[str, list[str]] = {}
        for run in runs:
            parent = run.data.tags.get("mlflow.parentRunId")
            if parent:
                children.setdefault(parent, []).append(run.info.run_name)
        for run in runs:
            if run.info.run_id in children:
                return exp.name, run.info.run_name, sorted(children[run.info.run_id])
    raise ValueError(f"no parent run with child runs in {tracking_uri}")


def check_runs_table(
    tracking_uri: str,
    screenshot: Path,
    experiment: str | None = None,
    chromium: str | None = None,
    timeout_ms: int = 60_000,
) -> UICheck:
    """Serve the store, open its runs table in headless Chromium, check it and screenshot it."""
    from playwright.sync_api import sync_playwright

    from bifrepro.tracking import runs_table_urls

    executable = find_chromium(chromium)
    name, parent, children = parent_with_children(tracking_uri, experiment)
    port = free_port()
    url = runs_table_urls(tracking_uri, "127.0.0.1", port)[name]
    result = UICheck(experiment=name, url=url, screenshot=screenshot)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with serve_mlflow_ui(tracking_uri, port), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
            parent_cell = page.get_by_text(parent, exact=True).first
            try:
                parent_cell.wait_for(state="visible", timeout=timeout_ms)
                result.checks["parent run listed"] = True
            except Exception:  # noqa: BLE001 - a timeout is the failed check
                result.checks["parent run listed"] = False
            result.checks["runs table, not the traces overview"] = "/runs" in page.url
            if result.checks["parent run listed"]:
                _expand_parent(page, parent)
            child_seen = False
            with contextlib.suppress(Exception):
                page.get_by_text(children[0], exact=True).first.wait_for(
                    state="visible", timeout=timeout_ms // 2
                )
                child_seen = True
            result.checks["child run listed under its parent"] = child_seen
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return result


def _expand_parent(page, parent: str) -> None:
    """Click the expander of ``parent``'s row (MLflow nests child runs under a collapsed parent)."""
    row = page.locator("[role='row']", has=page.get_by_text(parent, exact=True)).first
    for selector in (
        "button[aria-label*='xpand']",
        "[data-testid*='expand'] button",
        "[data-testid*='expand']",
        "button",
    ):
        button = row.locator(selector).first
        with contextlib.suppress(Exception):
            if button.count() and button.is_visible():
                button.click(timeout=5_000)
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True, help="e.g. sqlite:////abs/path/mlflow.db")
    parser.add_argument("--out", type=Path, default=Path("docs/img/mlflow_runs_table.png"))
    parser.add_argument("--experiment", default=None, help="default: the first with a sweep")
    parser.add_argument("--chromium", default=None, help="Chromium executable (default: on PATH)")
    args = parser.parse_args(argv)
    result = check_runs_table(args.tracking_uri, args.out.resolve(), args.experiment, args.chromium)
    print(f"MLflow UI check: experiment {result.experiment!r} at {result.url}")
    for check, passed in result.checks.items():
        print(f"  {'ok  ' if passed else 'FAIL'} {check}")
    print(f"  screenshot: {result.screenshot}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
