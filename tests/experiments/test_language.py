"""The language experiment end to end on tiny settings; the from_pretrained path; the figures."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import experiments.language as lang
from bifrepro.config import ConfigError
from tests.experiments._calibration import FAST_CALIBRATION, assert_calibration_recorded
from tests.experiments._hf_model import save_tiny_gpt_neox


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models are dominated by thread synchronisation on a busy machine: one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = [
    "experiment=language",
    "data.num_documents=80",
    "data.num_queries=4",
    "data.max_natural_sentences=10",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "model.max_position_embeddings=64",
    "model.vocab_size=320",
    "model.train.steps=15",
    "model.train.batch_size=8",
    "experiment.seq_len=48",
    "experiment.num_observed=16",
    "methods.ekfac.train_batch_size=8",
    "methods.gradsim.chunk_size=8",
    "sampler.num_chains=2",
    "experiment.chain_groups=1",
    "sampler.num_draws=8",
    "sampler.burn_in=2",
    "sampler.batch_size=8",
    "sampler.step_size=1e-4",
]


def test_run_writes_figures_tables_and_mlflow(
    hydra_compose, mlflow_uri, search_runs, tmp_path
) -> None:
    cfg = hydra_compose(
        [
            *TINY,
            f"results_dir={tmp_path}",
            f"tracking.uri={mlflow_uri}",
            "experiment.chain_groups=2",
        ]
    )
    out = tmp_path / "language"
    out.mkdir()
    (out / "devinterp_comparison.csv").write_text("bench\n")  # bench/bench_devinterp.py's
    (out / "stale.png").write_text("an older result set")
    metrics = lang.run(cfg)
    # the new set replaced the old one whole, keeping the benchmark's files
    assert not (out / "stale.png").exists()
    assert (out / "devinterp_comparison.csv").read_text() == "bench\n"
    for name in (
        *lang.FIGURES,
        "language_tokens.html",
        "benchmark.csv",
        "per_query.csv",
        "metrics.json",
    ):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    # the cache holds the tokenizer, the model (save_pretrained) and the on-disk traces
    cache = tmp_path / "cache" / "language"
    assert list(cache.glob("tokenizer-*/tokenizer.json"))
    assert list(cache.glob("lm-*/model/config.json"))
    assert list(cache.glob("traces-*/traces/train.npy"))

    table = pd.read_csv(out / "benchmark.csv")
    assert set(table.method) == {"bif", "ekfac", "gradsim"}
    assert set(table[table.method == "gradsim"].level) == {"sequence"}
    assert {"token", "sequence"} <= set(table[table.method == "ekfac"].level)
    for col in ("precision_at_1", "precision_at_10", "mrr", "chance_precision"):
        vals = table[col].dropna()
        assert ((vals >= 0) & (vals <= 1)).all(), col
    per_query = pd.read_csv(out / "per_query.csv")
    examples = set(per_query.example.dropna())
    assert {"numbers", "elle", "if_then", "bank_river"} <= examples
    assert per_query.loc[per_query.example == "numbers", "surface"].iloc[0] == "3"
    assert metrics["num_query_tokens"] == len(per_query)
    assert 0 <= metrics["token/bif/all_other/mrr"] <= 1
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["token/bif/all_any/mrr"] == pytest.approx(
        metrics["token/bif/all_any/mrr"]
    )
    assert "chains" in saved["chain_summary"] or saved["chain_summary"]
    # the benchmark per group of chains (one chain each here) and the groups' agreement
    groups = pd.read_csv(out / "bif_chain_groups.csv")
    assert set(groups.group) == {0, 1} and {"other", "any"} <= set(groups.form)
    agreement = pd.read_csv(out / "chain_group_agreement.csv")
    assert len(agreement) == 1 and -1 <= agreement.pearson.iloc[0] <= 1
    assert metrics["chain_groups/num_groups"] == 2
    html = (out / "language_tokens.html").read_text()
    assert "répondu" in html and "title='" in html
    # every poster example's header states its outcome, from the per-query ranks
    assert html.count("reproduced") + html.count("not measurable") >= len(examples)

    runs = search_runs("language")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "FINISHED" and row["tags.dataset"] == "bilingual_templates"
    assert row["params.experiment.num_observed"] == "16"
    assert row["metrics.token/bif/all_other/mrr"] == pytest.approx(
        metrics["token/bif/all_other/mrr"]
    )
    from bifrepro.tracking import get_client

    figs = {a.path for a in get_client(mlflow_uri).list_artifacts(row["run_id"], "figures")}
    assert figs == {f"figures/{f}" for f in lang.FIGURES}
    # a rerun loads the traces and reports what sampling them cost, not the load time
    sampled = metrics["timing/bif/sampling_seconds"]
    assert sampled > 0
    (out / "devinterp_comparison.csv").write_text("bench\n")
    assert lang.run(cfg)["timing/bif/sampling_seconds"] == sampled


def test_any_causal_lm_through_from_pretrained(hydra_compose, tmp_path) -> None:
    """model.name_or_path: a Hugging Face model folder this test saves (GPT-NeoX architecture)."""
    save_tiny_gpt_neox(tmp_path / "hf_model", num_documents=80, num_queries=4)
    cfg = hydra_compose(
        [*TINY, f"results_dir={tmp_path}", "tracking.enabled=false", "experiment.methods=[bif]",
         f"model.name_or_path={tmp_path / 'hf_model'}", "model.local_files_only=true"]
    )  # fmt: skip
    metrics = lang.run(cfg)
    saved = json.loads((tmp_path / "language" / "metrics.json").read_text())
    assert saved["model"]["model_path"] == "hf_model"  # relative to results_dir
    assert "lm_train_seconds" not in metrics  # nothing was trained
    assert not list((tmp_path / "cache" / "language").glob("lm-*"))
    table = pd.read_csv(tmp_path / "language" / "benchmark.csv")
    assert set(table.method) == {"bif"}


def test_a_diverged_sampler_fails_the_run_and_keeps_old_results(
    hydra_compose, mlflow_uri, search_runs, tmp_path, monkeypatch
) -> None:
    """No swallowed sampler failure: the run raises, MLflow says FAILED, results/ is untouched."""
    from bifrepro.sampling import SamplerDivergedError

    def diverged(*args, **kwargs):  # noqa: ANN002, ANN003
        raise SamplerDivergedError("SGLD loss exploded (simulated)")

    monkeypatch.setattr(lang, "sample_token_traces", diverged)
    out = tmp_path / "language"
    out.mkdir()
    (out / "benchmark.csv").write_text("the previous results\n")
    cfg = hydra_compose([*TINY, f"results_dir={tmp_path}", f"tracking.uri={mlflow_uri}"])
    with pytest.raises(SamplerDivergedError):
        lang.run(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["benchmark.csv"]
    assert (out / "benchmark.csv").read_text() == "the previous results\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".language")]
    assert search_runs("language").iloc[0]["status"] == "FAILED"


def test_config_errors_name_the_key(hydra_compose, tmp_path) -> None:
    base = [f"results_dir={tmp_path}", "tracking.enabled=false"]
    with pytest.raises(ConfigError, match="experiment.num_observed"):
        lang.run(hydra_compose([*TINY, *base, "experiment.num_observed=1"]))
    with pytest.raises(ConfigError, match="experiment.methods"):
        lang.run(hydra_compose([*TINY, *base, "experiment.methods=[ekfac]"]))
    with pytest.raises(ConfigError, match="model.arch"):
        lang.run(hydra_compose([*TINY, *base, "model.arch=gpt2"]))
    with pytest.raises(ConfigError, match="language schema"):
        lang.run(hydra_compose(base))  # the default experiment is the toy
    with pytest.raises(ConfigError, match="experiment.seq_len"):
        lang.run(hydra_compose([*TINY, *base, "experiment.seq_len=80"]))  # > 64 positions
    with pytest.raises(ConfigError, match="experiment.chain_groups"):
        groups = [o for o in TINY if not o.startswith("experiment.chain_groups")]
        lang.run(hydra_compose([*groups, *base, "experiment.chain_groups=3"]))  # 2 chains
    with pytest.raises(ConfigError, match="experiment.frozen"):
        lang.run(hydra_compose([*TINY, *base, "experiment.frozen=[no_such_layer]"]))


def test_calibration_auto_calibrates_the_sampler_and_records_health(
    hydra_compose, tmp_path
) -> None:
    """`calibration=auto`: the traces use the calibrated step; evidence and health are recorded."""
    cfg = hydra_compose(
        [*TINY, f"results_dir={tmp_path}", "tracking.enabled=false", "experiment.methods=[bif]",
         "calibration=auto", *FAST_CALIBRATION]
    )  # fmt: skip
    metrics = lang.run(cfg)
    out = tmp_path / "language"
    chosen = assert_calibration_recorded(metrics, out / "calibration", configured_step=1e-4)
    # the traces were sampled with what the calibration returned, and the results say so
    saved = json.loads((out / "metrics.json").read_text())
    used = saved["config"]["sampler"]
    assert used["step_size"] == pytest.approx(chosen) and used["preconditioner"] == "rmsprop"
    assert used["nbeta"] == 100.0 and metrics["sampler/step_size"] == pytest.approx(chosen)
    assert saved["calibration_summary"].startswith("calibration ")
    (traces_dir,) = (tmp_path / "cache" / "language").glob("traces-*")
    manifest = json.loads((traces_dir / "manifest.json").read_text())
    assert manifest["config"]["step_size"] == pytest.approx(chosen)
    # full health rules next to the basic diagnostics; `healthy` needs both
    for rule in ("trend", "rhat", "ess", "distance", "loss", "trend_share", "precision"):
        assert f"health/{rule}_ok" in metrics, rule
    assert 0.0 <= metrics["health/resolved_share"] <= 1.0  # judged per query token
    assert metrics["chains_healthy"] == float(
        bool(metrics["chain/healthy"]) and bool(metrics["health/healthy"])
    )
    assert saved["health_summary"].startswith("chains ")
    assert ("NOT healthy" in saved["note"]) == (not metrics["chains_healthy"])
