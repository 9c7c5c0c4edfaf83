"""Experiments: one module each, ``run(cfg) -> dict[str, float]`` plus a thin ``@hydra.main``.

Run from the repository root: ``python -m experiments.<name> key=value`` (add ``-m`` for a
multirun). Configs live in ``conf/``; results in ``results/<name>/`` and the MLflow store.

Use ``@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")``: an absolute
``config_path`` finds ``conf/`` both under ``python -m`` and when ``main()`` is imported and called
(tests, notebooks); a relative ``"../conf"`` only works when the module runs as ``__main__``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig

#: Absolute path of the repository's Hydra config folder.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def in_multirun() -> bool:
    """True inside a Hydra multirun job (each job then writes to its own job folder)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def output_dir(explicit: str | None, results_dir: Path, *parts: str) -> Path:
    """Where an experiment writes its figures and tables.

    ``explicit`` (``experiment.output_dir``) if set, else the Hydra job folder in a multirun,
    else ``results_dir/<parts...>`` (e.g. ``results/lds``).
    """
    if explicit:
        return Path(explicit).expanduser().resolve()
    if in_multirun():
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    return Path(results_dir).joinpath(*parts)


def resolve_device(name: str, key: str = "experiment.device") -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda[:i]"``; CUDA without a GPU is a
    :class:`~bifrepro.config.ConfigError` naming ``key``, before any compute."""
    import torch

    from bifrepro.config import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r} is invalid: CUDA is not available")
    return device


def run_or_exit(run: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> dict[str, float]:
    """Call an experiment's ``run(cfg)`` from its ``@hydra.main``.

    A :class:`~bifrepro.config.ConfigError` (a bad key, value or path, found before any compute)
    prints one line naming the key, the value and what is allowed, and exits with status 2,
    instead of a long traceback. Every other error propagates unchanged, and so does a
    ConfigError inside a multirun job: Hydra then records the job as failed (the sweep's MLflow
    parent run ends FAILED), runs the other jobs, and exits non-zero at the end; exiting from the
    job would skip the other jobs and leave the parent run RUNNING.
    """
    import sys

    from bifrepro.config import ConfigError

    try:
        return run(cfg)
    except ConfigError as err:
        if in_multirun():
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
