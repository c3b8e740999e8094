"""scripts/bench_generate.py's forced-length mode and its plain beam loop compare like with like."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from toolkit.data.indexed_dataset import IndexedDataset
from toolkit.data.spm import SpmVocab
from toolkit.data.token_batching import collate
from toolkit.errors import UserError
from toolkit.eval.beam_search import generate
from toolkit.models.transformer import TransformerConfig, TransformerModel

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
needs_fairseq = pytest.mark.skipif(
    not os.environ.get("FAIRSEQ_PYTHON"),
    reason="needs FAIRSEQ_PYTHON, a Python with fairseq 0.12.2 (bash scripts/setup_fairseq_bench.sh builds one)",
)


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


def forced_mode_argv(iwslt_sample: Path, out: Path, *extra: str) -> list:
    """A tiny untrained model, 10 sentences forced to 6 tokens, beam 2, one round."""
    tiny = ["--layers", "1", "--d-model", "32", "--ffn-dim", "64", "--heads", "2", "--device", "cpu"]
    run = ["--force-len", "6", "--beams", "2", "--batch-sizes", "5", "--limit", "10", "--rounds", "1"]
    return ["bench_generate.py", "--data", str(iwslt_sample), *run, *tiny, "--json", str(out), *extra]


def test_bench_script_forced_mode_on_an_untrained_model(iwslt_sample: Path, tmp_path: Path, monkeypatch) -> None:
    bench = load_script("bench_generate")
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", forced_mode_argv(iwslt_sample, out))
    bench.main()
    (row,) = json.loads(out.read_text())
    assert row["output_lengths"] == [6] and row["same_best_hypotheses"] == "10/10"
    assert row["sentences"] == 10 and row["toolkit_sentences_per_s"] > 0 and row["plain_sentences_per_s"] > 0


def test_fairseq_export_holds_every_weight_once_under_fairseqs_names(small_model_and_batch) -> None:
    model, _ = small_model_and_batch
    export = load_script("fairseq_runner").fairseq_state_dict(model)
    ours = model.state_dict()
    # the shared embedding appears as fairseq's three tied tensors; every other tensor exactly once
    tied = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight"]
    for name in tied:
        assert torch.equal(export[name], ours["encoder_embed.weight"])
    rest = sum(t.numel() for k, t in export.items() if k not in tied)
    assert rest + ours["encoder_embed.weight"].numel() == sum(p.numel() for p in model.parameters())
    for side, attn, theirs in (("encoder", "self_attn", "self_attn"), ("decoder", "cross_attn", "encoder_attn")):
        stacked = ours[f"{side}_layers.0.{attn}.qkv_proj.weight"]
        parts = [export[f"{side}.layers.0.{theirs}.{p}_proj.weight"] for p in "qkv"]
        assert torch.equal(torch.cat(parts), stacked)
    assert torch.equal(export["decoder.layers.1.final_layer_norm.bias"], ours["decoder_layers.1.ffn_norm.bias"])


def test_fairseq_export_refuses_a_model_fairseqs_transformer_cannot_hold(iwslt_sample: Path) -> None:
    vocab = SpmVocab(iwslt_sample / "spm.model")
    task = SimpleNamespace(vocab_size=len(vocab), pad_idx=vocab.pad, eos_idx=vocab.eos, bos_idx=vocab.bos)
    cfg = TransformerConfig(encoder_layers=1, decoder_layers=1, d_model=16, ffn_dim=32, n_heads=2, pre_ln=True)
    with pytest.raises(UserError, match="only the post-LN, sinusoidal, shared-embedding standard transformer"):
        load_script("fairseq_runner").fairseq_state_dict(TransformerModel.build(cfg, task))


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--device", "cuda"], "--fairseq-python needs --device cpu (fairseq runs on the CPU)"),
        (["--fairseq-python", "/nonexistent/python"], "--fairseq-python /nonexistent/python: not an executable file"),
        (
            [],
            f"--fairseq-python {sys.executable} cannot import fairseq (ModuleNotFoundError: No module named "
            "'fairseq'); bash scripts/setup_fairseq_bench.sh",
        ),
    ],
)
def test_bench_script_refuses_a_fairseq_run_it_cannot_do(
    iwslt_sample: Path, tmp_path: Path, monkeypatch, capsys, extra: list, message: str
) -> None:
    bench = load_script("bench_generate")
    argv = forced_mode_argv(iwslt_sample, tmp_path / "bench.json", "--fairseq-python", sys.executable, *extra)
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "bench.json").exists()


@needs_fairseq
def test_fairseq_runs_the_same_model_and_finds_the_same_hypotheses(
    iwslt_sample: Path, tmp_path: Path, monkeypatch
) -> None:
    bench = load_script("bench_generate")
    out = tmp_path / "bench.json"
    monkeypatch.setattr(
        sys, "argv", forced_mode_argv(iwslt_sample, out, "--fairseq-python", os.environ["FAIRSEQ_PYTHON"])
    )
    bench.main()
    (row,) = json.loads(out.read_text())
    assert row["probe_logits_max_abs_diff"] < 1e-5  # float32 rounding only: the same weights and positions
    assert row["same_best_hypotheses_as_fairseq"] == "10/10" and row["fairseq_sentences_per_s"] > 0


def test_bench_script_rejects_a_folder_without_a_dataset(tmp_path: Path, monkeypatch, capsys) -> None:
    bench = load_script("bench_generate")
    monkeypatch.setattr(sys, "argv", ["bench_generate.py", "--data", str(tmp_path), "--force-len", "6"])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --data {tmp_path}: no meta.json (expected a dataset folder from tk-preprocess)"
    )


@needs_fairseq
def test_fairseq_agrees_at_natural_lengths_under_one_length_rule(
    iwslt_sample: Path, tmp_path: Path, monkeypatch
) -> None:
    """max_len_a=0: fairseq's batch-wide maximum length and the toolkit's per-sentence one coincide."""
    bench = load_script("bench_generate")
    out = tmp_path / "bench.json"
    argv = forced_mode_argv(iwslt_sample, out, "--fairseq-python", os.environ["FAIRSEQ_PYTHON"])
    argv += ["--force-len", "0", "--train-steps", "20", "--max-len-a", "0", "--max-len-b", "12", "--lenpen", "0.6"]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    (row,) = json.loads(out.read_text())
    assert row["same_best_hypotheses_as_fairseq"] == "10/10" and row["bleu"] == row["fairseq_bleu"]
    assert row["score_max_abs_diff_where_same"] < 1e-5 and row["probe_logits_max_abs_diff"] < 1e-5
