"""BLEU protocols against the `sacrebleu` command line on real newstest2013 / IWSLT14 sentences."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from sacremoses import MosesTokenizer

from toolkit.errors import ConfigError, DataError
from toolkit.eval.bleu import corpus_bleu, file_bleu, split_compounds

DATA = Path(__file__).resolve().parents[2] / "data"  # the real test sets shipped with the repository
NEWSTEST = DATA / "wmt14" / "wmt14-newstest2013-de-en-plain.tar.xz"
IWSLT = DATA / "iwslt14" / "iwslt14-de-en-devtest.tar.xz"
pytestmark = pytest.mark.skipif(shutil.which("sacrebleu") is None, reason="needs the sacrebleu command")
N = 400  # sentences per test set: enough n-grams for a meaningful score, fast CLI runs


def read_member(archive: Path, name: str) -> str:
    with tarfile.open(archive, "r:xz") as tar:
        return tar.extractfile(name).read().decode("utf-8")


@pytest.fixture(scope="module")
def corpora() -> dict[str, list[str]]:
    """Detokenized references: newstest2013 en and de, IWSLT14 tst2010 en (from the release xml)."""
    xml = read_member(IWSLT, "iwslt14-de-en-devtest/IWSLT14.TED.tst2010.de-en.en.xml")
    return {
        "en": read_member(NEWSTEST, "newstest2013-plain/newstest2013.en").splitlines()[:N],
        "de": read_member(NEWSTEST, "newstest2013-plain/newstest2013.de").splitlines()[:N],
        "iwslt_en": [s.strip() for s in re.findall(r'<seg id="\d+">(.*?)</seg>', xml)][:N],
    }


def perturb(lines: list[str]) -> list[str]:
    """System-like output: about a third of the words of most lines dropped, replaced or swapped."""
    out = []
    for i, line in enumerate(lines):
        words = line.split()
        if i % 5:  # every fifth line stays exact
            words = [w for j, w in enumerate(words) if (i + j) % 6 != 0]  # drop
            words = ["the" if (i + j) % 6 == 3 else w for j, w in enumerate(words)]  # replace
            if len(words) > 4:
                j = i % (len(words) - 1)
                words[j], words[j + 1] = words[j + 1], words[j]  # swap
        out.append(" ".join(words))
    return out


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def cli(ref: Path, hyp: Path, *extra: str) -> dict:
    run = subprocess.run(
        ["sacrebleu", str(ref), "-i", str(hyp), "-w", "4", *extra], capture_output=True, text=True, check=True
    )
    return json.loads(run.stdout)


@pytest.mark.parametrize("lang", ["en", "de"])
def test_13a_bleu_equals_the_sacrebleu_command(corpora, tmp_path, lang):
    ref = write(tmp_path / "ref", corpora[lang])
    hyp = write(tmp_path / "hyp", perturb(corpora[lang]))
    ours = file_bleu(hyp, ref)
    expected = cli(ref, hyp)
    assert 30 < ours.score < 70  # a realistic, non-trivial score
    assert round(ours.score, 4) == expected["score"]
    assert ours.signature == expected["signature"] == "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
    assert ours.details.endswith(expected["verbose_score"])
    score_only = subprocess.run(["sacrebleu", str(ref), "-i", str(hyp), "-b"], capture_output=True, text=True)
    assert score_only.stdout.strip() == f"{ours.score:.1f}"


def test_tokenized_lower_equals_sacrebleu_tok_none_on_moses_lowercased_files(corpora, tmp_path):
    refs, hyps = corpora["iwslt_en"], perturb(corpora["iwslt_en"])
    moses = MosesTokenizer(lang="en")

    def tok(lines):
        return [moses.tokenize(line, escape=False, return_str=True).lower() for line in lines]

    ref, hyp = write(tmp_path / "ref.tok", tok(refs)), write(tmp_path / "hyp.tok", tok(hyps))
    ours = corpus_bleu(hyps, refs, protocol="tokenized_lower", lang="en")
    expected = cli(ref, hyp, "-tok", "none")
    assert round(ours.score, 4) == expected["score"]
    assert ours.signature == "protocol:tokenized_lower+moses.en|" + expected["signature"]
    assert ours.score != round(corpus_bleu(hyps, refs).score, 4)  # the protocols really differ


def test_tokenized_compound_equals_sacrebleu_tok_none_after_perl_compound_splitting(corpora, tmp_path):
    if shutil.which("perl") is None:
        pytest.skip("needs perl for the reference compound splitter")
    refs, hyps = corpora["de"], perturb(corpora["de"])
    moses = MosesTokenizer(lang="de")
    for name, lines in (("ref", refs), ("hyp", hyps)):
        write(tmp_path / f"{name}.tok", [moses.tokenize(line, escape=False, return_str=True) for line in lines])
        with open(tmp_path / f"{name}.tok", "rb") as src, open(tmp_path / f"{name}.atat", "wb") as dst:
            # tensor2tensor's get_ende_bleu.sh one-liner, run by perl itself
            subprocess.run(["perl", "-ple", r"s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g"], stdin=src, stdout=dst, check=True)
    assert "##AT##-##AT##" in (tmp_path / "ref.atat").read_text(encoding="utf-8")
    ours = corpus_bleu(hyps, refs, protocol="tokenized_compound", lang="de")
    expected = cli(tmp_path / "ref.atat", tmp_path / "hyp.atat", "-tok", "none")
    assert round(ours.score, 4) == expected["score"]
    assert ours.signature.endswith("|" + expected["signature"])


def test_compound_splitting_is_non_overlapping_like_perl():
    assert split_compounds("US-Präsident a-b-c x - y 3-4 -z") == (
        "US ##AT##-##AT## Präsident a ##AT##-##AT## b-c x - y 3 ##AT##-##AT## 4 -z"
    )


def test_bad_inputs_give_one_line_errors(tmp_path):
    hyp, ref = write(tmp_path / "hyp", ["a b c"]), write(tmp_path / "ref", ["a b c", "d e"])
    with pytest.raises(DataError, match=rf"^{re.escape(str(hyp))} has 1 lines but {re.escape(str(ref))} has 2: "):
        file_bleu(hyp, ref)
    with pytest.raises(DataError, match=r"missing: no such file$"):
        file_bleu(tmp_path / "missing", ref)
    with pytest.raises(ConfigError, match=r"^bleu protocol: unknown 'moses'; valid: sacrebleu, tokenized_lower, "):
        corpus_bleu(["a"], ["a"], protocol="moses")
