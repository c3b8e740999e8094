"""model.memory: product-key memories as part of the model config, in every model that can hold them; their
usage in the model's metrics(); the old top-level `memory` key refused where the user writes it and moved in
a checkpoint's saved config."""

from __future__ import annotations

import json
import math
import textwrap
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import torch

from tests.conftest import only_error_line, read_in_blocks, read_log, tiny_char_args
from tests.unit.golden_cases import (
    CHAR_BASE,
    CHAR_V,
    LM_BASE,
    LM_TASK,
    MAE,
    MT_BASE,
    MT_TASK,
    ST_BASE,
    ST_TASK,
    build_model,
    plain_config,
)
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main
from toolkit.config.compose import typed_train_config
from toolkit.config.moved_keys import upgrade_saved_config
from toolkit.errors import ConfigError
from toolkit.eval.beam_search import GenerationConfig, generate
from toolkit.modules.memory_placement import MemoryAfterLayer
from toolkit.modules.pkm import ProductKeyMemory
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint
from toolkit.train.trained_run import load_trained_run

PKM = {"mem_size": 36, "key_dim": 8, "heads": 2, "knn": 3}


def built(model: str, config: Dict[str, Any], task: Dict[str, Any], **memory: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(model, plain_config(model, config), task, {"pkm": PKM, **memory})


def captured_reads(model: torch.nn.Module) -> Dict[str, List[tuple]]:
    """Every read of every memory, (slot ids, weights) as numpy arrays, captured by hooks of the test's own."""
    reads: Dict[str, List[tuple]] = {}
    for name, module in model.named_modules():
        if isinstance(module, ProductKeyMemory):
            reads[name] = []

            def hook(m, inputs, output, into=reads[name]):
                into.append((m.last_indices.numpy().ravel(), m.last_weights.double().numpy().ravel()))

            module.register_forward_hook(hook)
    return reads


def usage_by_hand(reads: List[tuple], mem_size: int) -> tuple[float, float]:
    """Share of slots read at least once, and KL(mean slot weights || uniform), from the raw reads."""
    ids = np.concatenate([i for i, _ in reads])
    weights = np.concatenate([w for _, w in reads])
    sums = np.zeros(mem_size)
    np.add.at(sums, ids, weights)
    p = sums[sums > 0] / sums.sum()
    return len(np.unique(ids)) / mem_size, float((p * np.log(p * mem_size)).sum())


# ---- placement in each model -------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["replace_ffn", "after_layer"])
def test_char_transformer_takes_memories_and_reports_their_usage_since_the_last_call(mode: str) -> None:
    model = built("char_transformer", CHAR_BASE, {"vocab_size": CHAR_V}, layers=[0, 2], mode=mode).train()
    memories = {n: m for n, m in model.named_modules() if isinstance(m, ProductKeyMemory)}
    prefix = "layers.{}.ffn" if mode == "replace_ffn" else "layers.{}.memory"
    assert sorted(memories) == [prefix.format(0), prefix.format(2)]
    reads = captured_reads(model)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # usage accumulates over every read since the last metrics() call
        tokens = torch.randint(0, CHAR_V, (3, 10), generator=g)
        model(tokens, target=tokens)
    metrics = model.metrics()
    assert sorted(metrics) == sorted(f"pkm/{n}_{k}" for n in memories for k in ("usage", "kl_uniform"))
    for name in memories:
        usage, kl = usage_by_hand(reads[name], PKM["mem_size"])
        assert metrics[f"pkm/{name}_usage"] == usage
        assert metrics[f"pkm/{name}_kl_uniform"] == pytest.approx(kl, rel=1e-12)
    again = model.metrics()  # nothing read since: reset
    assert all(again[f"pkm/{n}_usage"] == 0.0 and math.isnan(again[f"pkm/{n}_kl_uniform"]) for n in memories)


def test_streamed_lm_replaces_an_ffn_and_keeps_its_span_metrics() -> None:
    model = built("streaming_lm", ST_BASE, ST_TASK, layers=[1]).train()
    assert isinstance(model.layers[1].ffn, ProductKeyMemory) and not isinstance(model.layers[0].ffn, ProductKeyMemory)
    reads = captured_reads(model)
    blocks = torch.randint(2, 13, (2, 2, 8), generator=torch.Generator().manual_seed(0))
    model(blocks[0], target=blocks[1], reset=True)
    model(blocks[1], target=blocks[0], reset=False)
    metrics = model.metrics()
    usage, _ = usage_by_hand(reads["layers.1.ffn"], PKM["mem_size"])
    assert metrics["pkm/layers.1.ffn_usage"] == usage and "span/mean" in metrics and "span/layer1_head1" in metrics


def test_streamed_lm_with_a_memory_after_an_attention_only_layer_reads_blocks_like_one_pass() -> None:
    """The streamed layers are TransformerLayers: a memory after one (here without an FFN) sees the carried
    cache's layer output, so block-by-block reading equals one pass."""
    config = {**ST_BASE, "persistent_memory": 3}
    model = built("streaming_lm", config, ST_TASK, layers=[1], mode="after_layer").eval()
    assert isinstance(model.layers[1], MemoryAfterLayer) and model.layers[1].layer.ffn is None
    tokens = torch.randint(2, 13, (2, 24), generator=torch.Generator().manual_seed(0))
    whole, _, _ = model(tokens)
    torch.testing.assert_close(read_in_blocks(model, tokens, 8), whole, rtol=1e-5, atol=1e-5)
    assert 0.0 < model.metrics()["pkm/layers.1.memory_usage"] <= 1.0


def test_translation_decoder_with_a_memory_after_its_layer_decodes_incrementally() -> None:
    """The wrapped decoder layer keeps its attention modules reachable: caches, beam search, MAE metrics."""
    model = built("transformer", {**MT_BASE, **MAE}, MT_TASK, layers=[1], mode="after_layer").eval()
    assert isinstance(model.decoder_layers[1], MemoryAfterLayer)
    g = torch.Generator().manual_seed(0)
    src, prev = torch.randint(3, 17, (3, 7), generator=g), torch.randint(3, 17, (3, 6), generator=g)
    src[:, -1] = MT_TASK["eos_idx"]
    encoded = model.encode(src)
    full = model.decode(prev, encoded)
    state = model.init_decoder_state(encoded)
    steps = torch.cat([model.decode(prev[:, i : i + 1], caches=state) for i in range(prev.size(1))], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)
    hyps = generate(model, src, GenerationConfig(beam=3, max_len_b=5))
    assert len(hyps) == 3 and all(len(h[0].tokens) >= 1 for h in hyps)
    model(src, prev)
    metrics = model.metrics()
    assert "mae/decoder_self.1/entropy" in metrics and "mae/encoder_decoder.1/entropy" in metrics
    assert 0.0 < metrics["pkm/decoder_layers.1.memory_usage"] <= 1.0


@pytest.mark.parametrize(
    "model, config, task, memory, message",
    [
        (
            "streaming_lm",
            {**ST_BASE, "persistent_memory": 3},
            ST_TASK,
            {"layers": [0]},
            "model.memory.mode=replace_ffn: layer 0 of StreamingLM (TransformerLayer) has no FFN to replace",
        ),
        (
            "transformer_lm",
            LM_BASE,
            LM_TASK,
            {"layers": [0], "stack": "decoder_layers"},
            "model.memory.stack=decoder_layers: the model TransformerLM has no such layer list",
        ),
        (
            "transformer_lm",
            LM_BASE,
            LM_TASK,
            {"layers": [2]},
            "model.memory.layers: layer 2 does not exist (the model has 2)",
        ),
        (
            "transformer_lm",
            LM_BASE,
            LM_TASK,
            {"layers": [0], "pkm": {**PKM, "mem_size": 35}},
            "model.memory.pkm.mem_size=35 must be a perfect square (e.g. 512**2=262144)",
        ),
    ],
)
def test_a_placement_that_cannot_work_is_one_config_error(model, config, task, memory, message) -> None:
    with pytest.raises(ConfigError) as error:
        build_model(model, plain_config(model, config), task, {"pkm": PKM, **memory})
    assert str(error.value) == message


def test_a_placement_error_stops_a_dry_run_before_any_work(capsys) -> None:
    args = ["config=all_attention/text8_tiny", "dry_run=true", "model.memory.layers=[0]", f"model.memory.pkm={PKM}"]
    assert train_main(args) == 2
    assert only_error_line(capsys.readouterr().err) == (
        "error: model.memory.mode=replace_ffn: layer 0 of StreamingLM (TransformerLayer) has no FFN to replace"
    )


# ---- the old top-level key ---------------------------------------------------------------------------
def test_the_old_top_level_key_on_the_command_line_says_where_it_is_now(capsys) -> None:
    assert train_main(["config=pkm/pkm_text8_tiny", "memory.layers=[0]"]) == 2
    assert only_error_line(capsys.readouterr().err) == (
        "error: memory.layers: the top-level key 'memory' is now model.memory: write model.memory.layers=..."
    )


def test_the_old_top_level_key_in_a_users_preset_says_where_it_is_now(tmp_path, monkeypatch, capsys) -> None:
    folder = tmp_path / "my_configs" / "config" / "mine"
    folder.mkdir(parents=True)
    (folder / "old_memory.yaml").write_text(
        textwrap.dedent("""\
        # @package _global_
        defaults:
          - /config/baselines/transformer_lm_text8_tiny
          - _self_
        memory:
          layers: [1]
        """)
    )
    monkeypatch.setenv("TOOLKIT_CONFIG_PATH", str(tmp_path / "my_configs"))
    assert train_main(["config=mine/old_memory"]) == 2
    assert only_error_line(capsys.readouterr().err) == (
        "error: preset 'mine/old_memory': the top-level key 'memory' is now model.memory (move it there)"
    )


def old_layout(config: Dict[str, Any], memory: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A saved config as tk-train wrote it before the move: `memory` at the top level, not in the model."""
    model = dict(config["model"])
    moved = model.pop("memory")
    return {**config, "model": model, "memory": memory if memory is not None else moved}


def test_a_saved_config_moves_its_memory_into_the_model_config() -> None:
    saved = {"model": {"name": "transformer_lm"}, "memory": {"layers": [1], "mode": "after_layer"}}
    assert upgrade_saved_config(saved) == {
        "model": {"name": "transformer_lm", "memory": {"layers": [1], "mode": "after_layer"}}
    }
    assert "memory" in saved  # the checkpoint's own dict is left as it was
    # a memory without layers placed nothing: dropped, the model keeps today's defaults
    assert upgrade_saved_config({"model": {"name": "transformer_lm"}, "memory": {"layers": []}}) == {
        "model": {"name": "transformer_lm"}
    }
    typed = typed_train_config({**saved, "task": {"name": "char_lm"}})
    assert list(typed.model.memory.layers) == [1] and typed.model.memory.mode == "after_layer"
    assert "memory" not in typed


def test_a_checkpoint_with_the_old_top_level_key_resumes_exactly_and_evaluates(text8_small, tmp_path, capsys):
    extra = {"model.memory.layers": "[0]", "model.memory.pkm": "{mem_size: 36, key_dim: 8, heads: 2, knn: 3}"}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main(tiny_char_args(text8_small, straight, max_update=4, save_interval=2, **extra)) == 0
    assert train_main(tiny_char_args(text8_small, resumed, max_update=2, save_interval=2, **extra)) == 0
    state = load_checkpoint(resumed / "checkpoint_last.pt")
    save_checkpoint({**state, "config": old_layout(state["config"])}, resumed / "checkpoint_last.pt")
    assert train_main(tiny_char_args(text8_small, resumed, max_update=4, save_interval=2, **extra)) == 0
    a, b = load_checkpoint(straight / "checkpoint_last.pt"), load_checkpoint(resumed / "checkpoint_last.pt")
    assert a["model"].keys() == b["model"].keys() and "layers.0.ffn.memory_values.weight" in a["model"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    logs = read_log(straight)
    assert [r["loss"] for r in read_log(resumed)][-2:] == [r["loss"] for r in logs][2:]
    # the training log reports the memory's usage under the names it always had
    assert all(0.0 < r["pkm/layers.0.ffn_usage"] <= 1.0 and r["pkm/layers.0.ffn_kl_uniform"] >= 0.0 for r in logs)
    # tk-eval reads the old layout too, and reports the memory's usage over the subset
    save_checkpoint({**a, "config": old_layout(a["config"])}, tmp_path / "old.pt")
    capsys.readouterr()
    assert eval_main([f"checkpoint={tmp_path / 'old.pt'}", "subset=valid", "device=cpu"]) == 0
    reported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = load_trained_run(str(tmp_path / "old.pt"))
    reads = captured_reads(run.model)
    run.task.evaluate(run.model, "valid", torch.device("cpu"))
    usage, kl = usage_by_hand(reads["layers.0.ffn"], PKM["mem_size"])
    assert reported["step"] == 4 and reported["pkm/layers.0.ffn_usage"] == usage
    assert reported["pkm/layers.0.ffn_kl_uniform"] == pytest.approx(kl, rel=1e-12)


def test_validation_reads_are_reported_with_the_validation_so_a_resumed_run_logs_the_same_usage(text8_small, tmp_path):
    extra = {"model.memory.layers": "[0]", "model.memory.pkm": "{mem_size: 36, key_dim: 8, heads: 2, knn: 3}"}
    extra.update({"validate_interval": 2, "task.valid_max_tokens": 500})
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main(tiny_char_args(text8_small, straight, max_update=4, save_interval=2, **extra)) == 0
    assert train_main(tiny_char_args(text8_small, resumed, max_update=2, save_interval=2, **extra)) == 0
    assert train_main(tiny_char_args(text8_small, resumed, max_update=4, save_interval=2, **extra)) == 0
    names = ("pkm/layers.0.ffn_usage", "pkm/layers.0.ffn_kl_uniform")
    # step 3 follows the validation at step 2: the uninterrupted run counts only step 3's training reads too
    assert [[r[k] for k in names] for r in read_log(resumed)[-2:]] == [
        [r[k] for k in names] for r in read_log(straight)[2:]
    ]
    valid = read_log(straight, "valid")
    assert [r["step"] for r in valid] == [2, 4] and all(0.0 < r[names[0]] <= 1.0 for r in valid)
    # the validation's usage is that of its own reads: the same model on the same tokens in the resumed run
    assert read_log(resumed, "valid")[-1][names[0]] == valid[-1][names[0]]
