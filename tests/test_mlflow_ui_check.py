"""The headless-browser check of the MLflow UI (``scripts/mlflow_ui_check.py``).

The store-side logic (which parent run to look for, Chromium discovery) runs everywhere; the
browser test itself needs Chromium and Playwright (``make mlflow-ui-check`` installs both) and is
marked slow.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from bifrepro.tracking import get_client, get_or_create_experiment

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mlflow_ui_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("mlflow_ui_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ui_check = _load_script()


def _store_with_sweep(tmp_path: Path) -> str:
    """A store with a lone run, and a sweep parent with two children, in ``toy_hierarchy``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = get_client(uri)
    get_or_create_experiment(client, "lds")
    exp = get_or_create_experiment(client, "toy_hierarchy")
    lone = client.create_run(exp, run_name="single-run")
    client.set_terminated(lone.info.run_id)
    parent = client.create_run(exp, run_name="sweep-parent")
    for i in range(2):
        child = client.create_run(
            exp, run_name=f"job-{i}", tags={"mlflow.parentRunId": parent.info.run_id}
        )
        client.log_metric(child.info.run_id, "flip_share", 0.5 + 0.1 * i)
        client.set_terminated(child.info.run_id)
    client.set_terminated(parent.info.run_id)
    return uri


def test_finds_the_sweep_parent_and_its_children(tmp_path):
    uri = _store_with_sweep(tmp_path)
    name, parent, children = ui_check.parent_with_children(uri, None)
    assert (name, parent, children) == ("toy_hierarchy", "sweep-parent", ["job-0", "job-1"])


def test_a_store_without_sweeps_or_a_wrong_experiment_is_an_error(tmp_path):
    uri = _store_with_sweep(tmp_path)
    with pytest.raises(ValueError, match="no parent run"):
        ui_check.parent_with_children(uri, "lds")
    with pytest.raises(ValueError, match="no experiment named"):
        ui_check.parent_with_children(uri, "nope")


def test_a_missing_chromium_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Chromium not found"):
        ui_check.find_chromium(str(tmp_path / "no-chromium"))


def test_a_check_with_a_failed_step_is_not_ok(tmp_path):
    result = ui_check.UICheck("x", "http://x", tmp_path / "s.png")
    assert not result.ok  # no checks ran
    result.checks = {"parent run listed": True, "child run listed under its parent": False}
    assert not result.ok
    result.checks["child run listed under its parent"] = True
    assert result.ok


def _browser_available() -> bool:
    has_chromium = any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))
    return has_chromium and importlib.util.find_spec("playwright") is not None


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not _browser_available(), reason="needs Chromium and playwright")
def test_runs_table_shows_parent_and_children_in_a_real_browser(tmp_path):
    uri = _store_with_sweep(tmp_path)
    shot = tmp_path / "runs_table.png"
    result = ui_check.check_runs_table(uri, shot)
    assert result.checks == {
        "parent run listed": True,
        "runs table, not the traces overview": True,
        "child run listed under its parent": True,
    }
    assert result.url.endswith("/runs?workflowType=machine_learning")
    assert shot.stat().st_size > 10_000  # a rendered page, not an empty image
