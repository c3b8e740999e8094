"""Comparing language models: per-token NLL files (tk-eval save_nll=) and the paired bootstrap over blocks;
word perplexity with and without <eos> targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import tiny_char_args
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main
from toolkit.eval.significance import block_sums, lm_paired_bootstrap
from toolkit.tasks.language_modeling import EOS, LanguageModelingConfig, LanguageModelingTask


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def char_run(text8_small, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("nll") / "run"
    args = tiny_char_args(
        text8_small, run_dir, max_update=40, save_interval=4, keep_interval_checkpoints=10, **{"optimizer.lr": 0.01}
    )
    assert train_main(args) == 0
    return run_dir


def save_nll(run_dir, checkpoint: str, capsys, *extra: str) -> tuple[np.ndarray, dict]:
    path = run_dir / f"{checkpoint}.nll.npy"
    assert (
        eval_main(
            [
                f"checkpoint={run_dir / checkpoint}",
                "subset=test",
                "task.eval_max_tokens=4000",
                f"save_nll={path}",
                *extra,
            ]
        )
        == 0
    )
    return np.load(path, allow_pickle=False), last_json(capsys.readouterr().out)


def test_saved_nlls_are_the_scored_targets(char_run, capsys):
    nll, metrics = save_nll(char_run, "checkpoint_last.pt", capsys)
    assert nll.dtype == np.float64 and len(nll) == metrics["tokens"] == 4000
    assert nll.mean() == pytest.approx(metrics["loss"], rel=1e-6)
    strided, metrics = save_nll(char_run, "checkpoint_last.pt", capsys, "task.eval_protocol=fast")
    assert len(strided) == 4000 and strided.mean() == pytest.approx(metrics["loss"], rel=1e-6)


def test_a_model_against_itself_and_against_a_less_trained_copy(char_run, tmp_path, capsys):
    final, _ = save_nll(char_run, "checkpoint_last.pt", capsys)
    early, _ = save_nll(char_run, "checkpoint_4.pt", capsys)
    a, b = char_run / "checkpoint_last.pt.nll.npy", char_run / "checkpoint_4.pt.nll.npy"
    assert eval_main([f"nll={a}", f"baseline_nll={a}", "block_size=200"]) == 0
    same = last_json(capsys.readouterr().out)
    assert same["p_value"] == 1.0 and same["significant"] is False and same["nll"] == same["baseline_nll"]
    assert eval_main([f"nll={a}", f"baseline_nll={b}", "block_size=200", "n_samples=500"]) == 0
    out = capsys.readouterr().out
    better = last_json(out)
    assert better["nll"] == pytest.approx(final.mean()) and better["baseline_nll"] == pytest.approx(early.mean())
    assert better["nll"] < better["baseline_nll"] - 0.05  # 40 updates vs 4: clearly better (0.065 nats measured)
    assert better["p_value"] == pytest.approx(1 / 501) and better["significant"] is True
    assert "NLL/token" in out


def test_bootstrap_statistics_against_a_direct_computation():
    rng = np.random.default_rng(0)
    a = rng.exponential(1.0, size=1050)
    sums, counts = block_sums(a, 100)
    assert counts.tolist() == [100] * 10 + [50] and np.allclose(
        sums, [a[i : i + 100].sum() for i in range(0, 1050, 100)]
    )
    noise = a + rng.normal(0, 0.01, size=a.shape)  # no systematic difference
    assert not lm_paired_bootstrap(noise, a, block_size=50, n_samples=300).significant()
    worse = lm_paired_bootstrap(a + 0.2, a, block_size=50, n_samples=300)
    assert worse.score == pytest.approx(a.mean() + 0.2) and worse.p_value == pytest.approx(1 / 301)


def test_nll_file_errors_are_one_line(char_run, tmp_path, capsys):
    a = char_run / "x.npy"
    np.save(a, np.zeros(10))
    b = tmp_path / "short.npy"
    np.save(b, np.zeros(9))
    assert eval_main([f"nll={a}", f"baseline_nll={b}"]) == 2
    assert capsys.readouterr().err == (
        "error: the per-token NLLs cover 10 and 9 tokens: both must score the same tokens\n"
    )
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    assert eval_main([f"nll={bad}", f"baseline_nll={a}"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: not a per-token NLL file written by tk-eval save_nll=")


def test_word_perplexity_without_eos_scores_only_the_words(wikitext_small):
    """task.eval_eos=false: <eos> is context, not a target (the all-attention paper's protocol)."""
    from omegaconf import OmegaConf

    from toolkit.models.streaming_lm import StreamingLM, StreamingLMConfig

    torch.manual_seed(0)
    results = {}
    for protocol in ("context_window", "stream"):
        for eos in (True, False):
            cfg = OmegaConf.structured(
                LanguageModelingConfig(tokens_per_sample=16, eval_protocol=protocol, eval_eos=eos, context_window=0)
            )
            task = LanguageModelingTask(cfg, str(wikitext_small), seed=1)
            task.record_token_nll = True
            torch.manual_seed(0)
            model = StreamingLM.create(
                StreamingLMConfig(vocab_size=task.vocab_size, d_model=16, n_layers=1, n_heads=2, attn_span=32)
            ).eval()
            results[protocol, eos] = (task.evaluate(model, "test", torch.device("cpu")), task.token_nll)
        test = task.splits["test"]
        with_eos, all_nll = results[protocol, True]
        words, word_nll = results[protocol, False]
        assert with_eos["tokens"] == len(test) and words["tokens"] == int(np.sum(test != EOS))
        assert with_eos["eos_scored"] is True and words["eos_scored"] is False
        assert np.allclose(word_nll, all_nll[test != EOS], rtol=1e-6)  # the same predictions, eos left out
        # the loss is one float32 sum per block (as always); the per-token file is float64
        assert words["loss"] == pytest.approx(word_nll.mean(), rel=1e-6)


def test_save_nll_is_for_language_models_only():
    from types import SimpleNamespace

    from toolkit.cli.score_files import check_token_nll
    from toolkit.errors import ConfigError

    translation = SimpleNamespace(valid_metric="loss", cfg=SimpleNamespace(name="translation"))
    with pytest.raises(
        ConfigError,
        match=r"^save_nll=x.npy: per-token NLLs are written for language-model tasks "
        r"only \(task 'translation'\)$",
    ):
        check_token_nll(translation, "x.npy")
    check_token_nll(translation, None)  # nothing asked, nothing checked
