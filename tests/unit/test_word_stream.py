"""Streamed word LMs: language_modeling's stream mode and protocol, streaming_lm with adaptive input/softmax,
the all-attention WikiText-103 preset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from toolkit.config.compose import compose_train_config
from toolkit.criterions.cross_entropy import CrossEntropyCriterion
from toolkit.data.word_corpus import EOS, load_word_split
from toolkit.errors import ConfigError
from toolkit.models.streaming_lm import (
    AdaptiveSoftmaxStreamingLM,
    StreamingLM,
    StreamingLMConfig,
    StreamingLMModelConfig,
)
from toolkit.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask
from toolkit.train.setup import build_run

BLOCK = 8


def word_task(data, rank: int = 0, world_size: int = 1, **overrides) -> LanguageModelingTask:
    fields = {"mode": "stream", "eval_protocol": "stream", "tokens_per_sample": BLOCK, "batch_size": 2, **overrides}
    return LanguageModelingTask(OmegaConf.structured(LanguageModelingConfig(**fields)), str(data), 3, rank, world_size)


def adaptive_cfg(**overrides) -> OmegaConf:
    """A tiny streamed model with tied adaptive input/softmax (3 bands)."""
    base = dict(
        d_model=16,
        n_layers=2,
        n_heads=2,
        d_ff=24,
        attn_span=32,
        adaptive_span=False,
        cache_margin=0,
        dropout=0.0,
        persistent_memory=4,
        adaptive_input=True,
        adaptive_softmax=True,
        adaptive_cutoffs=[20, 200],
        adaptive_factor=2.0,
        tie_adaptive_weights=True,
        tie_adaptive_proj=True,
    )
    return OmegaConf.structured(StreamingLMModelConfig(**{**base, **overrides}))


def test_stream_batches_are_consecutive_blocks_of_the_eos_prefixed_train_stream(wikitext_small) -> None:
    stream = np.concatenate([[EOS], load_word_split(wikitext_small, "train")]).astype(np.int64)
    length = (len(stream) - 1) // 4  # 2 rows per rank, 2 ranks: 4 streams
    for rank in (0, 1):
        task = word_task(wikitext_small, rank, world_size=2)
        assert task.epoch_length(1) == length // BLOCK
        batches = [task.train_batch(1, i) for i in range(3)]
        assert [b["net_input"]["reset"] for b in batches] == [True, False, False]
        inputs = torch.cat([b["net_input"]["tokens"] for b in batches], dim=1)
        targets = torch.cat([b["target"] for b in batches], dim=1)
        for row in range(2):
            start = (2 * rank + row) * length
            assert inputs[row].tolist() == stream[start : start + 3 * BLOCK].tolist()
            assert targets[row].tolist() == stream[start + 1 : start + 3 * BLOCK + 1].tolist()
    assert stream[0] == EOS and word_task(wikitext_small).train_batch(1, 0)["net_input"]["tokens"][0, 0] == EOS


def test_adaptive_streaming_model_is_tied_normalised_and_scored_by_the_criterion(wikitext_small) -> None:
    task = word_task(wikitext_small)
    torch.manual_seed(0)
    model = task.build_model(adaptive_cfg())
    assert isinstance(model, AdaptiveSoftmaxStreamingLM) and model.padding_idx == task.pad_idx
    assert model.output.head_words is model.embed.embeddings[0].weight  # tied, counted once
    batch = task.train_batch(1, 0)
    hidden, aux = model(**batch["net_input"], target=batch["target"])
    assert hidden.shape == (2, BLOCK, 16) and aux == {}
    log_prob = model.output_log_prob(hidden)
    torch.testing.assert_close(log_prob.exp().sum(-1), torch.ones(2, BLOCK))
    expected = -log_prob.gather(-1, batch["target"][..., None]).sum()
    model.load_stream_state(None)
    loss, ntokens, logs = CrossEntropyCriterion(None, task)(model, batch, step=0)
    assert ntokens == 2 * BLOCK
    torch.testing.assert_close(loss, expected)


def test_streamed_evaluation_scores_every_token_like_one_pass_over_each_substream(wikitext_small) -> None:
    task = word_task(wikitext_small)
    torch.manual_seed(1)
    model = task.build_model(adaptive_cfg()).eval()
    metrics = task.evaluate(model, "test", torch.device("cpu"))
    # independently: the stream <eos> + test cut into 8 contiguous pieces of targets, each scored in one pass
    stream = torch.from_numpy(np.concatenate([[EOS], load_word_split(wikitext_small, "test")]).astype(np.int64))
    n = len(stream) - 1
    total = 0.0
    with torch.no_grad():
        for piece in np.array_split(np.arange(n), 8):
            hidden, _, _ = model(stream[piece][None])
            log_prob = model.output_log_prob(hidden[0])
            total -= log_prob.gather(-1, stream[piece + 1][:, None]).sum().item()
    assert (metrics["tokens"], metrics["protocol"], metrics["streams"], metrics["block"]) == (n, "stream", 8, BLOCK)
    assert metrics["loss"] * n == pytest.approx(total, rel=1e-5)
    assert metrics["ppl"] == pytest.approx(math.exp(total / n), rel=1e-5)


def test_training_cache_is_task_state_and_a_restored_one_continues_exactly(wikitext_small) -> None:
    task = word_task(wikitext_small)
    model = task.build_model(adaptive_cfg())
    for index in range(2):
        batch = task.train_batch(1, index)
        model(**batch["net_input"], target=batch["target"])
    state, batch = task.state_dict(), task.train_batch(1, 2)
    expected, _ = model(**batch["net_input"], target=batch["target"])
    other = word_task(wikitext_small)
    restored = other.build_model(adaptive_cfg())
    restored.load_state_dict(model.state_dict())
    other.load_state_dict(state)
    assert torch.equal(restored(**batch["net_input"], target=batch["target"])[0], expected)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mode": "streams"}, "task.mode: 'streams' (valid: blocks, stream)"),
        ({"eval_protocol": "windows"}, "task.eval_protocol: 'windows' (valid: context_window, stream)"),
    ],
)
def test_bad_stream_settings_are_one_line_errors(overrides, message) -> None:
    """Fixed choices are Enums: refused when the config is composed, naming the key and the valid values."""
    with pytest.raises(ConfigError) as error:
        compose_train_config("all_attention_tiny_wikitext2", [f"task.{k}={v}" for k, v in overrides.items()])
    assert str(error.value) == message


def test_models_without_a_cache_are_refused_in_stream_mode(wikitext_small) -> None:
    lm_cfg = compose_train_config("wikitext2_tiny", []).model
    with pytest.raises(
        ConfigError,
        match=r"^task.mode=stream needs a model that carries a cache across blocks "
        r"\(streaming_lm\); model 'transformer_lm' has none$",
    ):
        word_task(wikitext_small).build_model(lm_cfg)
    task = word_task(wikitext_small, mode="blocks")
    with pytest.raises(ConfigError, match=r"^task.eval_protocol=stream needs a model that carries a cache"):
        task.evaluate(task.build_model(lm_cfg), "test", torch.device("cpu"))


def test_streaming_model_without_adaptive_softmax_still_returns_logits() -> None:
    cfg = StreamingLMConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, attn_span=32, adaptive_input=True)
    model = StreamingLM.create(cfg)
    assert type(model) is StreamingLM and not model.scores_own_output
    assert model(torch.tensor([[3, 4, 5]]))[0].shape == (1, 3, 50)


def test_all_attention_wt103_preset_has_the_papers_size() -> None:
    cfg = compose_train_config("all_attention_wt103", ["data=/nonexistent"])
    with torch.device("meta"):  # count without allocating 136M parameters
        model = build_run(cfg).model
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 133e6 - 1) < 0.05, count
    assert isinstance(model, AdaptiveSoftmaxStreamingLM) and model.cfg.vocab_size == 267744
    persistent = model.cfg.adaptive_span.persistent_memory
    assert (model.cfg.n_layers, model.cfg.d_model, persistent, model.cfg.ffn) == (
        36,
        512,
        2048,
        False,
    )
    assert cfg.task.mode == "stream" and cfg.task.eval_protocol == "stream"
