"""MLflow tracking for experiments: one explicit SQLite store, one run per job, sweeps as parents.

``start_run(cfg)`` is the only entry point experiments need::

    with start_run(cfg, tags={"device": "cpu"}) as tracker:
        tracker.log_metrics({"spearman": 0.8}, step=100)
        tracker.log_figure(fig, "figures/curves.png")

It points an ``MlflowClient`` at ``cfg.tracking.uri`` (an absolute ``sqlite:////…/mlflow.db``, no
global MLflow state is touched), creates the MLflow experiment if needed, flattens the resolved
config into params, saves the whole config as ``config/config.yaml``, and tags the run (git
commit, dataset, model, device, Hydra job). Inside a Hydra multirun the run becomes a child of the
sweep's parent run, which :class:`bifrepro.hydra_callbacks.MLflowSweepCallback` creates and
records in ``<sweep dir>/.mlflow_parent_run.json``. The run ends FINISHED, or FAILED (KILLED on
Ctrl-C, SIGTERM or SIGHUP) if the body raises. With ``cfg.tracking.enabled=false`` the tracker is a
no-op.

Shared state survives parallel and killed processes:

* the SQLite store is created (schema migrations) under an inter-process lock on
  ``<store>.lock``, so jobs that start together on a fresh store do not corrupt it;
* each run is tagged with ``host``, ``pid`` and ``pid_start``; the next ``start_run`` of the same
  MLflow experiment marks RUNNING runs of this host whose process is gone (``kill -9``, a node
  crash) as KILLED;
* importing this module registers the ``bifrepro.sweep_id`` resolver (``<pid>-<random>``, fixed
  for one multirun) that keeps the sweep folders of multiruns started in the same second apart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

try:  # Unix only; elsewhere the store is opened without a lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "RunTracker",
    "Terminated",
    "start_run",
    "flatten_config",
    "git_info",
    "get_client",
    "get_or_create_experiment",
    "runs_table_urls",
    "default_artifact_location",
    "multirun_parent_run_id",
    "write_parent_run_file",
    "PARENT_RUN_FILE",
    "SWEEP_ID_RESOLVER",
    "sweep_id",
    "register_resolvers",
    "store_lock",
    "file_lock",
    "mark_stale_runs_killed",
    "process_tags",
]

log = logging.getLogger(__name__)

#: File in a multirun's sweep folder that names the MLflow parent run (written by the callback).
PARENT_RUN_FILE = ".mlflow_parent_run.json"
#: MLflow params are limited in length; longer values are cut with a marker.
_MAX_PARAM_CHARS = 6000
_PARENT_TAG = "mlflow.parentRunId"
_BATCH = 100
#: OmegaConf resolver of the unique part of the sweep folder names (``conf/config.yaml``).
SWEEP_ID_RESOLVER = "bifrepro.sweep_id"
#: Signals that end a run as KILLED, like Ctrl-C: ``kill``, SLURM time limits, ``scancel``, a
#: closed terminal.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def sweep_id() -> str:
    """``<pid>-<4 hex digits>``: unique per launching process and call.

    Registered with ``use_cache=True``: Hydra resolves the sweep folder once in the launching
    process and copies the resolver cache into every job's config (as for ``${now:...}``), so all
    jobs of one multirun see the same value, and two multiruns never do.
    """
    return f"{os.getpid()}-{secrets.token_hex(2)}"


def register_resolvers() -> None:
    """Register ``${bifrepro.sweep_id:}`` (idempotent; runs when this module is imported)."""
    if not OmegaConf.has_resolver(SWEEP_ID_RESOLVER):
        OmegaConf.register_new_resolver(SWEEP_ID_RESOLVER, sweep_id, use_cache=True)


register_resolvers()


def flatten_config(cfg: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, str]:
    """``{"sampler.step_size": "0.0001", ...}``: a resolved config as flat string params.

    Lists are kept whole (as their string form); values longer than MLflow's limit are truncated.
    """
    container = (
        OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    )
    out: dict[str, str] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, Mapping) and node:
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            text = "None" if node is None else str(node)
            if len(text) > _MAX_PARAM_CHARS:
                text = text[: _MAX_PARAM_CHARS - 15] + "...[truncated]"
            out[key] = text

    walk(container, prefix)
    return out


def git_info(path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """``{"git_commit": sha, "git_dirty": "true"/"false"}`` for the repo at ``path`` (or {})."""
    where = str(path or Path(__file__).resolve().parents[1])
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": sha, "git_dirty": str(bool(dirty)).lower()} if sha else {}


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for other stores and ``:memory:``)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if not path or path == ":memory:" else Path(path)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive inter-process lock (``flock``) on the file ``path`` (created if missing;
    its folder must exist). Released when the block ends or the process dies."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive inter-process lock (``flock`` on ``<db>.lock``) on a SQLite store.

    MLflow creates and migrates the schema when a process first opens the store; two processes
    doing it at once crash and can leave the file half-migrated for good. A no-op for other
    stores. The SQLite file's folder is created if needed.
    """
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(db.with_name(db.name + ".lock")):
        yield


def get_client(uri: str) -> Any:
    """An ``MlflowClient`` bound to ``uri``; a new SQLite store is created under
    :func:`store_lock` (its folder too), so parallel jobs can open a fresh store safely."""
    from mlflow import MlflowClient

    with store_lock(uri):
        try:
            return MlflowClient(tracking_uri=uri)  # opens the store: creates/migrates the schema
        except Exception as err:
            if "_alembic_tmp_" not in str(err):
                raise
            raise RuntimeError(
                f"the MLflow store {_sqlite_path(uri)} was left half-created by an earlier crash "
                "(two processes created it at once before bifrepro locked it); move it aside and "
                "run again to start a fresh store"
            ) from err


def _as_artifact_uri(location: str | None) -> str | None:
    if not location:
        return None
    if "://" in location or location.startswith("file:"):
        return location
    return Path(location).resolve().as_uri()


def default_artifact_location(uri: str) -> str | None:
    """``<folder of the SQLite file>/mlartifacts`` for a SQLite URI (MLflow's own default would be
    ``./mlruns`` under whatever the current directory is); ``None`` for other stores."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///") :]).parent / "mlartifacts")
    return None


#: MLflow 3's UI opens an experiment with this tag on its runs table ("Model training"), not on
#: the GenAI overview.
_EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def get_or_create_experiment(client: Any, name: str, artifact_location: str | None = None) -> str:
    """Id of the MLflow experiment ``name``, created (with ``artifact_location``) if missing.

    Without ``artifact_location``, a SQLite store keeps artifacts beside its file
    (:func:`default_artifact_location`). Safe against a parallel job creating it at the same moment.
    """
    from mlflow.exceptions import MlflowException

    if artifact_location is None:
        artifact_location = default_artifact_location(str(client.tracking_uri))

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if _EXPERIMENT_KIND[0] not in (exp.tags or {}):  # created before the tag was set
            client.set_experiment_tag(exp.experiment_id, *_EXPERIMENT_KIND)
        return str(exp.experiment_id)
    try:
        exp_id = str(
            client.create_experiment(name, artifact_location=_as_artifact_uri(artifact_location))
        )
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)
    client.set_experiment_tag(exp_id, *_EXPERIMENT_KIND)
    return exp_id


def runs_table_urls(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> dict[str, str]:
    """``{experiment name: URL of its runs table}`` in an MLflow UI serving ``tracking_uri`` at
    ``host:port``, for every active experiment in the store, sorted by name.

    MLflow 3 opens an experiment on its GenAI overview (traces) unless told otherwise; the UI's
    hash route ``#/experiments/<id>/runs`` with ``workflowType=machine_learning`` opens the runs
    table (parent runs with their children) in the "Model training" view directly.
    """
    from mlflow.entities import ViewType

    client = get_client(tracking_uri)
    experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    base = f"http://{host}:{int(port)}/#/experiments"
    return {
        e.name: f"{base}/{e.experiment_id}/runs?workflowType=machine_learning"
        for e in sorted(experiments, key=lambda e: e.name)
    }


def multirun_parent_run_id(tracking_uri: str | None = None) -> str | None:
    """The sweep's parent run id when called inside a Hydra multirun job, else ``None``.

    Read from ``<sweep dir>/PARENT_RUN_FILE``; ignored if it was written for another store.
    """
    info = _parent_info(tracking_uri)
    return None if info is None else info.get("run_id")


def _parent_info(tracking_uri: str | None = None) -> dict[str, Any] | None:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    path = _sweep_dir(hc.sweep.dir, hc.runtime.cwd) / PARENT_RUN_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("could not read the MLflow parent run file %s", path)
        return None
    if tracking_uri is not None and info.get("tracking_uri") != tracking_uri:
        return None
    return info


def _sweep_dir(sweep_dir: str, original_cwd: str | None) -> Path:
    p = Path(sweep_dir)
    return p if p.is_absolute() or not original_cwd else Path(original_cwd) / p


def _hydra_tags() -> dict[str, str]:
    """Hydra job name/number/overrides and the chosen config-group options, when inside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover
        return {}
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    tags = {
        "hydra.job.name": str(hc.job.name),
        "hydra.mode": str(hc.mode.name if hc.mode is not None else ""),
        "hydra.output_dir": str(hc.runtime.output_dir),
        "hydra.overrides": " ".join(hc.overrides.task) or "(none)",
    }
    if hc.job.get("num") is not None:
        tags["hydra.job.num"] = str(hc.job.num)
    for group, choice in (hc.runtime.choices or {}).items():
        if not str(group).startswith("hydra/") and choice is not None:
            tags[f"hydra.choice.{group}"] = str(choice)
    return tags


def _process_start(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot; Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after "pid (name)": field 3 (state) onwards
    return fields[19] if len(fields) > 19 else None  # field 22: starttime


def _process_alive(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` of this host still runs (and is the one that started at
    ``started``, when known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by another user
        pass
    now = _process_start(pid)
    return started is None or now is None or now == started


def process_tags() -> dict[str, str]:
    """``host``, ``pid`` (and ``pid_start`` on Linux) of this process, recorded on every run so
    that a later run can tell whether it is still alive."""
    tags = {"host": socket.gethostname(), "pid": str(os.getpid())}
    started = _process_start(os.getpid())
    if started is not None:
        tags["pid_start"] = started
    return tags


def mark_stale_runs_killed(client: Any, experiment_id: str) -> list[str]:
    """Mark RUNNING runs of ``experiment_id`` whose process is gone as KILLED; return their ids.

    Only runs of this host with a ``pid`` tag are touched (``kill -9``, an out-of-memory kill or a
    crashed node leave no chance to close the run); a run whose process still runs is left alone.
    """
    host = socket.gethostname()
    if "'" in host:  # cannot be quoted in a filter; hostnames never contain one
        return []
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.host = '{host}'",
        max_results=1000,
    )
    stale = []
    for run in runs:
        pid = run.data.tags.get("pid", "")
        if not pid.isdigit() or _process_alive(int(pid), run.data.tags.get("pid_start")):
            continue
        client.set_tag(
            run.info.run_id, "killed_reason", f"process {pid} on {host} ended without closing it"
        )
        client.set_terminated(run.info.run_id, status="KILLED")
        stale.append(run.info.run_id)
    if stale:
        log.warning("marked %d stale MLflow run(s) KILLED: %s", len(stale), ", ".join(stale))
    return stale


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived inside :func:`start_run`: the run ends KILLED, then the process
    exits with status 128 + the signal number (as a shell reports a process killed by it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_signals_raise_terminated() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise :class:`Terminated` once (then they are ignored
    while the run is closed). Main thread only; an ignored signal (SIGHUP under ``nohup``) stays
    ignored; the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        log.warning("received %s: closing the MLflow run as KILLED", signal.Signals(signum).name)
        raise Terminated(signum)

    for sig in _STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current is not signal.SIG_IGN:
            previous[sig] = current
            signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


class RunTracker:
    """Logging helpers bound to one MLflow run; every method is a no-op when tracking is off."""

    def __init__(self, client: Any | None = None, run_id: str | None = None) -> None:
        self.client = client
        self.run_id = run_id

    @property
    def enabled(self) -> bool:
        return self.client is not None and self.run_id is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values as strings; a key already logged with the same value is skipped)."""
        if not self.enabled:
            return
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [
            Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in params.items() if k not in existing
        ]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar metrics (non-finite values are logged as they are; MLflow accepts NaN)."""
        if not self.enabled or not metrics:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step or 0)) for k, v in metrics.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def log_metric_series(self, key: str, values: Any, steps: Any) -> None:
        """Log one metric at several steps (e.g. a curve over training checkpoints)."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(key, float(v), ts, int(s)) for v, s in zip(values, steps, strict=True)]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + _BATCH])

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib figure as an artifact (e.g. ``"figures/modes.png"``)."""
        if self.enabled:
            self.client.log_figure(self.run_id, figure, artifact_file)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a local file (or folder) into the run's artifacts."""
        if not self.enabled:
            return
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(p), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """JSON/YAML artifact (format from the suffix)."""
        if self.enabled:
            self.client.log_dict(self.run_id, obj, artifact_file)


def _tracking_settings(cfg: DictConfig) -> dict[str, Any]:
    t = cfg.get("tracking")
    if t is None:
        return {"enabled": False}
    return OmegaConf.to_container(t, resolve=True)  # type: ignore[return-value]


@contextlib.contextmanager
def start_run(
    cfg: DictConfig, run_name: str | None = None, tags: Mapping[str, Any] | None = None
) -> Iterator[RunTracker]:
    """Open an MLflow run for one experiment job; see the module docstring.

    Args:
        cfg: the composed experiment config (needs ``tracking``; ``experiment.name``,
            ``data.name`` and ``model.name`` become tags when present).
        run_name: default: ``cfg.tracking.run_name``, else the experiment name (with the job's
            overrides inside a multirun).
        tags: extra tags (override the defaults).
    """
    settings = _tracking_settings(cfg)
    if not settings.get("enabled", False):
        yield RunTracker()
        return
    uri = str(settings["uri"])
    client = get_client(uri)
    exp_id = get_or_create_experiment(
        client, str(settings["experiment_name"]), settings.get("artifact_location")
    )
    try:
        mark_stale_runs_killed(client, exp_id)
    except Exception as err:  # noqa: BLE001 - housekeeping must not stop the run
        log.warning("could not check for stale MLflow runs: %s", err)
    hydra_tags = _hydra_tags()
    exp_name = str(OmegaConf.select(cfg, "experiment.name", default="experiment"))
    parent_info = _parent_info(uri)
    parent = None if parent_info is None else parent_info.get("run_id")
    name = run_name or settings.get("run_name")
    if not name:
        name = exp_name
        if parent_info is not None:  # a sweep job: name it by the values it sweeps
            swept = set(parent_info.get("sweep_keys") or [])
            mine = [
                o for o in hydra_tags.get("hydra.overrides", "").split() if o.split("=")[0] in swept
            ]
            name = f"{exp_name} {' '.join(mine)}".strip()
    all_tags: dict[str, str] = {
        "experiment": exp_name,
        "dataset": str(OmegaConf.select(cfg, "data.name", default="unknown")),
        "model": str(OmegaConf.select(cfg, "model.name", default="unknown")),
        "device": _default_device(),
        "mlflow.source.name": f"experiments.{exp_name}",
    }
    gi = git_info()
    all_tags.update(gi)
    if "git_commit" in gi:
        all_tags["mlflow.source.git.commit"] = gi["git_commit"]
    all_tags.update(hydra_tags)
    all_tags.update({str(k): str(v) for k, v in (settings.get("tags") or {}).items()})
    all_tags.update({str(k): str(v) for k, v in (tags or {}).items()})
    all_tags.update(process_tags())  # last: the stale-run check relies on them
    if parent:
        all_tags[_PARENT_TAG] = parent
    run = client.create_run(exp_id, run_name=str(name), tags=all_tags)
    tracker = RunTracker(client, run.info.run_id)
    status = "FAILED"
    with _stop_signals_raise_terminated():
        try:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            if isinstance(resolved, dict):
                resolved.pop("hydra", None)
            tracker.log_params(flatten_config(resolved))
            tracker.log_text(OmegaConf.to_yaml(OmegaConf.create(resolved)), "config/config.yaml")
            if "hydra.overrides" in hydra_tags:
                tracker.log_text(hydra_tags["hydra.overrides"] + "\n", "config/overrides.txt")
            log.info(
                "MLflow run %s (%s) in %s%s",
                run.info.run_id,
                name,
                uri,
                f", child of {parent}" if parent else "",
            )
            yield tracker
            status = "FINISHED"
        except (KeyboardInterrupt, Terminated):
            status = "KILLED"
            raise
        finally:
            try:
                client.set_terminated(run.info.run_id, status=status)
            except Exception as err:  # noqa: BLE001 - never mask the body's exception
                log.warning("could not close MLflow run %s: %s", run.info.run_id, err)


def write_parent_run_file(
    sweep_dir: str | os.PathLike[str],
    run_id: str,
    tracking_uri: str,
    sweep_keys: list[str] | None = None,
) -> Path:
    """Record the sweep's parent run (and the swept keys, for child run names) for its jobs."""
    from bifrepro.io import atomic_write_json

    path = Path(sweep_dir) / PARENT_RUN_FILE
    info = {"run_id": run_id, "tracking_uri": tracking_uri, "sweep_keys": sweep_keys or []}
    return atomic_write_json(info, path)
