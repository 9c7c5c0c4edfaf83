"""A minimal Hydra app on the project's ``conf/`` for the reliability tests (not a test module).

``python -m tests.reliability._app [overrides]`` composes the real config (toy experiment, MLflow
tracking, the sweep callback), validates it through :func:`experiments.run_or_exit` and opens one
MLflow run with :func:`bifrepro.tracking.start_run` that logs ``x=1``. Environment variables:

* ``RELIABILITY_NOW``: an ISO time that ``${now:...}`` returns instead of the clock, so that two
  processes resolve it to the same second however loaded the machine is;
* ``RELIABILITY_READY``: a file written once the run is open (the test then kills the process);
* ``RELIABILITY_SLEEP``: seconds to stay inside the run.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import hydra
import hydra._internal.core_plugins.basic_launcher as basic_launcher
import hydra._internal.hydra as hydra_internal
from omegaconf import DictConfig, OmegaConf

from bifrepro.config import register_configs, validate_config
from bifrepro.tracking import start_run
from experiments import CONF_DIR, run_or_exit

register_configs()


def run(cfg: DictConfig) -> dict[str, float]:
    """Validate ``cfg``, then one MLflow run that may wait to be killed."""
    validate_config(cfg)
    with start_run(cfg) as tracker:
        tracker.log_metrics({"x": 1.0})
        ready = os.environ.get("RELIABILITY_READY")
        if ready:
            Path(ready).write_text(str(os.getpid()))
        time.sleep(float(os.environ.get("RELIABILITY_SLEEP", "0")))
    return {"x": 1.0}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    return run_or_exit(run, cfg)["x"]


def _freeze_now(stamp: str) -> None:
    """Make ``${now:...}`` return ``stamp`` (Hydra re-registers it in ``setup_globals``)."""
    original = hydra_internal.setup_globals

    def setup_globals() -> None:
        original()
        frozen = datetime.fromisoformat(stamp)
        OmegaConf.register_new_resolver("now", frozen.strftime, use_cache=True, replace=True)

    hydra_internal.setup_globals = setup_globals
    basic_launcher.setup_globals = setup_globals


if __name__ == "__main__":
    if os.environ.get("RELIABILITY_NOW"):
        _freeze_now(os.environ["RELIABILITY_NOW"])
    main()
