"""Per-token metrics of a criterion's summed logs (`loss`, `nll_loss`: sums over tokens; `ntokens`)."""

from __future__ import annotations

import math
from typing import Dict


def summarize(logs: Dict[str, float]) -> Dict[str, float]:
    """Per-token metrics from summed logs: loss, nll, ppl and bits per token."""
    n = max(logs.get("ntokens", 0), 1)
    nll = logs.get("nll_loss", 0.0) / n
    return {"loss": logs.get("loss", 0.0) / n, "nll": nll, "bpc": nll / math.log(2), "ppl": math.exp(min(nll, 50))}
