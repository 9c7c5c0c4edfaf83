"""Reading the runs of a finished MLflow sweep over sampler settings into one table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["load_sweep_runs"]


def load_sweep_runs(
    tracking_uri: str, parent_run_id: str | None = None, experiment_name: str | None = None
) -> pd.DataFrame:
    """Runs of a sweep as a ``mlflow.search_runs``-style table (``params.*``, ``metrics.*``, ``tags.*``).

    With ``parent_run_id``: that sweep's child runs (its experiment is looked up); otherwise every
    run of ``experiment_name``. Uses an ``MlflowClient`` (no global MLflow state). Feed the result
    to :func:`bifrepro.plots.calibration.plot_sampler_sweep`.
    """
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if parent_run_id is not None:
        exp_id = client.get_run(parent_run_id).info.experiment_id
        filt = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    elif experiment_name is not None:
        exp = client.get_experiment_by_name(experiment_name)
        if exp is None:
            raise ValueError(f"no MLflow experiment {experiment_name!r} at {tracking_uri}")
        exp_id, filt = exp.experiment_id, ""
    else:
        raise ValueError("give parent_run_id or experiment_name")
    rows = []
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string=filt, max_results=1000, page_token=token)
        for run in page:
            row: dict[str, Any] = {"run_id": run.info.run_id, "status": run.info.status}
            row.update({f"params.{k}": v for k, v in run.data.params.items()})
            row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
            row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
            rows.append(row)
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows)
