"""Product-key memories placed by config into the char LM and the translation decoder."""

from __future__ import annotations

import torch

from toolkit.config.compose import compose_train_config
from toolkit.modules.memory_placement import MemoryAfterLayer, UsageMonitor
from toolkit.modules.pkm import ProductKeyMemory
from toolkit.train.setup import build_run, parameter_summary

SMALL = "{mem_size: 64, key_dim: 16, heads: 2, knn: 4}"


def build(preset: str, *overrides: str):
    cfg = compose_train_config(preset, ["data=/nonexistent", *overrides])
    return build_run(cfg).model


def test_replace_ffn_in_char_lm_and_report_parameters():
    model = build("text8_char_tiny", "memory.layers=[1]", f"memory.pkm={SMALL}")
    assert isinstance(model.layers[1].ffn, ProductKeyMemory) and not isinstance(model.layers[0].ffn, ProductKeyMemory)
    summary = parameter_summary(model)
    memory = sum(p.numel() for p in model.layers[1].ffn.parameters())
    assert summary["memory_parameters"] == memory
    assert summary["non_memory_parameters"] == summary["parameters"] - memory
    logits, _ = model(torch.randint(0, 27, (2, 16)))
    assert logits.shape == (2, 16, 27)


def test_after_layer_in_translation_decoder_and_usage_monitor():
    model = build("iwslt14_tiny", "memory.layers=[0]", "memory.mode=after_layer", f"memory.pkm={SMALL}",
                  "model.encoder_layers=1", "model.decoder_layers=1", "model.d_model=32", "model.ffn_dim=64")
    assert isinstance(model.decoder_layers[0], MemoryAfterLayer)
    assert not any(isinstance(m, ProductKeyMemory) for m in model.encoder_layers.modules())
    monitor = UsageMonitor(model)
    model.eval()
    src, prev = torch.randint(4, 100, (3, 7)), torch.randint(4, 100, (3, 5))
    model(src, prev)
    report = monitor.report()
    name = "pkm/decoder_layers.0.memory"
    # 3 x 5 decoder positions, 2 heads, k = 4: at least 4 distinct slots, at most all 64
    assert 4 / 64 <= report[f"{name}_usage"] <= 1.0 and report[f"{name}_kl_uniform"] >= 0.0


def test_resume_keeps_the_memory_optimizer_state(text8_small, tmp_path):
    """A PKM run saved and resumed equals the straight run, values' own Adam state included."""
    from tests.conftest import tiny_char_args
    from toolkit.cli.train import main as train_main
    from toolkit.train.checkpoint import load_checkpoint

    extra = {"memory.layers": "[0]", "memory.pkm": SMALL,
             "param_groups.pkm_values": "{params: '(^|\\.)memory_values\\.weight$', optimizer: {name: adam, lr: 0.001}}"}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main(tiny_char_args(text8_small, straight, **extra)) == 0
    assert train_main(tiny_char_args(text8_small, resumed, max_update=4, **extra)) == 0
    assert "exp_avg" in load_checkpoint(resumed / "checkpoint_last.pt")["optimizers"]["pkm_values"]["state"][0]
    assert train_main(tiny_char_args(text8_small, resumed, **extra)) == 0
    a, b = load_checkpoint(straight / "checkpoint_last.pt"), load_checkpoint(resumed / "checkpoint_last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(a["optimizers"]["pkm_values"]["state"][0][key], b["optimizers"]["pkm_values"]["state"][0][key])
