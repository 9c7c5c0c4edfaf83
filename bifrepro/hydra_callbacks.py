"""Hydra callback that turns a multirun into one MLflow parent run with a child run per job.

Enabled in ``conf/config.yaml`` (``hydra.callbacks.mlflow_sweep``). Lifecycle:

* ``on_multirun_start`` (launching process): creates the parent run, logs the sweep definition and
  the base config, and writes ``<sweep dir>/.mlflow_parent_run.json``. Jobs, in whatever process
  or SLURM node they run, find the parent through that file (:func:`bifrepro.tracking.start_run`).
  A sweep folder that already names a parent run is refused (exit status 2): its jobs would attach
  to the other sweep's parent. Sweep folder names are unique (``${bifrepro.sweep_id:}`` in
  ``conf/config.yaml``), so this only happens with an explicit ``hydra.sweep.dir``.
* ``on_job_end`` (job process): a failed job marks the parent FAILED right away and leaves a
  marker file, because Hydra skips ``on_multirun_end`` when a job fails.
* ``on_multirun_end`` (launching process, only when every job returned): the parent ends
  FINISHED, or FAILED if any marker exists.

Exceptions inside Hydra callbacks only produce warnings, so every hook logs and carries on.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bifrepro.io import atomic_write_text
from bifrepro.tracking import (
    PARENT_RUN_FILE,
    file_lock,
    get_client,
    get_or_create_experiment,
    git_info,
    process_tags,
    write_parent_run_file,
)

__all__ = ["MLflowSweepCallback", "FAILED_JOBS_DIR"]

log = logging.getLogger(__name__)

#: Folder in the sweep directory with one marker file per failed job.
FAILED_JOBS_DIR = ".mlflow_failed_jobs"


def _sweep_dir(config: DictConfig) -> Path:
    sweep = Path(str(config.hydra.sweep.dir))
    if sweep.is_absolute():
        return sweep
    cwd = OmegaConf.select(config, "hydra.runtime.cwd", default=None)
    return (Path(cwd) if cwd else Path.cwd()) / sweep


def _tracking(config: DictConfig) -> dict[str, Any] | None:
    node = config.get("tracking")
    if node is None:
        return None
    settings = OmegaConf.to_container(node, resolve=True)
    if not isinstance(settings, dict) or not settings.get("enabled", False):
        return None
    return settings


def _read_parent(sweep_dir: Path) -> dict[str, Any] | None:
    import json

    path = sweep_dir / PARENT_RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _sweep_params(config: DictConfig, overrides: list[str]) -> dict[str, str]:
    """``{key: "v1,v2"}`` of every swept key: sweeper params and sweep overrides (``a=1,2``)."""
    out: dict[str, str] = {}
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    if params is not None:
        out.update({str(k): str(v) for k, v in OmegaConf.to_container(params).items()})
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        for ov in OverridesParser.create().parse_overrides(overrides):
            if ov.is_sweep_override():
                out[ov.get_key_element()] = ov.input_line.split("=", 1)[1]
    except Exception as err:  # noqa: BLE001 - only used for labels
        log.debug("could not parse the sweep overrides: %s", err)
    return out


def _refuse_a_used_sweep_dir(sweep_dir: Path) -> None:
    """Exit (status 2, one line) if ``sweep_dir`` already holds another multirun's parent run."""
    path = sweep_dir / PARENT_RUN_FILE
    if not path.exists():
        return
    owner = (_read_parent(sweep_dir) or {}).get("run_id", "unknown")
    print(
        f"error: hydra.sweep.dir={str(sweep_dir)!r} is invalid: it already belongs to the multirun "
        f"with MLflow parent run {owner} ({path.name}); a multirun needs a folder of its own "
        "(leave hydra.sweep.dir at its default, which is unique, or choose a new folder)",
        file=sys.stderr,
    )
    raise SystemExit(2)  # not an Exception: Hydra turns those in callbacks into warnings


class MLflowSweepCallback(Callback):
    """Parent MLflow run per Hydra multirun; see the module docstring."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        settings = _tracking(config)
        if settings is None:
            return
        sweep_dir = _sweep_dir(config)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # the check and the parent file are one step for multiruns sharing the folder
        with file_lock(sweep_dir / ".mlflow_parent_run.lock"):
            _refuse_a_used_sweep_dir(sweep_dir)
            self._create_parent(config, settings, sweep_dir)

    def _create_parent(self, config: DictConfig, settings: dict[str, Any], sweep_dir: Path) -> None:
        try:
            uri = str(settings["uri"])
            client = get_client(uri)
            exp_name = str(settings["experiment_name"])
            exp_id = get_or_create_experiment(client, exp_name, settings.get("artifact_location"))
            overrides = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
            sweep_params = _sweep_params(config, overrides)
            tags = {
                "bifrepro.role": "sweep-parent",
                "experiment": str(OmegaConf.select(config, "experiment.name", default=exp_name)),
                "dataset": str(OmegaConf.select(config, "data.name", default="unknown")),
                "hydra.sweep.dir": str(sweep_dir),
                "hydra.overrides": " ".join(overrides) or "(none)",
                **git_info(),
                **process_tags(),  # a killed launcher's parent is closed by the next run
            }
            name = f"{tags['experiment']} sweep {sweep_dir.name}"
            run = client.create_run(exp_id, run_name=name, tags=tags)
            self.parent_run_id, self.tracking_uri = run.info.run_id, uri
            for k, v in sweep_params.items():
                client.log_param(run.info.run_id, f"sweep.{k}", v)
            base = OmegaConf.to_container(config, resolve=False)
            if isinstance(base, dict):
                base.pop("hydra", None)
            client.log_text(run.info.run_id, OmegaConf.to_yaml(base), "config/base_config.yaml")
            client.log_dict(run.info.run_id, sweep_params, "config/sweep.json")
            write_parent_run_file(sweep_dir, run.info.run_id, uri, sweep_keys=sorted(sweep_params))
            log.info("MLflow parent run %s for the sweep in %s", run.info.run_id, sweep_dir)
        except Exception as err:  # noqa: BLE001 - a tracking problem must not stop the sweep
            log.warning("could not create the MLflow parent run: %s", err)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED:
            return
        try:
            if OmegaConf.select(config, "hydra.mode", default=None) is None:
                return
            from hydra.types import RunMode

            if config.hydra.mode != RunMode.MULTIRUN:
                return
            sweep_dir = _sweep_dir(config)
            info = _read_parent(sweep_dir)
            if info is None:
                return
            num = OmegaConf.select(config, "hydra.job.num", default="x")
            err = job_return._return_value  # the exception, without re-raising it
            atomic_write_text(
                sweep_dir / FAILED_JOBS_DIR / f"job_{num}.txt",
                f"{type(err).__name__}: {err}\n",
            )
            client = get_client(str(info["tracking_uri"]))
            client.set_tag(
                info["run_id"],
                "failed_jobs",
                ",".join(sorted(p.stem for p in (sweep_dir / FAILED_JOBS_DIR).glob("job_*.txt"))),
            )
            client.set_terminated(info["run_id"], status="FAILED")
            log.warning("job %s failed; MLflow parent run %s marked FAILED", num, info["run_id"])
        except Exception as err:  # noqa: BLE001
            log.warning("could not mark the MLflow parent run failed: %s", err)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            sweep_dir = _sweep_dir(config)
            info = _read_parent(sweep_dir)
            if info is None:
                return
            failed = list((sweep_dir / FAILED_JOBS_DIR).glob("job_*.txt"))
            client = get_client(str(info["tracking_uri"]))
            client.log_metric(info["run_id"], "sweep/failed_jobs", float(len(failed)))
            client.set_terminated(info["run_id"], status="FAILED" if failed else "FINISHED")
        except Exception as err:  # noqa: BLE001
            log.warning("could not close the MLflow parent run: %s", err)
