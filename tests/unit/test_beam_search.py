"""Beam search against independent references: greedy decoding, a per-sentence list-based beam search with
full recomputation, and the model's own forward-pass log-probabilities."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from toolkit.errors import ConfigError
from toolkit.eval.beam_search import GenerationConfig, generate
from toolkit.eval.ngram_blocking import banned_token_mask
from toolkit.models.transformer import TransformerConfig, TransformerModel

BOS, PAD, EOS, V = 0, 1, 2, 24
START = EOS  # the decoder's first input (fairseq's convention, the model's default)


@pytest.fixture(scope="module")
def model() -> TransformerModel:
    """A tiny model trained briefly to reverse its input: it ends hypotheses at varied lengths."""
    torch.manual_seed(0)
    cfg = TransformerConfig(encoder_layers=1, decoder_layers=2, d_model=32, ffn_dim=64, n_heads=4, dropout=0.0)
    net = TransformerModel.build(cfg, SimpleNamespace(vocab_size=V, pad_idx=PAD, eos_idx=EOS, bos_idx=BOS))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        lens = torch.randint(2, 8, (16,), generator=g)
        body = torch.randint(3, V, (16, 8), generator=g)
        cols = torch.arange(9)[None]
        src = torch.where(cols < lens[:, None], torch.cat([body, body[:, :1]], 1), PAD)
        src[torch.arange(16), lens] = EOS
        reversed_body = body.gather(1, (lens[:, None] - 1 - cols[:, :8]).clamp(min=0))
        tgt = torch.where(cols < lens[:, None], torch.cat([reversed_body, body[:, :1]], 1), PAD)
        tgt[torch.arange(16), lens] = EOS
        prev = torch.cat([torch.full((16, 1), START), tgt[:, :-1]], 1).masked_fill(tgt.eq(PAD), PAD)
        logits, _ = net(src, prev)
        loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.double().eval()


def sources(n: int, seed: int = 1) -> torch.Tensor:
    """Right-padded sources of varied lengths, each ending with eos."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(2, 9, (n,), generator=g)
    src = torch.full((n, 10), PAD)
    for i, length in enumerate(lens.tolist()):
        src[i, :length] = torch.randint(3, V, (length,), generator=g)
        src[i, length] = EOS
    return src[:, : int(lens.max()) + 1]


def step_lprobs(model, src, prefix):
    """Log-probs of the next token after `prefix` by a full forward pass (no cache)."""
    with torch.no_grad():
        logits, _ = model(src[None], torch.tensor([[START] + prefix]))
    return F.log_softmax(logits[0, -1], dim=-1)


def constrained(lp, prefix, t, max_len, cfg):
    lp = lp.clone()
    eos_lp = float(lp[EOS])
    lp[PAD] = lp[BOS] = -math.inf
    if t < cfg.min_len:
        lp[EOS] = -math.inf
    n = cfg.no_repeat_ngram_size
    if n and len(prefix) >= n:
        seq = prefix
        grams = {tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)}
        for v in range(V):
            if tuple(seq[len(seq) - n + 1 :] + [v]) in grams:
                lp[v] = -math.inf
    if t >= max_len:
        lp[:] = -math.inf
        lp[EOS] = eos_lp
    return lp


def reference_beam(model, src, cfg):
    """fairseq's beam search written plainly for one sentence, recomputing every prefix from scratch."""
    k = cfg.beam
    max_len = int(cfg.max_len_a * int(src.ne(PAD).sum()) + cfg.max_len_b)
    beams, finished = [([], 0.0)], []
    for t in range(max_len + 1):
        cands = []
        for b, (prefix, score) in enumerate(beams):
            lp = constrained(step_lprobs(model, src, prefix), prefix, t, max_len, cfg)
            cands += [(score + float(lp[v]), b, v) for v in range(V)]
        top = sorted(cands, key=lambda c: -c[0])[: 2 * k]
        for score, b, v in top[:k]:
            if v == EOS and math.isfinite(score) and len(finished) < k:
                finished.append((beams[b][0] + [EOS], score / (t + 1) ** cfg.lenpen))
        if len(finished) >= k:
            break
        beams = [(beams[b][0] + [v], s) for s, b, v in top if v != EOS][:k]
    return sorted(finished, key=lambda h: -h[1])[: cfg.nbest]


def greedy(model, src, max_len, min_len):
    prefix, total = [], 0.0
    for t in range(max_len + 1):
        lp = step_lprobs(model, src, prefix)
        lp[PAD] = lp[BOS] = -math.inf
        if t < min_len:
            lp[EOS] = -math.inf
        token = EOS if t == max_len else int(lp.argmax())
        prefix.append(token)
        total += float(lp[token])
        if token == EOS:
            return prefix, total


def test_beam_one_is_greedy(model):
    src = sources(6)
    cfg = GenerationConfig(beam=1, max_len_a=1.0, max_len_b=2, min_len=1, lenpen=1.0)
    hyps = generate(model, src, cfg)
    for i in range(len(src)):
        max_len = int(src[i].ne(PAD).sum()) + 2
        tokens, total = greedy(model, src[i], max_len, 1)
        assert hyps[i][0].tokens.tolist() == tokens
        assert hyps[i][0].score == pytest.approx(total / len(tokens), abs=1e-9)


@pytest.mark.parametrize(
    "cfg",
    [
        GenerationConfig(beam=4, nbest=4, lenpen=0.6, max_len_a=1.2, max_len_b=3),
        GenerationConfig(beam=3, nbest=2, lenpen=1.3, max_len_a=0.0, max_len_b=5, min_len=3, no_repeat_ngram_size=2),
        GenerationConfig(beam=5, nbest=3, lenpen=1.0, max_len_b=12, no_repeat_ngram_size=1),
    ],
)
@pytest.mark.parametrize("shared", [False, True])
def test_nbest_lists_equal_a_plain_reference_beam_search(model, cfg, shared):
    src = sources(5, seed=2)
    hyps = generate(model, src, dataclasses.replace(cfg, shared_source_attention=shared))
    lengths = set()
    for i in range(len(src)):
        ref = reference_beam(model, src[i], cfg)
        assert [h.tokens.tolist() for h in hyps[i]] == [tokens for tokens, _ in ref]
        assert [h.score for h in hyps[i]] == pytest.approx([score for _, score in ref], abs=1e-9)
        lengths |= {len(h.tokens) for h in hyps[i]}
    assert len(lengths) > 1  # hypotheses end at varied steps: finalization and batch shrinking are exercised


def test_score_is_the_models_log_prob_over_length_penalty(model):
    src = sources(4, seed=3)
    cfg = GenerationConfig(beam=5, nbest=5, lenpen=0.6, max_len_a=1.0, max_len_b=4)
    for i, nbest in enumerate(generate(model, src, cfg)):
        assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
        for hyp in nbest:
            prev = torch.tensor([[START] + hyp.tokens[:-1].tolist()])
            with torch.no_grad():
                lprobs = F.log_softmax(model(src[i : i + 1], prev)[0][0], dim=-1)
            token_lp = lprobs.gather(1, hyp.tokens[:, None]).squeeze(1)
            torch.testing.assert_close(hyp.positional_scores, token_lp, rtol=0, atol=1e-9)
            assert hyp.tokens[-1] == EOS and EOS not in hyp.tokens[:-1].tolist()
            assert hyp.score == pytest.approx(float(token_lp.sum()) / len(hyp.tokens) ** 0.6, abs=1e-9)


def test_min_and_max_length_and_ngram_blocking_hold(model):
    src = sources(6, seed=4)
    for hyps in generate(model, src, GenerationConfig(beam=4, nbest=4, min_len=6, max_len_b=9)):
        assert all(len(h.tokens) - 1 >= 6 for h in hyps)
    for hyps in generate(model, src, GenerationConfig(beam=4, nbest=4, max_len_b=3)):
        assert all(len(h.tokens) - 1 <= 3 for h in hyps) and len(hyps) == 4
    for hyps in generate(model, src, GenerationConfig(beam=4, nbest=4, max_len_b=15, no_repeat_ngram_size=2)):
        for h in hyps:
            seq = h.tokens.tolist()
            bigrams = list(zip(seq, seq[1:]))
            assert len(bigrams) == len(set(bigrams))


def test_source_padding_and_batch_company_do_not_change_results(model):
    src = sources(8, seed=5)
    short = int(src.ne(PAD).sum(1).argmin())
    alone = src[short : short + 1, : int(src[short].ne(PAD).sum())]
    cfg = GenerationConfig(beam=4, nbest=4, lenpen=0.6, max_len_a=1.0, max_len_b=3)
    single = generate(model, alone, cfg)[0]
    for batch in (src, torch.cat([torch.full((len(src), 3), PAD), src], 1)):  # right- and left-padded
        together = generate(model, batch, cfg)[short]
        assert [h.tokens.tolist() for h in together] == [h.tokens.tolist() for h in single]
        assert [h.score for h in together] == pytest.approx([h.score for h in single], abs=1e-9)


def test_banned_token_mask_matches_brute_force():
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 4, (6, 12), generator=g)
    for n in (1, 2, 3):
        mask = banned_token_mask(tokens, n, 5)
        for r, row in enumerate(tokens.tolist()):
            grams = {tuple(row[i : i + n]) for i in range(len(row) - n + 1)}
            tail = row[len(row) - n + 1 :] if n > 1 else []
            assert mask[r].tolist() == [tuple(tail + [v]) in grams for v in range(5)]
    assert not banned_token_mask(tokens[:, :1], 2, 5).any()


def test_config_errors_and_training_mode_restored(model):
    with pytest.raises(ConfigError, match=r"^generation.nbest must be between 1 and generation.beam=2, got 3$"):
        generate(model, sources(1), GenerationConfig(beam=2, nbest=3))
    with pytest.raises(ConfigError, match=r"^generation.beam must be >= 1, got 0$"):
        generate(model, sources(1), GenerationConfig(beam=0))
    model.train()
    generate(model, sources(2), GenerationConfig(beam=2, max_len_b=3))
    assert model.training
    model.eval()
