"""The paper presets resolve to the reference recipes' values, and the mechanisms they rely on do what the
presets' headers say (lr tail, decoupled weight decay, expert-update budget, exact final test)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import tiny_char_args
from toolkit.config.compose import compose_train_config, config_dir
from toolkit.config.preset_names import current_name
from toolkit.registry import LR_SCHEDULERS, OPTIMIZERS
from toolkit.train.run import single_process_trainer


def resolved(preset: str, *args: str):
    return compose_train_config(preset, ["data=/nonexistent", *args])


def test_all_attention_wt103_is_the_reference_recipe():
    cfg = resolved("all_attention_wt103")
    assert (cfg.optimizer.name, cfg.optimizer.lr, list(cfg.optimizer.betas)) == ("adam", 2.5e-4, [0.9, 0.999])
    assert cfg.clip_norm == 1.0 and cfg.lr_scheduler.warmup_updates == 8000
    assert cfg.aux_weights.span_l1.value == 5e-7
    assert (cfg.task.tokens_per_sample, cfg.model.attn_span, cfg.batch.sequences_per_update) == (256, 2048, 64)
    assert list(cfg.model.adaptive_cutoffs) == [20000, 40000, 200000] and cfg.model.adaptive_factor == 4.0
    assert cfg.model.tie_adaptive_weights and cfg.model.tie_adaptive_proj
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.persistent_memory) == (36, 512, 2048)
    assert (cfg.model.dropout, cfg.model.emb_dropout) == (0.3, 0.1)
    assert cfg.task.eval_eos is True and cfg.task.eval_protocol == "stream"
    # 800k updates, then 50k at lr / 10
    schedule = LR_SCHEDULERS.get("constant").builder
    assert cfg.max_update == 850_000
    assert [schedule(cfg.lr_scheduler, s, cfg.max_update) for s in (7999, 799_999, 800_000, 849_999)] == [
        1.0,
        1.0,
        0.1,
        0.1,
    ]
    assert schedule(cfg.lr_scheduler, 0, cfg.max_update) == pytest.approx(1 / 8000)


@pytest.mark.parametrize("preset", ["t12_text8", "t64_text8", "t12_enwik8", "t64_enwik8"])
def test_t12_t64_final_test_uses_the_papers_protocol(preset):
    cfg = resolved(preset)
    assert (cfg.task.eval_protocol, cfg.task.valid_protocol, cfg.task.eval_stride) == ("exact", "fast", 128)


def test_exact_final_test_and_fast_validation(text8_small, tmp_path):
    args = tiny_char_args(
        text8_small,
        tmp_path,
        **{
            "task.eval_protocol": "exact",
            "task.valid_protocol": "fast",
            "task.eval_stride": 11,
            "task.eval_max_tokens": 120,
            "task.valid_max_tokens": 120,
        },
    )
    trainer = single_process_trainer(compose_train_config("text8_char_tiny", args[1:]), tmp_path)
    trainer.model.eval()
    valid = trainer.task.evaluate(trainer.model, "valid", trainer.device, during_training=True)
    final = trainer.task.evaluate(trainer.model, "valid", trainer.device)
    assert (valid["protocol"], valid["stride"]) == ("fast", 11)
    assert (final["protocol"], final["stride"]) == ("exact", 1)
    assert final["bpc_fast"] == valid["bpc"] and final["bpc"] != valid["bpc"]


@pytest.mark.parametrize("preset", ["transformer_iwslt14", "base_iwslt14", "mae7_iwslt14", "nobcd_mae7_iwslt14"])
def test_iwslt_weight_decay_is_decoupled(preset):
    cfg = resolved(preset)
    assert (cfg.optimizer.name, cfg.optimizer.weight_decay, cfg.optimizer.lr) == ("adamw", 1e-4, 5e-4)
    # fairseq's Adam: p <- p - lr * wd * p, then the Adam step; with a zero gradient only the decay acts
    param = torch.nn.Parameter(torch.tensor([2.0, -3.0]))
    optimizer = OPTIMIZERS.get("adamw").builder(cfg.optimizer, [param])
    assert isinstance(optimizer, torch.optim.AdamW)
    param.grad = torch.zeros(2)
    optimizer.step()
    assert torch.allclose(param.detach(), torch.tensor([2.0, -3.0]) * (1 - 5e-4 * 1e-4), rtol=0, atol=1e-9)


@pytest.mark.parametrize("preset", ["transformer_base_wmt14", "base_wmt14", "mae7_wmt14", "nobcd_mae7_wmt14"])
def test_wmt14_ends_with_the_papers_averaged_model(preset):
    cfg = resolved(preset)
    assert cfg.average_last_n == 5 and cfg.keep_interval_checkpoints >= 5 and cfg.save_interval == 1000
    assert cfg.batch.tokens_per_update == 28672 and cfg.update_freq == 1
    assert cfg.task.bleu_protocol == "tokenized_compound" and cfg.final_subset == "test"


@pytest.mark.parametrize("preset", ["mae7_iwslt14", "mae6_iwslt14", "mae7_wmt14", "mae6_wmt14"])
def test_mae_bcd_presets_count_expert_updates(preset):
    cfg = resolved(preset)
    assert cfg.phases.budget == "main_updates" and cfg.phases.unit == "epoch"
    assert [(list(p.groups), p.length) for p in cfg.phases.cycle] == [(["main"], 4), (["gate"], 1)]


GROUP = "{params: 'layers\\.0\\.', optimizer: {name: sgd, lr: 0.5}, lr_scheduler: {name: constant}}"


@pytest.mark.parametrize("budget, steps, main", [("updates", 6, 5), ("main_updates", 7, 6)])
def test_budget_counts_all_updates_or_those_of_main(text8_small, tmp_path, budget, steps, main):
    phases = (
        f"{{unit: update, cycle: [{{groups: [main], length: 3}}, {{groups: [first], length: 1}}], budget: {budget}}}"
    )
    args = tiny_char_args(
        text8_small, tmp_path, max_update=6, save_interval=0, **{"param_groups.first": GROUP, "phases": phases}
    )
    trainer = single_process_trainer(compose_train_config("text8_char_tiny", args[1:]), tmp_path)
    assert trainer.train() == 0
    assert (trainer.step, trainer.main_updates) == (steps, main)
    assert trainer.state_dict()["trainer"]["main_updates"] == main


def test_pkm_deep_baselines_differ_from_the_memory_models_only_in_depth_and_memory():
    for preset, baseline, depth in (
        ("pkm_text8", "pkm_text8_deep_baseline", 24),
        ("pkm_wt103", "pkm_wt103_deep_baseline", 32),
    ):
        memory = OmegaConf.to_container(resolved(preset), resolve=True)
        deep = OmegaConf.to_container(resolved(baseline), resolve=True)
        assert deep["model"]["n_layers"] == depth == 2 * memory["model"]["n_layers"]
        assert deep["model"]["memory"]["layers"] == [] and memory["model"]["memory"]["layers"] != []
        for cfg in (memory, deep):
            cfg["model"].pop("n_layers"), cfg["model"].pop("memory"), cfg.pop("param_groups"), cfg.pop("run_dir")
        assert memory == deep
        header = (config_dir() / "config" / f"{current_name(preset)}.yaml").read_text()
        assert "An adaptation, not the paper's experiment" in header and current_name(baseline) in header
