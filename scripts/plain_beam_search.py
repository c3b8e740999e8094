"""A plain batched beam search loop, the reference that scripts/bench_generate.py times the toolkit against.

It is what one writes by hand around the same model: encode once, decode the newest token with the model's
key/value caches, torch.topk over beam x vocab per sentence, and index_select of the self-attention caches to
follow the surviving beams. It supports forced-length decoding only (eos masked before `length` tokens and forced
after them, pad and bos never generated), where every hypothesis ends at the same step, so no finished-hypothesis
bookkeeping is needed and the comparison measures the decoding loop itself.
"""

from __future__ import annotations

import math
from typing import Any, List

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def plain_beam_search(model: Any, src_tokens: Tensor, beam: int, length: int, lenpen: float = 1.0) -> List[dict]:
    """Best hypothesis per sentence of `src_tokens` (B, S): {"tokens": (length+1,) ending in eos, "score"}."""
    model.eval()
    bsz, device = src_tokens.size(0), src_tokens.device
    pad, eos, bos = model.pad_idx, model.eos_idx, model.bos_idx
    encoder_out = model.encode(src_tokens)
    expand = torch.arange(bsz, device=device).repeat_interleave(beam)
    state = model.init_decoder_state(encoder_out.index_select(expand))
    tokens = torch.full((bsz * beam, 1), model.decoder_start_idx, dtype=torch.long, device=device)
    scores = torch.zeros(bsz, beam, device=device)
    scores[:, 1:] = -math.inf  # identical beams at the start: expand beam 0 only
    row_base = (torch.arange(bsz, device=device) * beam)[:, None]
    for t in range(length + 1):
        lprobs = F.log_softmax(model.decode(tokens[:, -1:], None, state)[:, -1], dim=-1, dtype=torch.float32)
        vocab = lprobs.size(-1)
        if t < length:
            lprobs[:, [pad, bos, eos]] = -math.inf
        else:  # the last step: eos only
            eos_lp = lprobs[:, eos].clone()
            lprobs.fill_(-math.inf)
            lprobs[:, eos] = eos_lp
        total = (scores[:, :, None] + lprobs.view(bsz, beam, vocab)).view(bsz, beam * vocab)
        scores, idx = total.topk(beam, dim=1)
        rows = (row_base + idx // vocab).view(-1)
        tokens = torch.cat([tokens.index_select(0, rows), (idx % vocab).view(-1, 1)], dim=1)
        if t < length:
            for cache in state.self_caches:  # beams of a sentence share the source: cross caches stay
                for name in cache:
                    cache[name] = cache[name].index_select(0, rows)
    best = scores.argmax(1)
    final = scores.gather(1, best[:, None]).squeeze(1) / float(length + 1) ** lenpen
    chosen = tokens.view(bsz, beam, -1)[torch.arange(bsz, device=device), best, 1:]
    return [{"tokens": chosen[i].cpu(), "score": float(final[i])} for i in range(bsz)]
