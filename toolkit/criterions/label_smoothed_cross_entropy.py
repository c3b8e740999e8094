"""Label-smoothed cross-entropy (Szegedy et al. 2016), with fairseq's exact definition, reporting loss and nll.

For one target token y with log-probabilities lp over V classes and eps_i = eps / (V - 1):

    loss = (1 - eps - eps_i) * (-lp[y]) + eps_i * sum_v (-lp[v])
         = -[(1 - eps) * lp[y] + eps_i * sum_{v != y} lp[v]]

i.e. cross-entropy against the target distribution q with q[y] = 1 - eps and q[v] = eps / (V - 1) elsewhere.
(PyTorch's `label_smoothing=s` spreads s/V over all classes, y included: the same loss with s = eps * V / (V - 1).)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.aux_weights import AuxWeights
from toolkit.config.ranges import bounded
from toolkit.criterions.aux_terms import weighted_aux
from toolkit.registry import CRITERIONS


def label_smoothed_nll(lprobs: Tensor, target: Tensor, epsilon: float, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(loss_sum, nll_sum) over the tokens whose target is not `ignore_index`.

    lprobs: (..., V) log-probabilities; target: (...) class indices.
    """
    lprobs = lprobs.reshape(-1, lprobs.size(-1))
    target = target.reshape(-1)
    keep = target.ne(ignore_index)
    safe_target = target.masked_fill(~keep, 0)  # any valid index: the row is zeroed below
    nll = -lprobs.gather(1, safe_target[:, None]).squeeze(1).masked_fill(~keep, 0.0)
    smooth = -lprobs.sum(dim=1).masked_fill(~keep, 0.0)
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    return loss.sum(), nll.sum()


@dataclass
class LabelSmoothedCrossEntropyConfig:
    name: str = "label_smoothed_cross_entropy"
    label_smoothing: float = bounded(0.1, ge=0, lt=1)
    """eps: probability mass moved from the target to the other V - 1 classes, evenly."""


@CRITERIONS.register("label_smoothed_cross_entropy", LabelSmoothedCrossEntropyConfig)
class LabelSmoothedCrossEntropyCriterion:
    """loss = smoothed token loss sum + ntokens * sum_k w_k(step) * aux_k; sample_size = ntokens (non-pad
    target tokens). Logs `loss` and `nll_loss` (unsmoothed, for perplexity) as sums over tokens."""

    def __init__(self, cfg: Any, task: Any, aux_weights: AuxWeights | None = None):
        self.cfg, self.task, self.aux_weights = cfg, task, aux_weights
        self.ignore_index = task.pad_idx if task.pad_idx is not None else -100

    def __call__(self, model: nn.Module, batch: Dict[str, Any], step: int) -> tuple[Tensor, int, Dict[str, float]]:
        logits, aux = model(**batch["net_input"])
        lprobs = F.log_softmax(logits.float(), dim=-1)
        loss, nll = label_smoothed_nll(lprobs, batch["target"], self.cfg.label_smoothing, self.ignore_index)
        ntokens = int(batch["ntokens"])
        aux_total, logs = weighted_aux(aux, self.aux_weights, step)
        loss = loss + ntokens * aux_total
        logs.update({"loss": float(loss.detach()), "nll_loss": float(nll.detach()), "ntokens": ntokens})
        return loss, ntokens, logs
