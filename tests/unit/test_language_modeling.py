"""Word-level LM: adaptive input/softmax in transformer_lm, block batching, fairseq context-window evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from toolkit.aux_weights import AuxWeights
from toolkit.criterions.cross_entropy import CrossEntropyCriterion
from toolkit.data.word_corpus import EOS, load_word_split
from toolkit.errors import ConfigError
from toolkit.models.base import ToolkitModel
from toolkit.models.transformer_lm import AdaptiveSoftmaxLM, TransformerLM, TransformerLMConfig
from toolkit.tasks.language_modeling import (
    LanguageModelingConfig,
    LanguageModelingTask,
    context_window_plan,
    score_with_context,
)


def tiny_cfg(**overrides: object) -> TransformerLMConfig:
    base = dict(
        n_layers=1,
        d_model=16,
        n_heads=2,
        d_ff=32,
        dropout=0.0,
        positions="sinusoidal",
        max_positions=64,
        adaptive_input=True,
        adaptive_softmax=True,
        adaptive_cutoffs=[10, 30],
        adaptive_factor=2.0,
        tie_adaptive_weights=True,
        tie_adaptive_proj=True,
    )
    base.update(overrides)
    return TransformerLMConfig(**base)


def tiny_model(vocab: int = 50, **overrides: object) -> TransformerLM:
    torch.manual_seed(0)
    model = TransformerLM.create(tiny_cfg(**overrides), vocab, padding_idx=1)
    return model.eval()


def make_task(data: Path | None, **overrides: object) -> LanguageModelingTask:
    cfg = OmegaConf.structured(LanguageModelingConfig(**overrides))
    return LanguageModelingTask(cfg, str(data) if data else None, seed=3)


# ---- model -------------------------------------------------------------------------------------------
def test_adaptive_softmax_through_the_model_is_normalised_and_matches_nll():
    model = tiny_model()
    assert isinstance(model, AdaptiveSoftmaxLM)
    tokens = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    hidden, aux = model(tokens)
    assert hidden.shape == (3, 7, 16) and aux == {}
    log_prob = model.output_log_prob(hidden)
    assert log_prob.shape == (3, 7, 50)
    torch.testing.assert_close(log_prob.exp().sum(-1), torch.ones(3, 7))
    target = torch.randint(4, 50, (3, 7), generator=torch.Generator().manual_seed(2))
    expected = -log_prob.gather(-1, target[..., None]).squeeze(-1)
    torch.testing.assert_close(model.output_nll(hidden, target), expected)
    target[0, 0] = 1  # a padding target counts nothing
    assert model.output_nll(hidden, target)[0, 0].item() == 0.0


def test_without_cutoffs_the_adaptive_model_is_a_full_softmax_tied_to_the_input():
    model = tiny_model(adaptive_cutoffs=[])
    hidden, _ = model(torch.tensor([[5, 7, 9, 2]]))
    table = model.embed.embeddings[0].weight  # one band: the (V, d) table is the output matrix
    torch.testing.assert_close(model.output_log_prob(hidden), F.log_softmax(hidden @ table.T, dim=-1))


def test_criterion_uses_the_models_output_nll():
    model = tiny_model()
    task = make_task(None, vocab_size=50)
    tokens = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(4))
    batch = {"net_input": {"tokens": tokens[:, :-1]}, "target": tokens[:, 1:], "ntokens": 16}
    loss, size, logs = CrossEntropyCriterion(None, task, AuxWeights({}, 10))(model, batch, step=0)
    expected = model.output_nll(model(tokens[:, :-1])[0], tokens[:, 1:]).sum()
    assert size == 16 and logs["ntokens"] == 16
    torch.testing.assert_close(loss, expected)


def test_plain_config_builds_the_plain_model():
    model = TransformerLM.create(TransformerLMConfig(), 27)
    assert type(model) is TransformerLM and not model.scores_own_output
    assert model.output.weight is model.embed.weight
    assert model(torch.zeros(2, 5, dtype=torch.long))[0].shape == (2, 5, 27)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(adaptive_input=False),
            "model.tie_adaptive_weights/tie_adaptive_proj need model.adaptive_input=true "
            "and model.adaptive_softmax=true",
        ),
        (
            dict(adaptive_softmax=False, tie_adaptive_weights=False, tie_adaptive_proj=False),
            "model.tie_embeddings=true cannot tie a plain output layer to adaptive input embeddings: set "
            "model.adaptive_softmax=true (with tie_adaptive_weights) or model.tie_embeddings=false",
        ),
    ],
)
def test_impossible_combinations_are_config_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        TransformerLM.create(tiny_cfg(**overrides), 50)
    assert str(error.value) == message


def test_wt103_base_parameter_count():
    """Baevski & Auli's base: layers + adaptive input bands + the two tail-cluster logits of the tied softmax."""
    cfg = tiny_cfg(
        n_layers=16,
        d_model=1024,
        n_heads=8,
        d_ff=4096,
        final_norm=False,
        max_positions=3072,
        adaptive_cutoffs=[20000, 60000],
        adaptive_factor=4.0,
    )
    with torch.device("meta"):  # no memory, no init cost
        model = TransformerLM.create(cfg, 267744, padding_idx=1)
    d, ff = 1024, 4096
    layer = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d
    bands = [(20000, 1024), (40000, 256), (267744 - 60000, 64)]
    embedding = sum(size * dim + dim * d for size, dim in bands)
    expected = 16 * layer + embedding + 2 * d
    assert sum(p.numel() for p in model.parameters()) == expected == 246_933_504


# ---- training batches ----------------------------------------------------------------------------------
def test_blocks_are_contiguous_shuffled_and_partitioned_over_ranks(wikitext_small):
    train = np.asarray(load_word_split(wikitext_small, "train"), dtype=np.int64)
    stream = np.concatenate([[EOS], train])
    task = make_task(wikitext_small, tokens_per_sample=16, batch_size=3)
    blocks = len(train) // 16
    assert task.epoch_length(1) == blocks // 3
    seen = []
    block_of = {train[b * 16 : b * 16 + 16].tobytes(): b for b in range(blocks)}
    for index in range(task.epoch_length(1)):
        batch = task.train_batch(1, index)
        tokens, target = batch["net_input"]["tokens"].numpy(), batch["target"].numpy()
        assert batch["ntokens"] == 48 and tokens.shape == target.shape == (3, 16)
        for row_in, row_out in zip(tokens, target):
            block = block_of[row_out.tobytes()]
            np.testing.assert_array_equal(row_in, stream[block * 16 : block * 16 + 16])  # <eos> before block 0
            seen.append(block)
    assert len(seen) == len(set(seen)) == (blocks // 3) * 3  # each block at most once per epoch
    assert seen != sorted(seen)  # shuffled
    # pure function of (epoch, index); two ranks of 3 rows = one process's global batch of 6 rows
    rank0 = LanguageModelingTask(task.cfg, str(wikitext_small), seed=3, rank=0, world_size=2).train_batch(2, 1)
    rank1 = LanguageModelingTask(task.cfg, str(wikitext_small), seed=3, rank=1, world_size=2).train_batch(2, 1)
    single = make_task(wikitext_small, tokens_per_sample=16, batch_size=6).train_batch(2, 1)
    joined = torch.cat([rank0["target"], rank1["target"]])
    torch.testing.assert_close(joined, single["target"])
    torch.testing.assert_close(task.train_batch(2, 1)["target"], task.train_batch(2, 1)["target"])
    assert not torch.equal(task.train_batch(2, 0)["target"], task.train_batch(3, 0)["target"])


def test_too_few_blocks_and_bad_context_are_config_errors(wikitext_small):
    with pytest.raises(
        ConfigError, match=r"the train split has \d+ blocks of task.tokens_per_sample=8192, fewer than one batch"
    ):
        make_task(wikitext_small, tokens_per_sample=8192, batch_size=2)
    task = make_task(wikitext_small, tokens_per_sample=16, context_window=16)
    with pytest.raises(ConfigError) as error:
        task.evaluate(tiny_model(task.vocab_size), "test", torch.device("cpu"))
    assert str(error.value) == "task.context_window=16 must be >= 0 and < task.tokens_per_sample=16"


# ---- evaluation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, length, context", [(245, 16, 12), (100, 16, 0), (5, 16, 12), (1000, 64, 48), (37, 8, 5)])
def test_context_window_plan_scores_every_target_once_with_fairseq_context(n, length, context):
    starts, first, end = context_window_plan(n, length, context)
    covered = np.zeros(n, dtype=int)
    step = length - context
    for k, (start, lo, hi) in enumerate(zip(starts, first, end)):
        covered[lo:hi] += 1
        assert lo == k * step and hi - lo <= step
        assert lo - start == min(context, lo)  # up to `context` tokens of history before the block
        assert hi - start <= length  # the window never exceeds tokens_per_sample inputs
    assert (covered == 1).all()


class Recorder(ToolkitModel):
    """A fake LM: its output at each position is (first input, this input, position), so `output_nll` can
    record exactly which inputs each scored target was conditioned on."""

    scores_own_output = True

    def __init__(self) -> None:
        super().__init__()
        self.records: list[np.ndarray] = []

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
        position = torch.arange(tokens.size(1)).expand_as(tokens)
        return torch.stack([tokens[:, :1].expand_as(tokens), tokens, position], dim=-1), {}

    def output_nll(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.records.append(torch.cat([output, target[:, None]], dim=1).numpy())
        return torch.ones(target.shape)


@pytest.mark.parametrize("length, context", [(16, 12), (16, 0), (8, 7)])
def test_scoring_conditions_each_target_on_its_fairseq_window(length, context):
    n = 203
    tokens = np.arange(10, 10 + n)  # token value 10 + t is target t: values identify stream positions
    stream = np.concatenate([[EOS], tokens])
    model = Recorder()
    total, count = score_with_context(model, tokens, length, context, batch_size=5)
    assert (total, count) == (float(n), n)
    rows = np.concatenate(model.records)
    targets = rows[:, 3] - 10
    np.testing.assert_array_equal(np.sort(targets), np.arange(n))  # every target once
    step = length - context
    start = np.maximum(targets // step * step - context, 0)  # fairseq: the block's start minus the context
    np.testing.assert_array_equal(rows[:, 0], stream[start])  # the window begins there
    np.testing.assert_array_equal(rows[:, 1], stream[targets])  # the last input is the previous token
    np.testing.assert_array_equal(rows[:, 2], targets - start)  # and the window is contiguous


def test_perplexity_equals_an_independent_computation(wikitext_small):
    task = make_task(wikitext_small, tokens_per_sample=16, context_window=11, eval_batch_size=4)
    model = tiny_model(task.vocab_size, adaptive_cutoffs=[20, 100])
    metrics = task.evaluate(model, "test", torch.device("cpu"))
    test = np.asarray(load_word_split(wikitext_small, "test"), dtype=np.int64)
    stream = torch.from_numpy(np.concatenate([[EOS], test]))
    # independent loop: target t conditioned on stream[a .. t], a = max(0, block start - context), full softmax
    nll = 0.0
    with torch.no_grad():
        for t in range(len(test)):
            a = max(0, t // 5 * 5 - 11)
            log_prob = model.output_log_prob(model(stream[None, a : t + 1])[0])[0, -1].double()
            nll -= log_prob[stream[t + 1]].item()
    assert metrics["tokens"] == len(test)
    assert (metrics["tokens_per_sample"], metrics["context_window"]) == (16, 11)
    assert math.isclose(metrics["loss"], nll / len(test), rel_tol=1e-5)
    assert math.isclose(metrics["ppl"], math.exp(nll / len(test)), rel_tol=1e-5)


def test_validation_uses_its_own_context_and_token_limit(wikitext_small):
    task = make_task(
        wikitext_small, tokens_per_sample=16, context_window=11, valid_context_window=0, valid_max_tokens=300
    )
    model = tiny_model(task.vocab_size, adaptive_cutoffs=[20, 100])
    metrics = task.evaluate(model, "valid", torch.device("cpu"), during_training=True)
    assert (metrics["tokens"], metrics["context_window"]) == (300, 0)
    with pytest.raises(ConfigError, match=r"^unknown subset 'dev' \(valid: train, valid, test\)$"):
        task.evaluate(model, "dev", torch.device("cpu"))
