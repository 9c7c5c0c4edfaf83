"""Schemas of the language experiment: registered, composed, validated."""

from __future__ import annotations

import pytest

import bifrepro.config as config
from bifrepro.attribution.configs import EKFACConfig, GradSimConfig
from bifrepro.config.language import LANGUAGE_METHODS, SCHEMAS, LanguageConfig
from bifrepro.data.text import TextCorpusConfig
from bifrepro.models.lm import CausalLMConfig


def test_schemas_are_registered() -> None:
    assert {(g, n): s for g, n, s in SCHEMAS} == {
        ("data", "text"): TextCorpusConfig,
        ("model", "causal_lm"): CausalLMConfig,
        ("experiment_schema", "language"): LanguageConfig,
    }
    registered = {(g, n): s for g, n, s in config.all_schemas()}
    for group, name, schema in SCHEMAS:
        assert registered[(group, name)] is schema


def test_language_config_composes_into_its_schemas(hydra_compose, tmp_path) -> None:
    config.register_configs()
    cfg = hydra_compose(["experiment=language", f"results_dir={tmp_path}"])
    vc = config.validate_config(cfg, groups=("data", "model", "experiment", "methods"))
    assert isinstance(vc.experiment, LanguageConfig)
    assert isinstance(vc.data, TextCorpusConfig) and isinstance(vc.model, CausalLMConfig)
    methods = config.method_settings(("ekfac", "gradsim"), vc.methods)
    assert isinstance(methods["ekfac"], EKFACConfig) and isinstance(
        methods["gradsim"], GradSimConfig
    )
    assert methods["ekfac"].train_batch_size == 32  # the experiment's value over the method's 64
    assert vc.experiment.methods == list(LANGUAGE_METHODS)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seq_len": 3}, "seq_len"),
        ({"num_observed": 1}, "num_observed"),
        ({"template_fraction": 1.5}, "template_fraction"),
        ({"normalize": "spearman"}, "normalize"),
        ({"ks": []}, "ks"),
        ({"methods": ["ekfac"]}, "methods"),
        ({"methods": ["bif", "trak"]}, "methods"),
        ({"html_rows": 0}, "html_rows"),
    ],
)
def test_range_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"LanguageConfig.{field}="):
        LanguageConfig(**kwargs)


def test_method_settings_are_overridden_under_methods(hydra_compose, tmp_path) -> None:
    """Every experiment composes methods the same way: the ``methods.<name>`` node."""
    cfg = hydra_compose(
        ["experiment=language", f"results_dir={tmp_path}", "methods.ekfac.train_batch_size=8"]
    )
    vc = config.validate_config(cfg, groups=("methods",))
    assert config.method_settings(["ekfac"], vc.methods)["ekfac"].train_batch_size == 8
