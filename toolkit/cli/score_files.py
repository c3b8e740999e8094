"""tk-eval on files: score any system's output the same way, and test whether two systems differ.

  tk-eval hypotheses=FILE references=FILE [bleu_protocol=sacrebleu|tokenized_lower|tokenized_compound] [lang=en]
  tk-eval hypotheses=A baseline=B references=R [test=bs|ar] [n_samples=N] [seed=N]
  tk-eval nll=A.npy baseline_nll=B.npy [block_size=1000] [n_samples=1000] [seed=N]

BLEU is corpus BLEU under one of the three protocols (toolkit.eval.bleu; the signature is printed, as sacrebleu
and fairseq-score do). With `baseline=`, sacreBLEU's paired bootstrap resampling (`test=bs`, default) or
approximate randomization (`test=ar`) tests the difference. `nll=`/`baseline_nll=` compare two language
models by the per-token NLL files `tk-eval checkpoint=... save_nll=FILE` writes (same data, same protocol), with a
paired bootstrap over blocks of `block_size` tokens. Output: a table, then one JSON line (the last stdout line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional

from toolkit.config.cli_overrides import build_config
from toolkit.errors import ConfigError

FILE_KEYS = ("hypotheses=", "nll=")  # arguments that make tk-eval score files instead of a checkpoint


@dataclass
class ScoreFilesConfig:
    hypotheses: Optional[str] = None  # system output, one detokenized sentence per line
    references: Optional[str] = None  # references, line by line with the hypotheses
    baseline: Optional[str] = None  # a second system's output: paired significance test against it
    bleu_protocol: str = "sacrebleu"  # 'sacrebleu' (13a), 'tokenized_lower' (IWSLT14), 'tokenized_compound' (WMT14)
    lang: str = "en"  # target language (Moses tokenization of the tokenized protocols)
    test: str = "bs"  # 'bs' (paired bootstrap resampling) or 'ar' (approximate randomization)
    n_samples: int = 0  # resamples / trials (0 = sacreBLEU's defaults: 1000 for bs, 10000 for ar)
    seed: int = 12345  # seed of the resampling (sacreBLEU's default)
    nll: Optional[str] = None  # per-token NLL of a language model (tk-eval save_nll=FILE)
    baseline_nll: Optional[str] = None  # the baseline model's per-token NLL on the same tokens
    block_size: int = 1000  # LM bootstrap: tokens per resampled block
    alpha: float = 0.05  # significance level of the table's marker and the JSON's "significant"
    results: Optional[str] = None  # also write the JSON line to this file


def wants_file_scoring(args: list[str]) -> bool:
    return any(arg.startswith(FILE_KEYS) for arg in args)


def score_files(args: list[str]) -> int:
    cfg = build_config(ScoreFilesConfig, args)
    if cfg.nll is not None:
        summary = _compare_lms(cfg)
    else:
        summary = _score_bleu(cfg)
    line = json.dumps(summary)
    if cfg.results:
        from toolkit.data.atomic import atomic_write_bytes

        atomic_write_bytes(cfg.results, (line + "\n").encode())
    print(line)
    return 0


def _score_bleu(cfg: Any) -> Dict[str, Any]:
    from toolkit.eval.bleu import corpus_bleu, read_lines
    from toolkit.eval.significance import bleu_paired_test

    if cfg.references is None:
        raise ConfigError("missing required value for key 'references' (the reference file of hypotheses=)")
    hyps, refs = read_lines(cfg.hypotheses), read_lines(cfg.references)
    _same_length(cfg.hypotheses, hyps, cfg.references, refs)
    result = corpus_bleu(hyps, refs, cfg.bleu_protocol, cfg.lang)
    summary: Dict[str, Any] = {
        "bleu": result.score,
        "signature": result.signature,
        "details": result.details,
        "protocol": cfg.bleu_protocol,
        "sentences": len(hyps),
    }
    if cfg.baseline is None:
        print(result.format())
        return summary
    base = read_lines(cfg.baseline)
    _same_length(cfg.baseline, base, cfg.references, refs)
    paired = bleu_paired_test(hyps, base, refs, cfg.bleu_protocol, cfg.lang, cfg.test, cfg.n_samples, cfg.seed)
    _table("BLEU", cfg.baseline, cfg.hypotheses, paired, cfg.alpha, digits=2)
    print(f"[{result.signature}]")
    summary.update(
        {
            "baseline_bleu": paired.baseline_score,
            "p_value": paired.p_value,
            "test": paired.test,
            "n_samples": paired.n_samples,
            "significant": paired.significant(cfg.alpha),
            "alpha": cfg.alpha,
        }
    )
    return summary


def _compare_lms(cfg: Any) -> Dict[str, Any]:
    from toolkit.eval.significance import lm_paired_bootstrap, load_token_nll, perplexity

    if cfg.baseline_nll is None:
        raise ConfigError("missing required value for key 'baseline_nll' (the per-token NLL file to compare nll= with)")
    nll, base = load_token_nll(cfg.nll), load_token_nll(cfg.baseline_nll)
    paired = lm_paired_bootstrap(nll, base, cfg.block_size, cfg.n_samples or 1000, cfg.seed)
    _table("NLL/token", cfg.baseline_nll, cfg.nll, paired, cfg.alpha, digits=4)
    return {
        "nll": paired.score,
        "ppl": perplexity(paired.score),
        "baseline_nll": paired.baseline_score,
        "baseline_ppl": perplexity(paired.baseline_score),
        "tokens": int(len(nll)),
        "block_size": cfg.block_size,
        "p_value": paired.p_value,
        "test": "bs",
        "n_samples": paired.n_samples,
        "significant": paired.significant(cfg.alpha),
        "alpha": cfg.alpha,
    }


def _same_length(name_a: str, a: list, name_b: str, b: list) -> None:
    if len(a) != len(b):
        from toolkit.errors import DataError

        raise DataError(f"{name_a} has {len(a)} lines but {name_b} has {len(b)}: the counts must match")


def _table(metric: str, baseline: str, system: str, paired: Any, alpha: float, digits: int) -> None:
    marker = " *" if paired.significant(alpha) else ""
    width = max(len(baseline), len(system), 8)
    print(f"{'system':<{width}}  {metric:>10}  p-value ({paired.test}, {paired.n_samples} samples)")
    print(f"{baseline:<{width}}  {paired.baseline_score:>10.{digits}f}  (baseline)")
    print(f"{system:<{width}}  {paired.score:>10.{digits}f}  {paired.p_value:.4f}{marker}")
    print(f"* p < {alpha}: the difference is significant")


def check_token_nll(task: Any, path: Optional[str]) -> None:
    """save_nll= is for language models (per-token NLL); stop before scoring otherwise."""
    if path is not None and task.valid_metric not in ("ppl", "bpc"):
        raise ConfigError(
            f"save_nll={path}: per-token NLLs are written for language-model tasks only (task '{task.cfg.name}')"
        )


def save_token_nll(task: Any, path: str) -> str:
    """Write the task's last per-target NLLs as .npy (float64), atomically; returns the path."""
    import io

    import numpy as np

    from toolkit.data.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(task.token_nll, dtype=np.float64), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
    return str(path)
