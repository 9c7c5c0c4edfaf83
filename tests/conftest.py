"""Shared fixtures. Keep tests on the CPU, quiet and hermetic."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# --- MLflow and Hydra fixtures of the experiment harness (tests/test_tracking.py, tests/experiments) ---
import shutil  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow SQLite store, made once (a fresh one costs ~1.5 s)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_uri(tmp_path: Path, _mlflow_template_db: Path) -> str:
    """``sqlite:////…/mlflow.db``: a private copy of the template store for one test."""
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True)
    shutil.copyfile(_mlflow_template_db, db)
    return f"sqlite:///{db}"


@pytest.fixture
def search_runs(mlflow_uri: str) -> Iterator:
    """``search_runs(experiment_name) -> DataFrame`` via ``mlflow.search_runs`` on the test store."""
    import mlflow

    previous = mlflow.get_tracking_uri()

    def _search(experiment_name: str, **kw):  # noqa: ANN202
        mlflow.set_tracking_uri(mlflow_uri)
        return mlflow.search_runs(experiment_names=[experiment_name], **kw)

    yield _search
    mlflow.set_tracking_uri(previous)


@pytest.fixture
def hydra_compose() -> Iterator:
    """``hydra_compose(overrides) -> DictConfig`` against ``conf/`` (GlobalHydra cleared after)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bifrepro.config import register_configs

    register_configs()  # every schema and resolver, once per process
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):

        def _compose(overrides: list[str] | None = None, return_hydra_config: bool = False):  # noqa: ANN202
            return compose(
                "config", overrides=overrides or [], return_hydra_config=return_hydra_config
            )

        yield _compose
    GlobalHydra.instance().clear()
