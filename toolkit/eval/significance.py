"""Is system A better than system B on the same test set? Paired significance tests.

- BLEU: sacreBLEU's own paired bootstrap resampling (`bs`, Koehn 2004, as Moses'
  bootstrap-hypothesis-difference-significance.pl) and approximate randomization (`ar`, Riezler & Maxwell
  2005), on the text that the chosen BLEU protocol scores (toolkit.eval.bleu.prepare).
- Language models: a paired bootstrap over blocks of per-token NLL (the files `tk-eval save_nll=FILE` writes).
  Blocks of consecutive tokens (documents, or a fixed length) are resampled with replacement, the same blocks
  for both systems; the statistic is the difference in mean NLL per token, and the p-value is computed as
  sacreBLEU's paired bootstrap computes it (centred sample differences vs the observed one, (c + 1) / (n + 1)).

Two systems with exactly the same score get p = 1: sacreBLEU's counting (strict `>`) would give 1 / (n + 1)
for a difference of 0, and no difference is never significant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest

from toolkit.errors import ConfigError, DataError
from toolkit.eval.bleu import PROTOCOLS, corpus_bleu, prepare

TESTS = ("bs", "ar")  # paired bootstrap resampling, approximate randomization
DEFAULT_SAMPLES = {"bs": 1000, "ar": 10000}  # sacreBLEU's defaults
DEFAULT_SEED = 12345  # sacreBLEU's default (SACREBLEU_SEED)


@dataclass
class PairedResult:
    """The outcome of a paired test of `system` against `baseline` (higher is better for BLEU, lower for NLL)."""

    score: float  # the system's score (BLEU, or mean NLL per token)
    baseline_score: float
    p_value: float
    test: str  # 'bs' or 'ar'
    n_samples: int

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def bleu_paired_test(
    hypotheses: Sequence[str],
    baseline: Sequence[str],
    references: Sequence[str],
    protocol: str = "sacrebleu",
    lang: str = "en",
    test: str = "bs",
    n_samples: int = 0,
    seed: int = DEFAULT_SEED,
) -> PairedResult:
    """sacreBLEU's paired test of `hypotheses` against `baseline` under a BLEU protocol (0 samples: its default)."""
    if test not in TESTS:
        raise ConfigError(f"test: unknown '{test}'; valid: {', '.join(TESTS)}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"bleu_protocol: unknown '{protocol}'; valid: {', '.join(PROTOCOLS)}")
    if not len(hypotheses) == len(baseline) == len(references):
        raise DataError(
            f"{len(hypotheses)} hypotheses, {len(baseline)} baseline lines and {len(references)} references: "
            "the counts must match"
        )
    n_samples = n_samples or DEFAULT_SAMPLES[test]
    system_score = corpus_bleu(hypotheses, references, protocol, lang).score
    baseline_score = corpus_bleu(baseline, references, protocol, lang).score
    if system_score == baseline_score:
        return PairedResult(system_score, baseline_score, 1.0, test, n_samples)
    metric = BLEU(tokenize="13a" if protocol == "sacrebleu" else "none", force=protocol != "sacrebleu")
    systems = [("baseline", prepare(baseline, protocol, lang)), ("system", prepare(hypotheses, protocol, lang))]
    paired = PairedTest(
        systems, {"BLEU": metric}, [prepare(references, protocol, lang)], test_type=test, n_samples=n_samples
    )
    paired._seed = seed  # sacreBLEU reads its seed from SACREBLEU_SEED; set it here without touching the environment
    _, scores = paired()
    result = scores["BLEU"][1]
    return PairedResult(result.score, baseline_score, float(result.p_value), test, n_samples)


def block_sums(nll: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block of `block_size` consecutive tokens (the last may be shorter): summed NLL and token count."""
    starts = np.arange(0, len(nll), block_size)
    return np.add.reduceat(nll, starts), np.diff(np.append(starts, len(nll)))


def lm_paired_bootstrap(
    nll: np.ndarray,
    baseline_nll: np.ndarray,
    block_size: int = 1000,
    n_samples: int = 1000,
    seed: int = DEFAULT_SEED,
) -> PairedResult:
    """Paired bootstrap over blocks of per-token NLL (nats) of two LMs on the same tokens; scores are mean NLL."""
    nll, baseline_nll = np.asarray(nll, dtype=np.float64), np.asarray(baseline_nll, dtype=np.float64)
    if nll.shape != baseline_nll.shape or nll.ndim != 1 or len(nll) == 0:
        raise DataError(
            f"the per-token NLLs cover {len(nll)} and {len(baseline_nll)} tokens: both must score the same tokens"
        )
    if block_size < 1:
        raise ConfigError(f"block_size={block_size} must be positive")
    sums, counts = block_sums(nll, block_size)
    baseline_sums, _ = block_sums(baseline_nll, block_size)
    score, baseline_score = float(nll.mean()), float(baseline_nll.mean())
    difference = abs(score - baseline_score)
    if difference == 0.0:
        return PairedResult(score, baseline_score, 1.0, "bs", n_samples)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(sums), size=(n_samples, len(sums)))
    tokens = counts[index].sum(1)
    sample_differences = np.abs(sums[index].sum(1) / tokens - baseline_sums[index].sum(1) / tokens)
    centred = sample_differences - sample_differences.mean()
    p_value = (int(np.sum(centred > difference)) + 1) / (n_samples + 1)
    return PairedResult(score, baseline_score, p_value, "bs", n_samples)


def load_token_nll(path: str) -> np.ndarray:
    """A per-token NLL file written by `tk-eval save_nll=FILE` (.npy of float64; no pickled objects)."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (ValueError, OSError) as error:
        raise DataError(f"{path}: not a per-token NLL file written by tk-eval save_nll=FILE ({error})") from None
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{path}: expected a 1-D float array of per-token NLLs, found {array.dtype} {array.shape}")
    if not np.all(np.isfinite(array)):
        raise DataError(f"{path}: holds non-finite NLLs")
    return array


def perplexity(mean_nll: float) -> float:
    return math.exp(min(mean_nll, 50.0))
