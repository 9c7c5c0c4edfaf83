"""Settings of the stagewise LM experiment: field checks, checkpoint grid, job selection, work key."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from bifrepro.config import ConfigError, all_schemas
from bifrepro.config.stagewise_lm import (
    StagewiseLMConfig,
    checkpoint_grid,
    checkpoint_step,
    selected_label,
    work_dir_key,
)
from bifrepro.data.text import TextCorpusConfig
from bifrepro.models.lm import CausalLMConfig
from bifrepro.sampling import SGLDConfig


def test_fields_are_checked_and_the_schema_is_registered() -> None:
    with pytest.raises(ValueError, match="StagewiseLMConfig.mode='sweep' is invalid"):
        StagewiseLMConfig(mode="sweep")
    with pytest.raises(ValueError, match="token_priority"):
        StagewiseLMConfig(token_priority=["other"])
    with pytest.raises(ValueError, match="induction_vocab"):
        StagewiseLMConfig(induction_vocab=4, induction_half_len=8)
    with pytest.raises(ValueError, match="checkpoints"):
        StagewiseLMConfig(checkpoints=["step1", "step1"])
    assert ("experiment_schema", "stagewise_lm", StagewiseLMConfig) in all_schemas()


def test_checkpoint_step_reads_the_last_integer() -> None:
    assert checkpoint_step("step1000") == 1000 and checkpoint_step("run2/step30") == 30
    with pytest.raises(ConfigError, match="training step"):
        checkpoint_step("main")


def test_checkpoint_grid() -> None:
    model = CausalLMConfig()
    model.train.steps = 20
    labels, steps = checkpoint_grid(StagewiseLMConfig(num_checkpoints=3, first_checkpoint=4), model)
    assert steps == [4, 9, 20] and labels == ["step4", "step9", "step20"]
    explicit = StagewiseLMConfig(checkpoints=["step9", "step2"])
    assert checkpoint_grid(explicit, model) == (["step2", "step9"], [2, 9])
    with pytest.raises(ConfigError, match="trains for 20 steps"):
        checkpoint_grid(StagewiseLMConfig(checkpoints=["step30"]), model)
    with pytest.raises(ConfigError, match="first_checkpoint"):
        checkpoint_grid(StagewiseLMConfig(first_checkpoint=40), model)
    elsewhere = CausalLMConfig(name_or_path="EleutherAI/pythia-70m")
    with pytest.raises(ConfigError, match="experiment.checkpoints is required"):
        checkpoint_grid(StagewiseLMConfig(), elsewhere)


def test_selected_label() -> None:
    labels = ["step4", "step9"]
    assert (
        selected_label(StagewiseLMConfig(mode="checkpoint", checkpoint="step9"), labels) == "step9"
    )
    assert (
        selected_label(StagewiseLMConfig(mode="checkpoint", checkpoint_index=0), labels) == "step4"
    )
    with pytest.raises(ConfigError, match="not one of"):
        selected_label(StagewiseLMConfig(mode="checkpoint", checkpoint="step5"), labels)
    with pytest.raises(ConfigError, match="checkpoint_index=2"):
        selected_label(StagewiseLMConfig(mode="checkpoint", checkpoint_index=2), labels)


def test_work_dir_key_follows_the_settings_that_change_numbers() -> None:
    def key(sampler: SGLDConfig | None = None, **changes) -> str:
        exp = dataclasses.replace(StagewiseLMConfig(), **changes)
        vc = SimpleNamespace(
            experiment=exp, data=TextCorpusConfig(), model=CausalLMConfig(), seed=0
        )
        return work_dir_key(vc, sampler or SGLDConfig())

    base = key()
    assert key(mode="merge", num_pairs=9, device="cuda", overwrite=True) == base
    assert key(seq_len=32) != base
    assert key(SGLDConfig(step_size=1e-3)) != base
