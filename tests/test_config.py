"""Config composition of every option, validation, and bad-config errors that name the key."""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

import bifrepro.tracking  # noqa: F401 - registers ${bifrepro.sweep_id:} of the sweep folders
from bifrepro.config import (
    ConfigError,
    DeepLinearModelConfig,
    HierarchyDataConfig,
    ToyHierarchyConfig,
    TrackingConfig,
    all_schemas,
    validate_config,
)
from bifrepro.sampling import SGLDConfig
from bifrepro.validation import finite_numbers

CONF = Path(__file__).resolve().parents[1] / "conf"
REPO = CONF.parent
# groups of the harness; conf/method/ belongs to the attribution methods and is tested there
GROUPS = ("data", "model", "sampler", "tracking", "experiment")

for _mod in sorted((REPO / "experiments").glob("*.py")):  # experiments may register schemas
    if _mod.stem != "__init__":
        importlib.import_module(f"experiments.{_mod.stem}")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes_and_validates(hydra_compose, experiment: str) -> None:
    vc = validate_config(hydra_compose([f"experiment={experiment}"]))
    assert vc.results_dir.is_absolute()
    assert {"data", "model", "sampler", "tracking", "experiment"} <= set(vc.groups)


@pytest.mark.parametrize(
    "override",
    [f"{g}={o}" for g in GROUPS if g != "experiment" for o in _options(g)],
    ids=lambda s: s,
)
def test_every_option_composes_and_validates(hydra_compose, override: str) -> None:
    """Each option composes and validates with at least one experiment (a model option, say,
    need not fit the toy experiment, which sets deep-linear fields)."""
    errors = []
    for experiment in _options("experiment"):
        try:
            vc = validate_config(hydra_compose([f"experiment={experiment}", override]))
        except (ConfigCompositionException, ConfigError) as err:
            errors.append(f"experiment={experiment}: {err}")
            continue
        group, option = override.split("=")
        assert group in vc.groups
        return
    pytest.fail(f"{override} composes with no experiment:\n" + "\n".join(errors))


@pytest.mark.parametrize("launcher", _options("hydra/launcher"))
def test_every_launcher_composes(hydra_compose, launcher: str) -> None:
    cfg = hydra_compose([f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    expected = {"local_parallel": "JoblibLauncher", "slurm": "SlurmLauncher"}[launcher]
    assert target.endswith(expected)


def test_launcher_plugins_import() -> None:
    importlib.import_module("hydra_plugins.hydra_joblib_launcher.joblib_launcher")
    importlib.import_module("hydra_plugins.hydra_submitit_launcher.submitit_launcher")


def test_local_example_switches_to_slurm(hydra_compose) -> None:
    cfg = hydra_compose(["+local_example=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "cpu"


def test_defaults_are_typed(hydra_compose) -> None:
    vc = validate_config(hydra_compose())
    assert isinstance(vc.sampler, SGLDConfig)
    assert isinstance(vc.data, HierarchyDataConfig)
    assert isinstance(vc.model, DeepLinearModelConfig)
    assert isinstance(vc.tracking, TrackingConfig)
    assert isinstance(vc.experiment, ToyHierarchyConfig)
    # the toy's sampler settings override the group defaults; its seed follows the master seed
    assert vc.sampler.nbeta == 100.0 and vc.sampler.thinning == 10 and vc.sampler.batch_size == 8
    assert vc.sampler.seed == vc.seed
    assert vc.tracking.uri == f"sqlite:///{vc.results_dir}/mlflow.db"
    assert vc.tracking.uri.startswith("sqlite:////")
    assert vc.tracking.experiment_name == "toy_hierarchy"


def test_sweep_config_is_a_multirun(hydra_compose) -> None:
    cfg = hydra_compose(["experiment=toy_sweep"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert set(cfg.hydra.sweeper.params) == {"sampler.localization", "sampler.nbeta"}
    assert cfg.experiment.name == "toy_hierarchy"
    assert (
        cfg.hydra.callbacks.mlflow_sweep._target_ == "bifrepro.hydra_callbacks.MLflowSweepCallback"
    )


def test_results_dir_from_env_and_relative_paths(hydra_compose, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("BIFREPRO_RESULTS", str(tmp_path / "elsewhere"))
    assert validate_config(hydra_compose()).results_dir == tmp_path / "elsewhere"
    monkeypatch.delenv("BIFREPRO_RESULTS")
    monkeypatch.chdir(tmp_path)
    vc = validate_config(hydra_compose(["results_dir=${bifrepro.abspath:out}"]))
    assert vc.results_dir == tmp_path / "out"
    assert vc.results_dir.is_absolute() and os.fspath(vc.results_dir) in vc.tracking.uri


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("sampler.foo=1", "sampler.foo"),  # unknown key in a structured group
        ("foo=1", "foo"),  # unknown top-level key
        ("sampler.num_draws=abc", "sampler.num_draws"),  # wrong type
        ("experiment.steps=many", "experiment.steps"),
        ("data.depth=1.5", "data.depth"),
        ("tracking.enabled=maybe", "tracking.enabled"),
    ],
)
def test_compose_time_errors_name_the_key(hydra_compose, override: str, key: str) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        hydra_compose([override])
    text = f"{info.value} {info.value.__cause__}"
    assert key in text


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("sampler.step_size=-1", "sampler.step_size"),
        ("sampler.preconditioner=adam", "sampler.preconditioner"),
        ("sampler.num_chains=0", "sampler.num_chains"),
        ("sampler.rmsprop_eps=inf", "sampler.rmsprop_eps"),
        ("sampler.localization=nan", "sampler.localization"),
        ("experiment.lr=nan", "experiment.lr"),
        ("experiment.normalize=rank", "experiment.normalize"),
        ("experiment.num_checkpoints=1", "experiment.num_checkpoints"),
        ("experiment.first_checkpoint=5000", "experiment.first_checkpoint"),
        ("experiment.lr=0", "experiment.lr"),
        ("data.depth=0", "data.depth"),
        ("data.branching=1", "data.branching"),
        ("model.init_scale=-0.1", "model.init_scale"),
        ("tracking.uri=sqlite:///relative.db", "tracking.uri"),
        ("seed=-3", "seed"),
        ("results_dir=relative/path", "results_dir"),
    ],
)
def test_range_errors_name_the_key(hydra_compose, override: str, key: str) -> None:
    cfg = hydra_compose([override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_toy_run_fails_before_compute(hydra_compose, monkeypatch, tmp_path) -> None:
    """Bad values stop run(cfg) before training or sampling starts."""
    import experiments.toy_hierarchy as toy

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("compute started")

    monkeypatch.setattr(toy, "run_toy_protocol", boom)  # training, leave-one-out and BIF
    monkeypatch.setattr(toy, "DeepLinearNetwork", boom)
    base = [f"results_dir={tmp_path}", "tracking.enabled=false"]
    for override, key in [
        ("sampler.step_size=-1", "sampler.step_size"),
        ("experiment.focus_item=unicorn", "experiment.focus_item"),
        ("experiment.focus_targets=[dog]", "experiment.focus_targets"),
        ("experiment.device=cuda:7", "experiment.device"),
    ]:
        if override.startswith("experiment.device") and __import__("torch").cuda.is_available():
            continue
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            toy.run(hydra_compose([*base, override]))
    assert not (tmp_path / "mlflow.db").exists()


def _float_fields() -> list:
    """(schema, field) of every float field of every registered schema and nested dataclass."""
    found, seen = [], set()

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.add(cls)
        floats = [f.name for f in dataclasses.fields(cls) if "float" in str(f.type)]
        try:
            base = cls()
        except (TypeError, ValueError):  # needs a value (TrackingConfig.uri): fine without floats
            assert not floats, f"{cls.__name__} has float fields {floats} but no valid default"
            return
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(getattr(base, f.name)):
                walk(type(getattr(base, f.name)))
        found.extend(pytest.param(cls, n, id=f"{cls.__name__}.{n}") for n in floats)

    for _, _, schema in all_schemas():
        walk(schema)
    return found


@pytest.mark.parametrize(("schema", "name"), _float_fields())
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_every_float_setting_refuses_non_finite_values(schema: type, name: str, value) -> None:  # noqa: ANN001
    """``sampler.rmsprop_eps=inf`` used to be accepted; every numeric field must be finite."""
    base = schema()
    bad = [value] if isinstance(getattr(base, name), list | tuple) else value
    with pytest.raises(ValueError, match=rf"\b{name}="):
        dataclasses.replace(base, **{name: bad})


def test_finite_numbers_checks_floats_and_float_lists() -> None:
    @dataclasses.dataclass
    class Settings:
        rate: float = 0.5
        grid: list[float] = dataclasses.field(default_factory=lambda: [1.0, 2.0])
        count: int = 3
        label: str | None = None

    finite_numbers(Settings())
    with pytest.raises(ValueError, match=r"Settings\.rate=inf is invalid: must be finite"):
        finite_numbers(Settings(rate=math.inf))
    with pytest.raises(ValueError, match=r"Settings\.grid=\[1\.0, nan\] is invalid"):
        finite_numbers(Settings(grid=[1.0, math.nan]))


def test_sweep_and_run_folders_are_unique_per_launch(hydra_compose) -> None:
    """Two multiruns started in the same second used to share one sweep folder."""
    first = hydra_compose(return_hydra_config=True).hydra
    second = hydra_compose(return_hydra_config=True).hydra
    assert first.sweep.dir != second.sweep.dir and first.run.dir != second.run.dir
    suffix = f"_{os.getpid()}-"
    assert suffix in first.sweep.dir and first.sweep.dir.startswith("multirun/toy_hierarchy/")
    assert first.run.dir.split(suffix)[1] == first.sweep.dir.split(suffix)[1]  # one id per launch
