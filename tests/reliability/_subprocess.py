"""Fresh Python processes and MLflow look-ups for the reliability tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: The test app: the project's config, validation, and one MLflow run (see ``_app.py``).
APP = ["-m", "tests.reliability._app"]


def env(**extra: str) -> dict[str, str]:
    """The test environment plus the repository on ``PYTHONPATH``, one thread, no telemetry."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), out.get("PYTHONPATH")]))
    out.update(OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    for key in ("BIFREPRO_RESULTS", "HYDRA_FULL_ERROR"):
        out.pop(key, None)
    out.update(extra)
    return out


def start(args: list[str], cwd: Path, **extra: str) -> subprocess.Popen[str]:
    """``python <args>`` in ``cwd`` (Hydra's outputs/ and multirun/ land there), output captured.

    The child starts with the default SIGHUP and SIGTERM handlers even when the test runner was
    started under ``nohup`` (which ignores SIGHUP, and children inherit that).
    """
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_stop_signals,
    )


def _default_stop_signals() -> None:
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def run(
    args: list[str], cwd: Path, timeout: float = 120, **extra: str
) -> subprocess.CompletedProcess:
    """``python <args>`` in ``cwd`` to completion."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for_file(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Wait until ``proc`` writes ``path``; fail with its output if it exits first."""
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited {proc.returncode} early:\n{out}\n{err}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{path} not written within {timeout} s")
        time.sleep(0.1)


def runs(uri: str, experiment: str = "toy_hierarchy") -> list[Any]:
    """Every MLflow run of ``experiment`` in the store ``uri``, oldest first."""
    from bifrepro.tracking import get_client

    client = get_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    found = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return list(found)
