"""compile=true: streamed evaluation and incremental decoding compile a bounded number of graphs (dynamic
shapes after the first size change), not one per block or step."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from tests.unit.golden_cases import CASES_BY_NAME, build_model, plain_config
from toolkit.errors import ConfigError
from toolkit.eval.beam_search import GenerationConfig, generate
from toolkit.train.compile import compile_model


def built(name: str, **overrides: object) -> torch.nn.Module:
    case = CASES_BY_NAME[name]
    torch.manual_seed(0)
    return build_model(case.model, plain_config(case.model, {**case.config, **overrides}), case.task, case.memory)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_streamed_blocks_stop_compiling_once_the_cache_is_full() -> None:
    model = built("stream_fixed_window", n_layers=1).eval()  # window 12: the cache is full from block 3 on
    counter = CompileCounter()
    compile_model(model, counter)
    eager = built("stream_fixed_window", n_layers=1).eval()
    tokens = torch.randint(2, 13, (2, 8 * 6), generator=torch.Generator().manual_seed(0))
    cache = eager_cache = None
    frames = []
    with torch.no_grad():
        for block in tokens.split(8, dim=1):
            logits, _, cache = model(block, cache)
            expected, _, eager_cache = eager(block, eager_cache)
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
            frames.append(counter.frame_count)
    assert len(set(frames[2:])) == 1, frames  # nothing new once the cache is full (from the third block)


def test_incremental_decoding_does_not_compile_every_step() -> None:
    model = built("mt_base", encoder_layers=1, decoder_layers=1).eval()
    eager = built("mt_base", encoder_layers=1, decoder_layers=1).eval()
    counter = CompileCounter()
    compile_model(model, counter)
    src = torch.randint(3, 17, (3, 7), generator=torch.Generator().manual_seed(0))
    src[:, -1] = 2
    cfg = GenerationConfig(beam=4, nbest=1, max_len_b=8, min_len=8)  # 9 decoding steps
    hyps = generate(model, src, cfg)
    after_one_search = counter.frame_count
    hyps_again = generate(model, src, cfg)
    assert counter.frame_count == after_one_search  # a second search reuses every graph
    assert after_one_search <= 8, after_one_search  # far fewer than one per step (9 steps x decoder layers)
    expected = generate(eager, src, cfg)
    for got, again, want in zip(hyps, hyps_again, expected):
        assert torch.equal(got[0].tokens, want[0].tokens) and torch.equal(again[0].tokens, want[0].tokens)


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="compile_backend: 'fast' \\(valid: inductor, aot_eager, eager\\)"):
        compile_model(built("lm_plain"), "fast")
