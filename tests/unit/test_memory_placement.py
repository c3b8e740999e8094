"""Product-key memories placed by config into the char LM and the translation decoder."""

from __future__ import annotations

import copy

import torch

from toolkit.config.compose import compose_train_config
from toolkit.modules.memory_placement import MemoryAfterLayer
from toolkit.modules.pkm import ProductKeyMemory
from toolkit.train.setup import build_run, parameter_summary

SMALL = "{mem_size: 64, key_dim: 16, heads: 2, knn: 4}"


def build(preset: str, *overrides: str):
    cfg = compose_train_config(preset, ["data=/nonexistent", *overrides])
    return build_run(cfg).model


def test_replace_ffn_in_char_lm_and_report_parameters():
    model = build("text8_char_tiny", "model.memory.layers=[1]", f"model.memory.pkm={SMALL}")
    assert isinstance(model.layers[1].ffn, ProductKeyMemory) and not isinstance(model.layers[0].ffn, ProductKeyMemory)
    summary = parameter_summary(model)
    memory = sum(p.numel() for p in model.layers[1].ffn.parameters())
    assert summary["memory_parameters"] == memory
    assert summary["non_memory_parameters"] == summary["parameters"] - memory
    logits, _ = model(torch.randint(0, 27, (2, 16)))
    assert logits.shape == (2, 16, 27)


def test_after_layer_in_translation_decoder_reports_usage_in_metrics():
    model = build(
        "iwslt14_tiny",
        "model.memory.layers=[0]",
        "model.memory.mode=after_layer",
        f"model.memory.pkm={SMALL}",
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "model.d_model=32",
        "model.ffn_dim=64",
    )
    assert isinstance(model.decoder_layers[0], MemoryAfterLayer)
    assert not any(isinstance(m, ProductKeyMemory) for m in model.encoder_layers.modules())
    model.eval()
    src, prev = torch.randint(4, 100, (3, 7)), torch.randint(4, 100, (3, 5))
    model(src, prev)
    report = model.metrics()
    name = "pkm/decoder_layers.0.memory"
    # 3 x 5 decoder positions, 2 heads, k = 4: at least 4 distinct slots, at most all 64
    assert 4 / 64 <= report[f"{name}_usage"] <= 1.0 and report[f"{name}_kl_uniform"] >= 0.0


def test_resume_keeps_the_memory_optimizer_state(text8_small, tmp_path):
    """A PKM run saved and resumed equals the straight run, values' own Adam state included."""
    from tests.conftest import tiny_char_args
    from toolkit.cli.train import main as train_main
    from toolkit.train.checkpoint import load_checkpoint

    extra = {
        "model.memory.layers": "[0]",
        "model.memory.pkm": SMALL,
        "param_groups.pkm_values": "{params: '(^|\\.)memory_values\\.weight$', optimizer: {name: adam, lr: 0.001}}",
    }
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main(tiny_char_args(text8_small, straight, **extra)) == 0
    assert train_main(tiny_char_args(text8_small, resumed, max_update=4, **extra)) == 0
    assert "exp_avg" in load_checkpoint(resumed / "checkpoint_last.pt")["optimizers"]["pkm_values"]["state"][0]
    assert train_main(tiny_char_args(text8_small, resumed, **extra)) == 0
    a, b = load_checkpoint(straight / "checkpoint_last.pt"), load_checkpoint(resumed / "checkpoint_last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(
            a["optimizers"]["pkm_values"]["state"][0][key], b["optimizers"]["pkm_values"]["state"][0][key]
        )


def _decoder_outputs_with_extra_padding(mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-mode decoder outputs at the real target positions, for a batch and for the same batch with
    three more pad columns; each forward starts from the same weights and BatchNorm statistics."""
    torch.manual_seed(0)
    model = build(
        "iwslt14_tiny",
        "model.memory.layers=[0]",
        f"model.memory.mode={mode}",
        f"model.memory.pkm={SMALL}",
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "model.d_model=32",
        "model.ffn_dim=64",
        "model.dropout=0.0",
    )
    model.train()
    pad = model.pad_idx
    src = torch.randint(4, 100, (3, 7))
    prev = torch.randint(4, 100, (3, 6))
    prev[1, 4:], prev[2, 2:] = pad, pad  # right-padded targets of lengths 6, 4, 2
    longer = torch.cat([prev, torch.full((3, 3), pad)], dim=1)
    real = prev.ne(pad)
    short_out = copy.deepcopy(model)(src, prev)[0][real]
    long_out = copy.deepcopy(model)(src, longer)[0][:, :6][real]
    return short_out, long_out


def test_a_decoder_memory_keeps_pad_rows_out_of_its_statistics():
    """Both placements see the decoder's target padding: extra pad columns leave real positions unchanged."""
    for mode in ("replace_ffn", "after_layer"):
        short_out, long_out = _decoder_outputs_with_extra_padding(mode)
        torch.testing.assert_close(long_out, short_out, rtol=1e-5, atol=1e-5)


def test_replace_ffn_memory_in_a_layer_receives_the_padding_mask():
    """A memory in place of the FFN gets the layer's padding mask: pad columns leave real positions unchanged."""
    from toolkit.modules.pkm import PKMConfig
    from toolkit.modules.transformer_layer import TransformerLayer

    torch.manual_seed(0)
    memory = ProductKeyMemory(16, 16, PKMConfig(mem_size=64, key_dim=8, heads=2, knn=4))
    layer = TransformerLayer(16, 2, 32, dropout=0.0, ffn=memory).train()
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[False] * 5, [False, False, True, True, True]])
    padded = torch.cat([x, torch.randn(2, 4, 16)], dim=1)  # the four new columns are padding
    padded_mask = torch.cat([mask, torch.ones(2, 4, dtype=torch.bool)], dim=1)
    out = copy.deepcopy(layer)(x, padding_mask=mask)[~mask]
    out_padded = copy.deepcopy(layer)(padded, padding_mask=padded_mask)[:, :5][~mask]
    torch.testing.assert_close(out_padded, out, rtol=1e-5, atol=1e-5)
