"""Direct links to each MLflow experiment's runs table (the UI would open on its GenAI overview)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bifrepro.tracking import get_client, get_or_create_experiment, runs_table_urls


def test_one_runs_table_url_per_active_experiment(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = get_client(uri)
    toy = get_or_create_experiment(client, "toy")
    lds = get_or_create_experiment(client, "lds")
    gone = get_or_create_experiment(client, "abandoned")
    client.delete_experiment(gone)
    urls = runs_table_urls(uri, "127.0.0.1", 5001)
    assert list(urls) == ["Default", "lds", "toy"]  # sorted; deleted experiments left out
    assert urls["toy"] == (
        f"http://127.0.0.1:5001/#/experiments/{toy}/runs?workflowType=machine_learning"
    )
    assert urls["lds"].endswith(f"/#/experiments/{lds}/runs?workflowType=machine_learning")
    assert toy != lds


def test_the_installed_ui_knows_the_route_and_the_view_switch() -> None:
    """The URL form matches the MLflow UI bundle installed here (a new MLflow may change it)."""
    import mlflow

    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    mains = list(bundle.glob("main.*.js"))
    if not mains:
        pytest.skip("the MLflow UI bundle is not installed")
    text = mains[0].read_text(encoding="utf-8", errors="replace")
    assert "experiments/:experimentId/runs" in text and "createHashRouter" in text
    assert 'MACHINE_LEARNING="machine_learning"' in text and '"workflowType"' in text
