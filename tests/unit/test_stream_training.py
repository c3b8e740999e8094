"""Streamed training and evaluation wiring: char_lm stream mode, the model's carried cache, presets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from toolkit.config.compose import compose_train_config
from toolkit.errors import ConfigError
from toolkit.models.streaming_lm import StreamingLM, StreamingLMConfig, StreamingLMModelConfig
from toolkit.tasks.char_lm import CharLMConfig, CharLMTask
from toolkit.tasks.stream_lm_data import substream_lengths
from toolkit.train.setup import build_run

BLOCK = 16


def char_task(data, rank: int = 0, world_size: int = 1, **overrides) -> CharLMTask:
    cfg = OmegaConf.structured(
        CharLMConfig(**{"mode": "stream", "tokens_per_sample": BLOCK, "batch_size": 2, **overrides})
    )
    return CharLMTask(cfg, str(data), seed=3, rank=rank, world_size=world_size)


def streaming_cfg(**overrides) -> OmegaConf:
    """The `model=streaming_lm` group config of a tiny model."""
    base = dict(
        d_model=16,
        n_layers=2,
        n_heads=2,
        d_ff=24,
        attn_span=40,
        adaptive_span=False,
        span_ramp=8,
        cache_margin=0,
        dropout=0.0,
    )
    return OmegaConf.structured(StreamingLMModelConfig(**{**base, **overrides}))


def test_stream_batches_are_consecutive_blocks_of_contiguous_streams_split_over_ranks(text8_small) -> None:
    ranks = [char_task(text8_small, rank, world_size=2) for rank in (0, 1)]
    data = np.asarray(ranks[0].splits["train"], dtype=np.int64)
    length = (len(data) - 1) // 4  # 2 rows per rank, 2 ranks: 4 streams
    assert ranks[0].epoch_length(1) == length // BLOCK
    for rank, task in enumerate(ranks):
        batches = [task.train_batch(1, i) for i in range(3)]
        assert [b["net_input"]["reset"] for b in batches] == [True, False, False]
        assert all(b["ntokens"] == 2 * BLOCK for b in batches)
        inputs = torch.cat([b["net_input"]["tokens"] for b in batches], dim=1)
        targets = torch.cat([b["target"] for b in batches], dim=1)
        for row in range(2):
            start = (2 * rank + row) * length
            assert inputs[row].tolist() == data[start : start + 3 * BLOCK].tolist()
            assert targets[row].tolist() == data[start + 1 : start + 3 * BLOCK + 1].tolist()


def test_later_epochs_start_at_a_seeded_offset_within_a_block(text8_small) -> None:
    task, again = char_task(text8_small), char_task(text8_small)
    data = np.asarray(task.splits["train"], dtype=np.int64)
    length = (len(data) - 1) // 2
    offsets = [task.streams.offset(epoch) for epoch in (1, 2, 3, 4)]
    assert offsets[0] == 0 and all(0 <= o < BLOCK for o in offsets) and len(set(offsets[1:])) > 1
    assert offsets == [again.streams.offset(epoch) for epoch in (1, 2, 3, 4)]
    first = task.train_batch(2, 0)
    assert first["net_input"]["reset"] is True
    assert first["net_input"]["tokens"][1].tolist() == data[length + offsets[1] : length + offsets[1] + BLOCK].tolist()
    assert task.epoch_length(2) == (length - offsets[1]) // BLOCK
    assert char_task(text8_small, batches_per_epoch=5).epoch_length(2) == 5


def test_random_window_mode_is_unchanged(text8_small) -> None:
    task = char_task(text8_small, mode="random", tokens_per_sample=33, batch_size=4)
    batch = task.train_batch(2, 7)
    data = task.splits["train"]
    offsets = np.random.default_rng([3, 2, 7]).integers(0, len(data) - 34, size=4)
    expected = torch.from_numpy(data[offsets[:, None] + np.arange(34)].astype(np.int64))
    assert set(batch["net_input"]) == {"tokens"}
    assert torch.equal(batch["net_input"]["tokens"], expected[:, :-1]) and torch.equal(batch["target"], expected[:, 1:])
    assert task.state_dict() == {}


def test_model_carries_the_streams_cache_like_explicit_calls() -> None:
    torch.manual_seed(0)
    model = StreamingLM(
        StreamingLMConfig(
            vocab_size=11, d_model=16, n_layers=2, n_heads=2, d_ff=24, attn_span=40, adaptive_span=False, dropout=0.0
        )
    ).train()
    blocks = [torch.randint(0, 11, (3, BLOCK)) for _ in range(5)]
    resets = [True, False, False, True, False]
    cache = None
    for block, reset in zip(blocks, resets):
        carried, aux = model(block, target=block, reset=reset)
        expected, _, cache = model(block, None if reset else cache)
        assert torch.equal(carried, expected) and aux == {}
    independent, _ = model(blocks[0], target=blocks[0])  # reset=None: no cache, nothing carried
    assert torch.equal(independent, model(blocks[0])[0])
    assert [c.size(1) for c in model.stream_state()] == [2 * BLOCK, 2 * BLOCK]  # still the last stream's


def test_training_through_the_carried_cache_learns_what_lies_before_the_block() -> None:
    """Streams of random 24-token episodes, each repeated 4 times, read in 16-token blocks: a repeat can only
    be predicted by looking 24 tokens back, past the block start. Without a cache the best loss is ln 11 (no
    token's earlier occurrence is visible); through the carried cache a 1-layer model learns to copy."""
    torch.manual_seed(0)
    stream = torch.randint(0, 11, (8, 35, 1, 24)).repeat(1, 1, 4, 1).reshape(8, -1)
    model = StreamingLM(
        StreamingLMConfig(
            vocab_size=11, d_model=32, n_layers=1, n_heads=2, d_ff=64, attn_span=64, adaptive_span=False, dropout=0.0
        )
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(200):
        block = stream[:, step * BLOCK : (step + 1) * BLOCK + 1]
        logits, _ = model(block[:, :-1], target=block[:, 1:], reset=step == 0)
        loss = F.cross_entropy(logits.reshape(-1, 11), block[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.6 * math.log(11)


def test_task_checkpoints_the_training_cache_and_a_restored_one_continues_exactly(text8_small) -> None:
    task = char_task(text8_small)
    model = task.build_model(streaming_cfg())
    assert model.cfg.vocab_size == 27 and model.cfg.max_positions == BLOCK
    assert task.state_dict() == {"stream_cache": None}
    for index in range(3):
        batch = task.train_batch(1, index)
        model(**batch["net_input"], target=batch["target"])
    state = task.state_dict()
    batch = task.train_batch(1, 3)
    expected, _ = model(**batch["net_input"], target=batch["target"])

    other = char_task(text8_small)
    restored = other.build_model(streaming_cfg())
    restored.load_state_dict(model.state_dict())
    other.load_state_dict(state)
    torch.testing.assert_close(restored(**batch["net_input"], target=batch["target"])[0], expected, rtol=0, atol=0)
    assert not any(k.startswith("_") for k in model.state_dict())  # weights only: the cache is task state


def test_streamed_evaluation_scores_every_target_like_one_pass_over_each_substream(text8_small) -> None:
    task = char_task(text8_small, eval_protocol="stream", eval_max_tokens=1001, eval_window=BLOCK)
    torch.manual_seed(1)
    model = task.build_model(streaming_cfg()).eval()
    metrics = task.evaluate(model, "test", torch.device("cpu"))
    # independently: 8 contiguous pieces (the first 1001 % 8 = 1 one longer), each scored in one pass
    data = torch.from_numpy(np.asarray(task.splits["test"][:1002], dtype=np.int64))
    total = 0.0
    for piece in np.array_split(np.arange(1001), 8):
        logits, _, _ = model(data[piece][None])
        total += F.cross_entropy(logits[0], data[piece + 1], reduction="sum").item()
    assert [len(p) for p in np.array_split(np.arange(1001), 8)] == substream_lengths(1001, 8).tolist()
    assert metrics["tokens"] == 1001 and metrics["protocol"] == "stream" and metrics["streams"] == 8
    assert metrics["loss"] * 1001 == pytest.approx(total, rel=1e-5)
    assert metrics["bpc"] == pytest.approx(total / 1001 / math.log(2), rel=1e-5)


def test_metrics_report_spans_per_layer_and_head_and_after_update_clamps() -> None:
    model = StreamingLM(StreamingLMConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2, d_ff=24, attn_span=200))
    for layer, spans in zip(model.layers, ([0.1, 0.5], [0.25, 1.5])):
        layer.self_attn.span.span_param.data = torch.tensor(spans)
    model.after_update()
    metrics = model.metrics()
    assert {k: metrics[k] for k in metrics if "layer" in k} == {
        "span/layer0_head0": 20.0,
        "span/layer0_head1": 100.0,
        "span/layer1_head0": 50.0,
        "span/layer1_head1": 200.0,
    }
    assert (metrics["span/mean"], metrics["span/max"], metrics["span/window_max"]) == (92.5, 200.0, 200.0)
    assert StreamingLM(StreamingLMConfig(vocab_size=11, d_model=16, n_heads=2, adaptive_span=False)).metrics() == {}


def test_a_bad_mode_is_refused_when_composing() -> None:
    with pytest.raises(ConfigError) as error:
        compose_train_config("adaptive_span_tiny_text8", ["task.mode=streams"])
    assert str(error.value) == "task.mode: 'streams' (valid: random, stream)"


@pytest.mark.parametrize(
    "overrides, model_overrides, message",
    [
        (
            {},
            {"block_size": 32},
            "model.block_size=32 differs from task.tokens_per_sample=16 (the streamed block "
            "length); set model.block_size=0 to take the task's",
        ),
        ({"batch_size": 6000}, {}, None),
    ],
)
def test_stream_configuration_errors(text8_small, overrides, model_overrides, message) -> None:
    with pytest.raises(ConfigError) as error:
        char_task(text8_small, **overrides).build_model(streaming_cfg(**model_overrides))
    if message is None:  # too many streams for the data
        assert str(error.value).startswith("task.mode=stream: 6000 streams of blocks of 16 need at least 192001 ")
    else:
        assert str(error.value) == message


def test_cache_less_models_are_refused_in_stream_mode_and_protocol(text8_small) -> None:
    cfg = compose_train_config("text8_char_tiny", [])
    lm_cfg = OmegaConf.merge(cfg.model, {"n_layers": 1, "d_model": 8, "n_heads": 2, "d_ff": 8, "max_positions": 32})
    with pytest.raises(
        ConfigError,
        match=r"^task.mode=stream needs a model that carries a cache across blocks "
        r"\(streaming_lm\); model 'transformer_lm' has none$",
    ):
        char_task(text8_small).build_model(lm_cfg)
    task = char_task(text8_small, mode="random", eval_protocol="stream")
    with pytest.raises(ConfigError, match=r"^task.eval_protocol=stream needs a model that carries a cache"):
        task.evaluate(task.build_model(lm_cfg), "test", torch.device("cpu"))


PAPER_PARAMETERS = {  # millions (Sukhbaatar et al. 2019, both papers)
    "adaptive_span_text8": 38,
    "adaptive_span_text8_large": 209,
    "adaptive_span_enwik8": 39,
    "adaptive_span_enwik8_large": 209,
    "all_attention_text8": 38,
    "all_attention_enwik8": 39,
    "all_attention_enwik8_large": 114,
}


@pytest.mark.parametrize("preset", sorted(PAPER_PARAMETERS))
def test_preset_parameter_counts_are_the_papers(preset: str) -> None:
    cfg = compose_train_config(preset, ["data=/nonexistent"])  # no data: the vocabulary from the preset
    with torch.device("meta"):  # count without allocating 200M parameters
        model = build_run(cfg).model
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 1e6 - PAPER_PARAMETERS[preset]) / PAPER_PARAMETERS[preset] < 0.05, count
    assert cfg.task.mode == "stream" and cfg.task.eval_protocol == "stream" and cfg.optimizer.name == "adagrad"
    assert model.cfg.max_positions == 512 and model.key_pe.size(1) == 8192 and cfg.lr_scheduler.warmup_updates == 32000
