"""Next-token cross-entropy, reporting loss, nll and bits (nll / ln 2) per token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.aux_weights import AuxWeights, active_aux_terms
from toolkit.criterions.aux_terms import weighted_aux
from toolkit.models.base import ToolkitModel
from toolkit.registry import CRITERIONS


@dataclass
class CrossEntropyConfig:
    name: str = "cross_entropy"


@CRITERIONS.register("cross_entropy", CrossEntropyConfig)
class CrossEntropyCriterion:
    """loss = sum of token NLLs + ntokens * sum_k w_k(step) * aux_k; sample_size = ntokens.

    The trainer divides gradients by the total sample size of an update (over micro-batches and ranks),
    so accumulation and data parallelism give the same update as one large batch.
    """

    def __init__(self, cfg: Any, task: Any, aux_weights: AuxWeights | None = None):
        self.cfg, self.task, self.aux_weights = cfg, task, aux_weights
        self.ignore_index = task.pad_idx if task.pad_idx is not None else -100

    def token_nll(self, model: ToolkitModel, output: Tensor, target: Tensor) -> Tensor:
        """Summed next-token NLL; models with their own output layer (adaptive softmax) score it themselves."""
        if model.scores_own_output:
            return model.output_nll(output, target).sum()
        return F.cross_entropy(
            output.reshape(-1, output.size(-1)).float(),
            target.reshape(-1),
            ignore_index=self.ignore_index,
            reduction="sum",
        )

    def __call__(self, model: nn.Module, batch: Dict[str, Any], step: int) -> tuple[Tensor, int, Dict[str, float]]:
        """`model`: a ToolkitModel, or its DDP wrapper (whose `module` is the model)."""
        extra = {}
        inner: ToolkitModel = getattr(model, "module", model)  # the bare model under DDP
        aux_names = inner.aux_term_names()
        if aux_names:
            # only terms with a non-zero weight now are computed (and so get gradient work)
            extra["active_aux"] = active_aux_terms(aux_names, self.aux_weights, step)
        output, aux = model(**batch["net_input"], target=batch["target"], **extra)
        ntokens = int(batch["ntokens"])
        nll = self.token_nll(inner, output, batch["target"])
        aux_total, logs = weighted_aux(aux, self.aux_weights, step)
        for name in aux_names:  # a term switched off still shows its weight (0) in the logs
            logs.setdefault(f"weight/{name}", 0.0)
        loss = nll + ntokens * aux_total
        logs.update({"loss": float(loss.detach()), "nll_loss": float(nll.detach()), "ntokens": ntokens})
        return loss, ntokens, logs
