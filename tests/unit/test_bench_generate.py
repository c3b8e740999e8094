"""scripts/bench_generate.py's forced-length mode and its plain beam loop compare like with like."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from toolkit.data.indexed_dataset import IndexedDataset
from toolkit.data.spm import SpmVocab
from toolkit.data.token_batching import collate
from toolkit.eval.beam_search import generate
from toolkit.models.transformer import TransformerConfig, TransformerModel

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_model_and_batch(iwslt_sample: Path):
    vocab = SpmVocab(iwslt_sample / "spm.model")
    task = SimpleNamespace(vocab_size=len(vocab), pad_idx=vocab.pad, eos_idx=vocab.eos, bos_idx=vocab.bos)
    torch.manual_seed(3)
    cfg = TransformerConfig(encoder_layers=1, decoder_layers=2, d_model=32, ffn_dim=64, n_heads=2)
    model = TransformerModel.build(cfg, task).eval()
    src_ds = IndexedDataset(iwslt_sample / "test.de-en.de")
    src = collate(torch.arange(12).numpy(), src_ds, None, task.pad_idx, task.eos_idx)["src_tokens"]
    return model, src


@pytest.mark.parametrize("beam,lenpen", [(1, 1.0), (4, 1.0), (3, 0.6)])
def test_forced_length_and_plain_loop_match_the_toolkit(small_model_and_batch, beam: int, lenpen: float) -> None:
    model, src = small_model_and_batch
    bench, plain = load_script("bench_generate"), load_script("plain_beam_search")
    length = 9
    cfg = bench.forced_config(beam, length, lenpen)
    cfg.nbest = beam
    toolkit = generate(model, src, cfg)
    for nbest in toolkit:
        assert len(nbest) == beam
        for hyp in nbest:  # exactly `length` tokens, then eos; no eos, pad or bos before it
            assert hyp.tokens.numel() == length + 1 and int(hyp.tokens[-1]) == model.eos_idx
            assert not torch.isin(hyp.tokens[:-1], torch.tensor([model.eos_idx, model.pad_idx, model.bos_idx])).any()
    reference = plain.plain_beam_search(model, src, beam, length, lenpen)
    assert len(reference) == src.size(0)
    for nbest, ref in zip(toolkit, reference):
        assert torch.equal(nbest[0].tokens[:-1], ref["tokens"][:-1]) and int(ref["tokens"][-1]) == model.eos_idx
        assert nbest[0].score == ref["score"]  # same float32 sums in the same order


def test_bench_script_forced_mode_on_an_untrained_model(iwslt_sample: Path, tmp_path: Path, monkeypatch) -> None:
    bench = load_script("bench_generate")
    out = tmp_path / "bench.json"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bench_generate.py",
            "--data",
            str(iwslt_sample),
            "--force-len",
            "6",
            "--beams",
            "2",
            "--batch-sizes",
            "5",
            "--limit",
            "10",
            "--rounds",
            "1",
            "--layers",
            "1",
            "--d-model",
            "32",
            "--ffn-dim",
            "64",
            "--heads",
            "2",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
    )
    bench.main()
    (row,) = json.loads(out.read_text())
    assert row["output_lengths"] == [6] and row["same_best_hypotheses"] == "10/10"
    assert row["sentences"] == 10 and row["toolkit_sentences_per_s"] > 0 and row["plain_sentences_per_s"] > 0


def test_bench_script_rejects_a_folder_without_a_dataset(tmp_path: Path, monkeypatch, capsys) -> None:
    bench = load_script("bench_generate")
    monkeypatch.setattr(sys, "argv", ["bench_generate.py", "--data", str(tmp_path), "--force-len", "6"])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --data {tmp_path}: no meta.json (expected a dataset folder from tk-preprocess)"
    )
