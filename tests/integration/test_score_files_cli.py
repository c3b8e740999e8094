"""tk-eval on files: BLEU equal to the sacrebleu command line, and paired significance tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from toolkit.cli.eval import main as eval_main

REPO = Path(__file__).resolve().parents[2]
IWSLT = REPO / "data" / "iwslt14" / "iwslt14-de-en-devtest.tar.xz"
N = 300  # sentences: realistic scores, fast resampling
needs_cli = pytest.mark.skipif(shutil.which("sacrebleu") is None, reason="needs the sacrebleu command")


@pytest.fixture(scope="module")
def references() -> list[str]:
    """IWSLT14 tst2010 English references (detokenized, from the shipped release xml)."""
    with tarfile.open(IWSLT, "r:xz") as tar:
        xml = tar.extractfile("iwslt14-de-en-devtest/IWSLT14.TED.tst2010.de-en.en.xml").read().decode("utf-8")
    return [s.strip() for s in re.findall(r'<seg id="\d+">(.*?)</seg>', xml)][:N]


def system(lines: list[str], every: int) -> list[str]:
    """System-like output: every `every`-th word of each line replaced by 'the'."""
    return [
        " ".join("the" if (i + j) % every == 0 else w for j, w in enumerate(line.split()))
        for i, line in enumerate(lines)
    ]


def write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@needs_cli
def test_file_bleu_equals_the_sacrebleu_command(references, tmp_path, capsys):
    ref, hyp = write(tmp_path / "ref", references), write(tmp_path / "hyp", system(references, 4))
    assert eval_main([f"hypotheses={hyp}", f"references={ref}"]) == 0
    ours = last_json(capsys.readouterr().out)
    cli = json.loads(
        subprocess.run(["sacrebleu", ref, "-i", hyp, "-w", "4"], capture_output=True, text=True, check=True).stdout
    )
    assert 20 < ours["bleu"] < 80
    assert round(ours["bleu"], 4) == cli["score"]
    assert ours["signature"] == cli["signature"]


def test_tokenized_protocol_prints_its_signature(references, tmp_path, capsys):
    ref, hyp = write(tmp_path / "ref", references), write(tmp_path / "hyp", system(references, 4))
    assert eval_main([f"hypotheses={hyp}", f"references={ref}", "bleu_protocol=tokenized_lower"]) == 0
    out = capsys.readouterr().out
    summary = last_json(out)
    assert summary["signature"].startswith("protocol:tokenized_lower+moses.en|nrefs:1|case:mixed|eff:no|tok:none")
    assert summary["signature"] in out.splitlines()[-2]
    from toolkit.eval.bleu import corpus_bleu

    assert summary["bleu"] == corpus_bleu(system(references, 4), references, "tokenized_lower").score


@needs_cli
@pytest.mark.parametrize("test", ["bs", "ar"])
def test_paired_test_equals_sacrebleus_own(references, tmp_path, capsys, test):
    """Two systems that differ in two lines: scores and p-value are sacreBLEU's, to the digit."""
    ref = write(tmp_path / "ref", references)
    base = write(tmp_path / "base", system(references, 5))
    hyp = write(
        tmp_path / "hyp", system(references[:5], 5)[:3] + system(references[3:5], 4) + system(references, 5)[5:]
    )
    n = "200"
    assert (
        eval_main([f"hypotheses={hyp}", f"baseline={base}", f"references={ref}", f"test={test}", f"n_samples={n}"]) == 0
    )
    ours = last_json(capsys.readouterr().out)
    flag = ["--paired-bs", "--paired-bs-n", n] if test == "bs" else ["--paired-ar", "--paired-ar-n", n]
    cli = json.loads(
        subprocess.run(["sacrebleu", ref, "-i", base, hyp, *flag], capture_output=True, text=True, check=True).stdout
    )
    assert ours["baseline_bleu"] == pytest.approx(cli[0]["BLEU"]["score"], abs=1e-9)
    assert ours["bleu"] == pytest.approx(cli[1]["BLEU"]["score"], abs=1e-9)
    if test == "bs":
        assert 0.05 < ours["p_value"] < 1 and ours["significant"] is False
    assert ours["p_value"] == pytest.approx(cli[1]["BLEU"]["p_value"], abs=1e-12)


@pytest.mark.parametrize("test", ["bs", "ar"])
def test_identical_systems_are_not_significantly_different(references, tmp_path, capsys, test):
    ref, hyp = write(tmp_path / "ref", references), write(tmp_path / "hyp", system(references, 4))
    assert (
        eval_main([f"hypotheses={hyp}", f"baseline={hyp}", f"references={ref}", f"test={test}", "n_samples=100"]) == 0
    )
    summary = last_json(capsys.readouterr().out)
    assert summary["bleu"] == summary["baseline_bleu"]
    assert summary["p_value"] == 1.0 and summary["significant"] is False


@pytest.mark.parametrize("test", ["bs", "ar"])
def test_a_clearly_degraded_copy_is_significantly_worse(references, tmp_path, capsys, test):
    ref = write(tmp_path / "ref", references)
    good = write(tmp_path / "good", system(references, 6))
    bad = write(tmp_path / "bad", system(references, 2))
    assert (
        eval_main([f"hypotheses={good}", f"baseline={bad}", f"references={ref}", f"test={test}", "n_samples=200"]) == 0
    )
    out = capsys.readouterr().out
    summary = last_json(out)
    assert summary["bleu"] > summary["baseline_bleu"] + 10
    assert summary["p_value"] == pytest.approx(1 / 201) and summary["significant"] is True
    assert re.search(r"good\s+\d+\.\d\d\s+0\.0050 \*", out)


def test_bad_file_inputs_are_one_line_errors(references, tmp_path, capsys):
    ref = write(tmp_path / "ref", references)
    short = write(tmp_path / "short", references[:5])
    assert eval_main([f"hypotheses={short}", f"references={ref}"]) == 2
    assert capsys.readouterr().err == f"error: {short} has 5 lines but {ref} has {N}: the counts must match\n"
    assert eval_main([f"hypotheses={ref}", f"references={ref}", "bleu_protocol=moses"]) == 2
    assert capsys.readouterr().err.startswith("error: bleu protocol: unknown 'moses'; valid: sacrebleu,")
    assert eval_main([f"hypotheses={ref}", f"references={ref}", f"baseline={ref}", "test=t"]) == 2
    assert capsys.readouterr().err == "error: test: unknown 't'; valid: bs, ar\n"
    assert eval_main([f"hypotheses={ref}"]) == 2
    assert capsys.readouterr().err.startswith("error: missing required value for key 'references'")
