"""Batched beam search with incremental decoding (fairseq's algorithm).

All sentences and beams advance together as rows of one batch; the only Python loop is over time steps.
At each step every live hypothesis proposes its continuations, the best 2*beam candidates per sentence are
kept, those ending in eos among the best `beam` are finalized (score = sum of log-probs / length**lenpen,
length counting eos), and the best `beam` others go on. A sentence is done once it has `beam` finalized
hypotheses or reaches its maximum length; done sentences leave the batch.

The model provides `encode(src)`, `init_decoder_state(encoder_out)` (with `beams=k` when
`shared_source_attention` is set), `decode(tokens, None, state)` (logits of the newest token with cached
keys/values), `reorder_decoder_state(state, order, static)` and the indices
`pad_idx`, `eos_idx`, `bos_idx`, `decoder_start_idx` (the first decoder input, as in training); optionally
`max_decoder_positions()`. pad and bos are never generated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from toolkit.config.ranges import bounded
from toolkit.errors import ConfigError
from toolkit.eval.ngram_blocking import banned_token_mask

NEG_INF = -math.inf


@dataclass
class GenerationConfig:
    """Beam search options (names and meanings as in fairseq-generate)."""

    beam: int = bounded(5, ge=1)
    """Hypotheses kept per sentence; 1 = greedy decoding."""
    nbest: int = bounded(1, ge=1)
    """Hypotheses returned per sentence, best first (at most `beam`)."""
    lenpen: float = 1.0
    """Length penalty: final score = sum of token log-probs / length**lenpen (length includes eos)."""
    max_len_a: float = bounded(0.0, ge=0)
    """Maximum output length (tokens before eos) = max_len_a * source length + max_len_b, per sentence."""
    max_len_b: int = bounded(200, ge=0)
    """See max_len_a. The source length counts non-padding tokens (its eos included)."""
    min_len: int = bounded(1, ge=0)
    """Minimum number of tokens before eos."""
    no_repeat_ngram_size: int = bounded(0, ge=0)
    """Forbid repeating any n-gram of this size within a hypothesis; 0 = off."""
    shared_source_attention: bool = False
    """The beams of a sentence attend together to one copy of its encoder keys/values instead of one copy per
    beam (less time and memory at beam > 1). The attention kernel then sums in another order: scores differ
    from the default's in the last bits, so hypotheses whose scores nearly tie can swap."""


@dataclass
class Hypothesis:
    """One finished translation."""

    tokens: Tensor  # (L,) token ids, ending with eos
    score: float  # sum(positional_scores) / L**lenpen
    positional_scores: Tensor  # (L,) log-probability of each token, eos included


def validate(cfg: GenerationConfig) -> None:
    if cfg.beam < 1:
        raise ConfigError(f"generation.beam must be >= 1, got {cfg.beam}")
    if not 1 <= cfg.nbest <= cfg.beam:
        raise ConfigError(f"generation.nbest must be between 1 and generation.beam={cfg.beam}, got {cfg.nbest}")
    if cfg.min_len < 0 or cfg.no_repeat_ngram_size < 0:
        raise ConfigError("generation.min_len and generation.no_repeat_ngram_size must be >= 0")


@torch.no_grad()
def generate(model: Any, src_tokens: Tensor, cfg: GenerationConfig) -> List[List[Hypothesis]]:
    """n-best hypotheses for each row of `src_tokens` (B, S), in input order; the model runs in eval mode."""
    validate(cfg)
    was_training = model.training
    model.eval()
    try:
        return _beam_search(model, src_tokens, cfg)
    finally:
        model.train(was_training)


def _max_lengths(model: Any, src_tokens: Tensor, cfg: GenerationConfig) -> Tensor:
    src_lens = src_tokens.ne(model.pad_idx).sum(1)
    max_lens = (cfg.max_len_a * src_lens.double() + cfg.max_len_b).floor().long()
    if hasattr(model, "max_decoder_positions"):
        # the decoder is fed the start symbol + max_len tokens
        max_lens = max_lens.clamp(max=model.max_decoder_positions() - 1)
    return max_lens.clamp(min=0)


def _beam_search(model: Any, src_tokens: Tensor, cfg: GenerationConfig) -> List[List[Hypothesis]]:
    device, bsz, k = src_tokens.device, src_tokens.size(0), cfg.beam
    if bsz == 0:
        return []
    pad, eos, bos = model.pad_idx, model.eos_idx, model.bos_idx
    param_dtype = next(model.parameters()).dtype
    score_dtype = torch.float64 if param_dtype == torch.float64 else torch.float32
    max_lens = _max_lengths(model, src_tokens, cfg)  # per active sentence
    max_steps = int(max_lens.max())

    shared = cfg.shared_source_attention and k > 1
    state = model.init_decoder_state(model.encode(src_tokens), **({"beams": k} if shared else {}))
    # B -> B*k rows; with a shared source, its encoder output and keys/values stay at B rows
    model.reorder_decoder_state(state, torch.arange(bsz, device=device).repeat_interleave(k), static=not shared)
    sent_ids = torch.arange(bsz, device=device)  # active sentence -> input row
    tokens = torch.full((bsz * k, 1), model.decoder_start_idx, dtype=torch.long, device=device)
    pos_scores = torch.zeros(bsz * k, 0, dtype=score_dtype, device=device)
    cum = torch.zeros(bsz, k, dtype=score_dtype, device=device)
    cum[:, 1:] = NEG_INF  # all beams start identical: only beam 0 may expand at the first step

    # finalized hypotheses, by input row and slot
    fin_tokens = torch.full((bsz, k, max_steps + 1), pad, dtype=torch.long, device=device)
    fin_pos = torch.zeros(bsz, k, max_steps + 1, dtype=score_dtype, device=device)
    fin_len = torch.zeros(bsz, k, dtype=torch.long, device=device)
    fin_score = torch.full((bsz, k), NEG_INF, dtype=score_dtype, device=device)
    fin_count = torch.zeros(bsz, dtype=torch.long, device=device)
    cand_order = torch.arange(2 * k, device=device)
    # per-step constants, recomputed only when sentences leave the batch
    row_max_lens, first_row = max_lens.repeat_interleave(k), torch.arange(bsz, device=device)[:, None] * k
    first_forced = int(max_lens.min())  # no row is at its maximum length before this step

    for t in range(max_steps + 1):  # t = tokens generated so far
        logits = model.decode(tokens[:, -1:], None, state)[:, -1]
        lprobs = F.log_softmax(logits, dim=-1, dtype=score_dtype)
        n_active, vocab = cum.size(0), lprobs.size(-1)
        lprobs = _apply_constraints(lprobs, tokens, t, row_max_lens if t >= first_forced else None, cfg, pad, eos, bos)

        cand = (cum[:, :, None] + lprobs.view(n_active, k, vocab)).view(n_active, k * vocab)
        cand_scores, cand_idx = cand.topk(min(2 * k, k * vocab), dim=1)
        cand_tokens = cand_idx % vocab
        cand_rows = first_row + cand_idx // vocab
        cand_lp = lprobs.view(n_active, k * vocab).gather(1, cand_idx)

        # finalize eos among the best k candidates, in score order, up to k per sentence
        eos_top = cand_tokens[:, :k].eq(eos) & cand_scores[:, :k].isfinite()
        rank = eos_top.cumsum(1) - 1
        accept = eos_top & (rank < (k - fin_count[sent_ids])[:, None])
        if bool(accept.any()):
            s, c = accept.nonzero(as_tuple=True)
            orig, rows = sent_ids[s], cand_rows[s, c]
            slot = fin_count[orig] + rank[s, c]
            fin_tokens[orig, slot, :t] = tokens[rows, 1:]
            fin_tokens[orig, slot, t] = eos
            fin_pos[orig, slot, :t] = pos_scores[rows]
            fin_pos[orig, slot, t] = cand_lp[s, c]
            fin_len[orig, slot] = t + 1
            fin_score[orig, slot] = cand_scores[s, c] / float(t + 1) ** cfg.lenpen
            fin_count.index_add_(0, orig, torch.ones_like(orig))

        done = fin_count[sent_ids].ge(k) | max_lens.le(t)
        if t == max_steps or bool(done.all()):
            break
        # the best k candidates that do not end in eos go on (eos ones sort after all others)
        _, sel = (cand_order[: cand_idx.size(1)] + 2 * k * cand_tokens.eq(eos)).topk(k, dim=1, largest=False)
        next_rows, cum = cand_rows.gather(1, sel), cand_scores.gather(1, sel)
        next_tokens, next_lp = cand_tokens.gather(1, sel), cand_lp.gather(1, sel)
        shrink = bool(done.any())
        if shrink:
            keep = (~done).nonzero().squeeze(1)
            next_rows, cum, next_tokens, next_lp = next_rows[keep], cum[keep], next_tokens[keep], next_lp[keep]
            sent_ids, max_lens = sent_ids[keep], max_lens[keep]
            row_max_lens, first_row = max_lens.repeat_interleave(k), first_row[: keep.numel()]
            first_forced = int(max_lens.min())
        order = next_rows.view(-1)
        if k == 1 and not shrink:  # greedy: every row continues itself, nothing moves
            tokens = torch.cat([tokens, next_tokens.view(-1, 1)], dim=1)
            pos_scores = torch.cat([pos_scores, next_lp.view(-1, 1)], dim=1)
            continue
        tokens = torch.cat([tokens[order], next_tokens.view(-1, 1)], dim=1)
        pos_scores = torch.cat([pos_scores[order], next_lp.view(-1, 1)], dim=1)
        # beams of one sentence share their source: encoder-side caches move only when sentences leave
        model.reorder_decoder_state(state, order, static=shrink)

    return _collect(fin_tokens, fin_pos, fin_len, fin_score, cfg.nbest)


def _apply_constraints(
    lprobs: Tensor,
    tokens: Tensor,
    t: int,
    max_lens: Optional[Tensor],
    cfg: GenerationConfig,
    pad: int,
    eos: int,
    bos: int,
) -> Tensor:
    """Mask impossible tokens: pad and bos always, eos before min_len, n-gram repeats; force eos at max length.
    `max_lens` (per row) is None at steps where no row can be at its maximum length."""
    at_max = max_lens.le(t) if max_lens is not None else None
    # rare: only at a sentence's last step, so skip the (rows, vocab) pass otherwise
    force_eos = at_max is not None and bool(at_max.any())
    eos_lp = lprobs[:, eos].clone() if force_eos else None
    lprobs[:, pad] = NEG_INF
    if bos != eos:
        lprobs[:, bos] = NEG_INF
    if t < cfg.min_len:
        lprobs[:, eos] = NEG_INF
    if cfg.no_repeat_ngram_size > 0:
        # n-grams of the hypothesis only: the start symbol (eos by default) is not part of it
        banned = banned_token_mask(tokens[:, 1:], cfg.no_repeat_ngram_size, lprobs.size(1))
        lprobs.masked_fill_(banned, NEG_INF)
    if force_eos:
        lprobs[at_max] = NEG_INF
        lprobs[:, eos] = torch.where(at_max, eos_lp, lprobs[:, eos])
    return lprobs


def _collect(
    fin_tokens: Tensor, fin_pos: Tensor, fin_len: Tensor, fin_score: Tensor, nbest: int
) -> List[List[Hypothesis]]:
    """Sort each sentence's finalized hypotheses by score and build the n-best lists (on the CPU)."""
    order = fin_score.argsort(dim=1, descending=True, stable=True)[:, :nbest]
    tokens = fin_tokens.gather(1, order[:, :, None].expand(-1, -1, fin_tokens.size(2))).cpu()
    pos = fin_pos.gather(1, order[:, :, None].expand(-1, -1, fin_pos.size(2))).cpu()
    lens, scores = fin_len.gather(1, order).tolist(), fin_score.gather(1, order).tolist()
    return [
        [
            Hypothesis(tokens[i, j, : lens[i][j]], scores[i][j], pos[i, j, : lens[i][j]])
            for j in range(len(scores[i]))
            if math.isfinite(scores[i][j])
        ]
        for i in range(len(scores))
    ]
