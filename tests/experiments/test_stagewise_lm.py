"""The stagewise LM experiment: in-process run, checkpoint sweep + merge, resume, real-model path."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import bifrepro.dynamics.lm_checkpoint_job as checkpoint_job
import bifrepro.dynamics.lm_checkpoints as lm_checkpoints
import bifrepro.dynamics.sweep_calibration as sweep_calibration
import experiments.stagewise_lm as sw
from bifrepro.config import ConfigError
from bifrepro.sampling import SamplerDivergedError, SGLDConfig
from bifrepro.tracking import PARENT_RUN_FILE


@pytest.fixture(autouse=True)
def _restore_threads():
    """The runs set torch's thread count (experiment.num_threads=1, fastest for tiny models on a
    busy machine); put it back after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


TINY = [
    "experiment=stagewise_lm",
    "data.num_documents=60",
    "data.num_queries=16",
    "data.max_natural_sentences=8",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "model.max_position_embeddings=32",
    "model.vocab_size=300",
    "model.train.steps=20",
    "model.train.batch_size=8",
    "model.train.warmup_steps=4",
    "model.train.checkpoint_every=5",
    "experiment.seq_len=20",
    "experiment.num_observed=6",
    "experiment.num_query=3",
    "experiment.num_checkpoints=3",
    "experiment.first_checkpoint=4",
    "experiment.induction_sequences=4",
    "experiment.induction_half_len=4",
    "experiment.induction_vocab=20",
    "experiment.pair_query_seqs=2",
    "experiment.pair_train_seqs=2",
    "experiment.num_pairs=2",
    "sampler.num_chains=2",
    "sampler.num_draws=6",
    "sampler.burn_in=2",
    "sampler.batch_size=8",
    "sampler.eval_batch_size=16",
]
STEPS = [4, 9, 20]
CONF = Path(__file__).resolve().parents[2] / "conf"  # log_spaced_steps(20, 3, 4)
#: calibration=auto kept small (3 grid points, no refinement, short pilots)
CALIBRATION = [
    "calibration=auto",
    "calibration.grid_points=3",
    "calibration.refine_points=0",
    "calibration.min_pilot_draws=12",
    "calibration.estimate_curvature=false",
]


def _cfg(hydra_compose, tmp_path: Path, *extra: str, tracking: str | None = None):
    track = [f"tracking.uri={tracking}"] if tracking else ["tracking.enabled=false"]
    return hydra_compose([*TINY, f"results_dir={tmp_path}", *track, *extra])


@pytest.fixture(scope="module")
def all_run(tmp_path_factory, _mlflow_template_db):
    """One tiny mode=all run (train, every checkpoint, merge) shared by the tests below."""
    import shutil

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    root = tmp_path_factory.mktemp("stagewise_all")
    db = root / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(_mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"results_dir={root}", f"tracking.uri={uri}"])
    GlobalHydra.instance().clear()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = sw.run(cfg)
    finally:
        torch.set_num_threads(n)
    return root, uri, metrics


def test_all_in_process_writes_figures_tables_and_mlflow(all_run) -> None:
    tmp_path, mlflow_uri, metrics = all_run
    out = tmp_path / "stagewise_lm"
    for name in (*sw.FIGURES, *sw.TABLES):
        if name != "fig3_token_pairs.png" or metrics["token_pairs_sign_flip_fraction"] > 0:
            assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp"))
    ck = pd.read_csv(out / "checkpoints.csv")
    assert ck.step.tolist() == STEPS and ck.label.tolist() == [f"step{s}" for s in STEPS]
    assert np.isfinite(ck.induction_score).all() and np.isfinite(ck.llc).all()
    # chain health: the basic diagnostics AND every health rule, with the rules' one-line summary
    assert (ck.chains_healthy == (ck.diagnostics_healthy & ck.health_rules_healthy)).all()
    assert ck.health_summary.str.startswith("chains ").all()
    assert (ck.step_size == 1e-4).all()
    assert metrics["chains_healthy_fraction"] == pytest.approx(ck.chains_healthy.mean())
    # token-level precision is recorded per checkpoint (informational, not in the verdict)
    assert ck.token_topk_resolved.between(0, 1).all() and (ck.token_draws_for_target > 0).all()
    # the model learns: the loss at the last checkpoint is below the first
    assert ck.loss_train_observed.iloc[-1] < ck.loss_train_observed.iloc[0]
    cls = pd.read_csv(out / "class_influence.csv")
    assert len(cls) == 3 * 5 * 5
    assert set(cls.query_class) == {"delimiter", "word_part", "induction", "number", "other"}
    corr = cls.correlation.dropna()
    assert len(corr) > 0 and (corr.abs() <= 1).all()
    changes = pd.read_csv(out / "class_changes.csv")
    assert len(changes) == 25 and set(changes.peak_step) <= set(STEPS)
    loss = pd.read_csv(out / "training_loss.csv")
    assert loss.step.iloc[0] == 1 and loss.step.iloc[-1] == 20
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["induction/score_last"] == pytest.approx(
        ck.induction_score.iloc[-1], rel=1e-4
    )
    assert saved["checkpoints"] == {f"step{s}": s for s in STEPS}
    assert sum(saved["token_counts"]["query"].values()) > 0
    # snapshots were written with save_pretrained at every checkpoint step
    work = Path(saved["work_dir"])
    snaps = json.loads((work / "training.json").read_text())["snapshots"]
    assert all((Path(p) / "config.json").exists() for p in snaps.values())

    import mlflow

    from bifrepro.tracking import get_client

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_uri)
    try:
        runs = mlflow.search_runs(experiment_names=["stagewise_lm"])
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "FINISHED" and row["tags.mode"] == "all"
    assert row["params.experiment.num_checkpoints"] == "3"
    assert row["metrics.induction/score_last"] == pytest.approx(metrics["induction/score_last"])
    client = get_client(mlflow_uri)
    figs = {a.path for a in client.list_artifacts(row["run_id"], "figures")}
    assert {"figures/fig1_stages.png", "figures/fig2_class_influence.png"} <= figs
    hist = client.get_metric_history(row["run_id"], "induction/score")
    assert sorted(m.step for m in hist) == STEPS
    for key in ("health/healthy", "health/ess_projected", "health/distance_ratio"):
        assert sorted(m.step for m in client.get_metric_history(row["run_id"], key)) == STEPS


def _main(monkeypatch, argv: list[str]) -> None:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["stagewise_lm", *argv])
    try:
        sw.main()
    finally:
        GlobalHydra.instance().clear()


def test_checkpoint_sweep_and_merge_equal_the_in_process_run(
    all_run, hydra_compose, monkeypatch, mlflow_uri, search_runs, tmp_path
) -> None:
    """train -> Hydra multirun over checkpoints -> merge gives the numbers of mode=all."""
    common = [*TINY, f"results_dir={tmp_path}", f"tracking.uri={mlflow_uri}"]
    merge_cfg = hydra_compose([*common, "experiment.mode=merge"])  # composed before the multirun
    sw.run(hydra_compose([*common, "experiment.mode=train"]))
    with pytest.raises(RuntimeError, match="no results for checkpoints"):
        sw.run(merge_cfg)
    sweep_dir = tmp_path / "sweep"
    _main(
        monkeypatch,
        ["-m", *common, "experiment.mode=checkpoint", "experiment.checkpoint_index=0,1,2",
         f"hydra.sweep.dir={sweep_dir}"],
    )  # fmt: skip
    parent_id = json.loads((sweep_dir / PARENT_RUN_FILE).read_text())["run_id"]
    runs = search_runs("stagewise_lm")
    children = runs[runs["tags.mlflow.parentRunId"] == parent_id]
    assert len(children) == 3 and set(children["status"]) == {"FINISHED"}
    assert set(children["tags.checkpoint"]) == {f"step{s}" for s in STEPS}
    merged = sw.run(merge_cfg)
    swept = pd.read_csv(tmp_path / "stagewise_lm" / "class_influence.csv")

    # the same settings in another results folder, all in one process
    ref_dir, _, ref = all_run
    direct = pd.read_csv(ref_dir / "stagewise_lm" / "class_influence.csv")
    pd.testing.assert_frame_equal(swept, direct)
    for key in ("induction/score_last", "llc_last", "class_sign_flip_fraction"):
        assert merged[key] == pytest.approx(ref[key], nan_ok=True)


def test_killed_training_and_checkpoint_jobs_resume(hydra_compose, monkeypatch, tmp_path) -> None:
    import bifrepro.training.lm as lm

    real_save = lm.atomic_torch_save

    def killed_after_step_10(obj, path):
        real_save(obj, path)
        if obj.get("step") == 10:
            raise KeyboardInterrupt("simulated kill after the step-10 training state")

    monkeypatch.setattr(lm, "atomic_torch_save", killed_after_step_10)
    with pytest.raises(KeyboardInterrupt):
        sw.run(_cfg(hydra_compose, tmp_path, "experiment.mode=train"))
    monkeypatch.setattr(lm, "atomic_torch_save", real_save)
    sw.run(_cfg(hydra_compose, tmp_path, "experiment.mode=train"))
    summary = json.loads(next((tmp_path / "cache").rglob("train_summary.json")).read_text())
    assert summary["resumed_from"] == 10
    # an uninterrupted training elsewhere ends at the same weights
    sw.run(_cfg(hydra_compose, tmp_path / "fresh", "experiment.mode=train"))
    resumed = json.loads(next((tmp_path / "cache").rglob("training.json")).read_text())
    fresh = json.loads(next((tmp_path / "fresh").rglob("training.json")).read_text())
    assert resumed["loss_curve"] == pytest.approx(fresh["loss_curve"], rel=1e-5)
    from safetensors.torch import load_file

    a = load_file(Path(resumed["model_dir"]) / "model.safetensors")
    b = load_file(Path(fresh["model_dir"]) / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    # a checkpoint job: computed once; a re-run reuses its result file without sampling
    job = ["experiment.mode=checkpoint", "experiment.checkpoint=step9"]
    first = sw.run(_cfg(hydra_compose, tmp_path, *job))
    result = next((tmp_path / "cache").rglob("step9/result.pt"))

    def no_sampling(*args, **kwargs):
        raise AssertionError("a finished checkpoint must not be sampled again")

    monkeypatch.setattr(checkpoint_job, "sample_token_traces", no_sampling)
    again = sw.run(_cfg(hydra_compose, tmp_path, *job))
    assert again == pytest.approx(first, nan_ok=True)
    assert {"health/healthy", "health/ess_projected", "health/trend_share_ok"} <= set(first)
    # a result written before the health rules existed gets them from its traces, unsampled
    old = torch.load(result, weights_only=False)
    saved_precision = old["token_precision"]
    assert (
        0.0 <= saved_precision["resolved_share"] <= 1.0 and "per token" in saved_precision["detail"]
    )
    for key in ("health", "health_summary", "health_failed", "health_healthy", "token_precision"):
        del old[key]
    torch.save(old, result)
    upgraded = sw.run(_cfg(hydra_compose, tmp_path, *job))
    assert upgraded == pytest.approx(first, nan_ok=True)
    upgraded_result = torch.load(result, weights_only=False)
    assert "health_summary" in upgraded_result
    assert upgraded_result["token_precision"]["resolved_share"] == saved_precision["resolved_share"]
    # without its result file, the job is rebuilt from the complete on-disk traces
    result.unlink()
    monkeypatch.undo()
    rebuilt = sw.run(_cfg(hydra_compose, tmp_path, *job))
    for key in ("induction/score", "llc", "class_correlation/other_to_other"):
        assert rebuilt[key] == pytest.approx(first[key], nan_ok=True)


def test_calibration_auto_runs_once_and_every_checkpoint_uses_it(
    hydra_compose, monkeypatch, tmp_path
) -> None:
    """calibration=auto: calibrated once at the last checkpoint, shared by the checkpoint jobs
    (the first computes it, the others read it), reported by the merge."""
    sw.run(_cfg(hydra_compose, tmp_path, "experiment.mode=train"))  # no calibration here
    calls = []
    real = sweep_calibration.resolve_sampler

    def counted(*args, **kwargs):
        calls.append(args[2])  # the model it calibrates at
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_calibration, "resolve_sampler", counted)

    def job(label: str) -> dict[str, float]:
        return sw.run(
            _cfg(hydra_compose, tmp_path, *CALIBRATION, "experiment.mode=checkpoint",
                 f"experiment.checkpoint={label}")
        )  # fmt: skip

    first = job("step4")
    assert len(calls) == 1
    saved = list((tmp_path / "cache").rglob("calibration/cal-*/sampler.json"))
    assert len(saved) == 1
    folder = saved[0].parent
    assert (folder / "calibration.csv").exists() and (folder / "report.pt").exists()
    info = json.loads(saved[0].read_text())
    assert info["checkpoint"] == "step20" and info["original"]["step_size"] == 1e-4
    chosen = info["sampler"]["step_size"]
    mtime = saved[0].stat().st_mtime_ns
    others = [job("step9"), job("step20")]
    assert len(calls) == 1 and saved[0].stat().st_mtime_ns == mtime  # read, not recomputed
    for m in (first, *others):
        assert m["sampler/step_size"] == pytest.approx(chosen)
        assert {"health/healthy", "health/ess_projected", "health/distance_ratio"} <= set(m)
        assert m["chains_healthy"] <= m["health/healthy"]
    # checkpoints are keyed by the sampler actually used
    results = sorted((tmp_path / "cache").rglob("result.pt"))
    assert len(results) == 3
    configured = chosen == pytest.approx(1e-4)
    assert {p.parent.parent.name == "checkpoints" for p in results} == {configured}

    merged = sw.run(_cfg(hydra_compose, tmp_path, *CALIBRATION, "experiment.mode=merge"))
    assert len(calls) == 1
    assert merged["calibration/step_size"] == pytest.approx(chosen)
    out = tmp_path / "stagewise_lm"
    table = pd.read_csv(out / "calibration" / "calibration.csv")
    assert len(table) == merged["calibration/num_candidates"] >= 1
    if merged["calibration/healthy"]:  # a healthy candidate was chosen ...
        assert chosen in set(table["step_size"])
    else:  # ... or, none healthy in this tiny setting, the configured step is kept
        assert chosen == pytest.approx(1e-4)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["calibration"]["step_size"] == pytest.approx(chosen)
    assert summary["config"]["sampler_used"]["step_size"] == pytest.approx(chosen)
    assert "calibrat" in summary["note"]  # the figures' note names the calibrated step
    ck = pd.read_csv(out / "checkpoints.csv")
    assert ck.step.tolist() == STEPS and np.allclose(ck.step_size, chosen)
    assert ck.chains_healthy.mean() == pytest.approx(merged["chains_healthy_fraction"])
    # a report pickle that cannot be read back: the merge falls back to the saved files
    (folder / "report.pt").write_bytes(b"not a pickle")
    shutil.rmtree(out / "calibration")
    fallback = sw.run(_cfg(hydra_compose, tmp_path, *CALIBRATION, "experiment.mode=merge"))
    assert fallback["calibration/step_size"] == pytest.approx(chosen)
    assert (out / "calibration" / "calibration.csv").read_bytes() == (
        folder / "calibration.csv"
    ).read_bytes()

    # the same settings computed again give the same calibration (seeded)
    folder.rename(folder.with_name("previous"))
    again = sw.run(_cfg(hydra_compose, tmp_path, *CALIBRATION, "experiment.mode=train"))
    assert len(calls) == 2 and again["calibration/step_size"] == pytest.approx(chosen)
    assert json.loads(saved[0].read_text())["sampler"] == info["sampler"]

    # a calibration choosing another step size: its checkpoints get their own folder
    def other_step(*args, **kwargs):
        sampler, report = real(*args, **kwargs)
        report.config = sampler.replace(step_size=sampler.step_size / 2)
        return report.config, report

    monkeypatch.setattr(sweep_calibration, "resolve_sampler", other_step)
    forced = sw.run(
        _cfg(hydra_compose, tmp_path, *CALIBRATION, "calibration.seed=1",
             "experiment.mode=checkpoint", "experiment.checkpoint=step20")
    )  # fmt: skip
    assert forced["sampler/step_size"] == pytest.approx(chosen / 2)
    fp = SGLDConfig.from_mapping(info["sampler"]).replace(step_size=chosen / 2).fingerprint()
    roots = [p.parent.parent.name for p in (tmp_path / "cache").rglob("step20/result.pt")]
    assert len(roots) == 2 and f"checkpoints-{fp}" in roots  # the first result is untouched


def _local_run(tmp_path: Path) -> Path:
    """A 'training run' of a GPT-NeoX model saved as step1/ and step2/ sub-folders."""
    from bifrepro.data.text import TextCorpusConfig, build_corpus
    from bifrepro.data.tokenizer import train_bpe_tokenizer
    from bifrepro.models.lm import CausalLMConfig, build_small_lm

    corpus = build_corpus(
        TextCorpusConfig(num_documents=60, num_queries=16, max_natural_sentences=8)
    )
    tok = train_bpe_tokenizer(corpus.all_texts() + [e.text.text for e in corpus.examples], 300)
    arch = CausalLMConfig(arch="gpt_neox", hidden_size=16, num_layers=1, num_heads=2,
                          intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    root = tmp_path / "run"
    for seed, name in ((0, "step1"), (1, "step2")):
        m = build_small_lm(
            arch, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, seed
        )
        m.save_pretrained(root / name)
    tok.save_pretrained(root)
    return root


def test_checkpoints_of_a_model_trained_elsewhere(hydra_compose, monkeypatch, tmp_path) -> None:
    """Pythia-style: labelled checkpoints through from_pretrained (local sub-folders here)."""
    root = _local_run(tmp_path)
    base = [
        f"model.name_or_path={root}", "model.name=local_neox",
        "experiment.checkpoints=[step2,step1]", "experiment.checkpoint_subfolders=true",
        "experiment.mode=checkpoint",
    ]  # fmt: skip
    for label in ("step1", "step2"):
        m = sw.run(_cfg(hydra_compose, tmp_path, *base, f"experiment.checkpoint={label}"))
        assert np.isfinite(m["induction/score"])
    results = sorted((tmp_path / "cache").rglob("result.pt"))
    assert [p.parent.name for p in results] == ["step1", "step2"]
    r1, r2 = (torch.load(p, weights_only=False) for p in results)
    assert (r1["step"], r2["step"]) == (1, 2)
    # different weights -> different losses: each job really loaded its own checkpoint
    assert r1["loss_query"] != pytest.approx(r2["loss_query"])

    # without checkpoint_subfolders the labels are Hugging Face revisions of name_or_path
    calls = []
    real = lm_checkpoints.load_causal_lm

    def fake_load(name_or_path, revision=None, **kw):
        calls.append((str(name_or_path), revision))
        return real(
            Path(name_or_path) / revision,
            **{k: v for k, v in kw.items() if k != "local_files_only"},
        )

    monkeypatch.setattr(lm_checkpoints, "load_causal_lm", fake_load)
    pythia = [b for b in base if "subfolders" not in b] + ["experiment.checkpoint=step2"]
    sw.run(_cfg(hydra_compose, tmp_path / "rev", *pythia))
    assert calls == [(str(root), "step2")]


def test_validation_and_pythia_config(hydra_compose, tmp_path) -> None:
    with pytest.raises(ConfigError, match="experiment.mode"):
        sw.run(_cfg(hydra_compose, tmp_path, "experiment.mode=sweep"))
    with pytest.raises(ConfigError, match="checkpoint"):
        sw.run(_cfg(hydra_compose, tmp_path, "experiment.mode=checkpoint"))
    with pytest.raises(ConfigError, match="only apply to mode=checkpoint"):
        sw.run(_cfg(hydra_compose, tmp_path, "experiment.checkpoint=step4"))
    with pytest.raises(ConfigError, match="checkpoint_index=7"):
        sw.run(
            _cfg(
                hydra_compose,
                tmp_path,
                "experiment.mode=checkpoint",
                "experiment.checkpoint_index=7",
            )
        )
    with pytest.raises(ConfigError, match="experiment.checkpoints is required"):
        sw.run(_cfg(hydra_compose, tmp_path, "model.name_or_path=/nonexistent"))
    cfg = hydra_compose(["experiment=stagewise_lm_pythia", f"results_dir={tmp_path}"])
    labels = list(cfg.experiment.checkpoints)
    steps = [sw.checkpoint_step(lab) for lab in labels]
    assert steps == sorted(steps) and labels[-1] == "step143000"
    assert cfg.model.name_or_path.startswith("EleutherAI/pythia")
    assert cfg.sampler.preconditioner == "rmsprop"


def test_a_diverged_sampler_fails_the_run_and_keeps_the_old_results(
    all_run, hydra_compose, monkeypatch, mlflow_uri, search_runs, tmp_path
) -> None:
    """A diverged chain is never swallowed: the run fails (MLflow FAILED), results stay as they were."""
    previous, _, _ = all_run
    out = tmp_path / "out"
    shutil.copytree(previous / "stagewise_lm", out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def diverges(*args, **kwargs):
        raise SamplerDivergedError("simulated divergence")

    monkeypatch.setattr(checkpoint_job, "sample_token_traces", diverges)
    cfg = _cfg(hydra_compose, tmp_path, f"experiment.output_dir={out}", tracking=mlflow_uri)
    with pytest.raises(SamplerDivergedError):
        sw.run(cfg)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not list((tmp_path / "cache").rglob("result.pt"))
    assert list(search_runs("stagewise_lm")["status"]) == ["FAILED"]
