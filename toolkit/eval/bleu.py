"""Corpus BLEU with sacreBLEU, under the evaluation protocols of the translation papers.

- 'sacrebleu': detokenized text, sacreBLEU's 13a tokenization (the reportable default; signature printed).
- 'tokenized_lower' (IWSLT14 de-en, fairseq's recipe): Moses-tokenize both sides (sacremoses), lowercase,
  then BLEU on the whitespace tokens (sacreBLEU with tokenize='none', i.e. multi-bleu's numbers).
- 'tokenized_compound' (WMT14 en-de, Vaswani et al. / tensor2tensor's get_ende_bleu.sh): Moses-tokenize
  both sides, split hyphenated compounds a-b -> a ##AT##-##AT## b, then BLEU with tokenize='none'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import List, Sequence

from sacrebleu.metrics import BLEU
from sacremoses import MosesTokenizer

from toolkit.errors import ConfigError, DataError


class BleuProtocol(StrEnum):
    """How hypotheses and references are tokenized for BLEU."""

    sacrebleu = "sacrebleu"  # detokenized text, sacrebleu's 13a tokenizer
    tokenized_lower = "tokenized_lower"  # IWSLT14: Moses-tokenized, lowercased
    tokenized_compound = "tokenized_compound"  # WMT14: Moses-tokenized, compounds split (get_ende_bleu.sh)


PROTOCOLS = tuple(protocol.value for protocol in BleuProtocol)
# get_ende_bleu.sh runs `perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'` on bytes: \S is "not ASCII space"
_COMPOUND = re.compile(rb"(\S)-(\S)")


@dataclass
class BleuResult:
    """A corpus BLEU score with what is needed to report it."""

    score: float  # BLEU in [0, 100]
    signature: str  # protocol and sacreBLEU signature, e.g. 'nrefs:1|case:mixed|eff:no|tok:13a|...'
    details: str  # sacreBLEU's line: 'BLEU = 27.30 58.1/33.2/20.9/13.6 (BP = ... hyp_len = ... ref_len = ...)'

    def format(self) -> str:
        return f"{self.details} [{self.signature}]"


def moses_tokenize(lines: Sequence[str], lang: str) -> List[str]:
    """Moses tokenization (sacremoses, no XML escaping: escaping maps tokens one to one and leaves BLEU as is)."""
    tokenizer = MosesTokenizer(lang=lang)
    return [tokenizer.tokenize(line, escape=False, return_str=True) for line in lines]


def split_compounds(line: str) -> str:
    """a-b -> a ##AT##-##AT## b, exactly as the perl one-liner (non-overlapping: a-b-c -> a ##AT##-##AT## b-c)."""
    return _COMPOUND.sub(rb"\1 ##AT##-##AT## \2", line.encode("utf-8")).decode("utf-8")


def prepare(lines: Sequence[str], protocol: str, lang: str) -> List[str]:
    """The text that BLEU sees under `protocol` (unchanged for 'sacrebleu')."""
    if protocol == "sacrebleu":
        return list(lines)
    tokenized = moses_tokenize(lines, lang)
    if protocol == "tokenized_lower":
        return [line.lower() for line in tokenized]
    if protocol == "tokenized_compound":
        return [split_compounds(line) for line in tokenized]
    raise ConfigError(f"bleu protocol: unknown '{protocol}'; valid: {', '.join(PROTOCOLS)}")


def corpus_bleu(
    hypotheses: Sequence[str], references: Sequence[str], protocol: str = "sacrebleu", lang: str = "en"
) -> BleuResult:
    """Corpus BLEU of detokenized hypotheses against one reference each; `lang` is the target language (Moses)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"bleu protocol: unknown '{protocol}'; valid: {', '.join(PROTOCOLS)}")
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} references: the counts must match")
    # force: tokenized protocols feed tokenized text on purpose (silences sacreBLEU's warning; same score)
    metric = BLEU(tokenize="13a" if protocol == "sacrebleu" else "none", force=protocol != "sacrebleu")
    result = metric.corpus_score(prepare(hypotheses, protocol, lang), [prepare(references, protocol, lang)])
    signature = str(metric.get_signature())
    if protocol != "sacrebleu":
        signature = f"protocol:{protocol}+moses.{lang}|{signature}"
    return BleuResult(result.score, signature, str(result))


def read_lines(path: str | Path) -> List[str]:
    """Lines of a UTF-8 text file, split on '\\n' only and right-stripped (as the sacrebleu command line reads)."""
    try:
        with open(path, encoding="utf-8", newline="\n") as handle:
            return [line.rstrip() for line in handle]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def file_bleu(
    hypothesis_file: str | Path, reference_file: str | Path, protocol: str = "sacrebleu", lang: str = "en"
) -> BleuResult:
    """BLEU of a hypothesis file against a reference file, line by line."""
    hyps, refs = read_lines(hypothesis_file), read_lines(reference_file)
    if len(hyps) != len(refs):
        raise DataError(
            f"{hypothesis_file} has {len(hyps)} lines but {reference_file} has {len(refs)}: the counts must match"
        )
    return corpus_bleu(hyps, refs, protocol, lang)
