"""Small models of every kind, built from a fixed seed, for the initialisation tests.

`digests(init)` returns one sha256 per parameter/buffer of each model: the fairseq scheme must give
exactly the digests recorded in tests/fixtures/init_fairseq_digests.json, made from the constructors as
they initialised before initialisation became a config choice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Callable, Dict, Optional

import torch
from torch import nn

from toolkit.models.char_transformer import CharTransformer, CharTransformerConfig
from toolkit.models.streaming_lm import StreamingLM, StreamingLMConfig
from toolkit.models.transformer import TransformerConfig, TransformerModel
from toolkit.models.transformer_lm import TransformerLM, TransformerLMConfig
from toolkit.modules.attention.base import SEPARATE_PROJECTIONS


def _with_init(cfg, init: Optional[str]):
    if init is not None and any(f.name == "init" for f in dataclasses.fields(cfg)):
        cfg.init = init
    return cfg


def zoo(init: Optional[str] = None) -> Dict[str, Callable[[], nn.Module]]:
    """name -> builder of a small model of each kind (and the variants whose init differs)."""
    lm = dict(n_layers=2, d_model=32, n_heads=4, d_ff=64, max_positions=64)
    mt = dict(encoder_layers=2, decoder_layers=2, d_model=32, ffn_dim=64, n_heads=4, max_positions=64)
    sl = dict(vocab_size=27, d_model=32, n_layers=2, n_heads=4, d_ff=64, block_size=16, attn_span=32)
    return {
        "transformer_lm": lambda: TransformerLM.create(_with_init(TransformerLMConfig(**lm), init), 27),
        "transformer_lm_untied_sinusoidal": lambda: TransformerLM.create(
            _with_init(TransformerLMConfig(**lm, tie_embeddings=False, positions="sinusoidal"), init), 27
        ),
        "transformer_lm_adaptive": lambda: TransformerLM.create(
            _with_init(
                TransformerLMConfig(
                    **lm,
                    adaptive_input=True,
                    adaptive_softmax=True,
                    adaptive_cutoffs=[10, 20],
                    tie_embeddings=False,
                    tie_adaptive_weights=True,
                ),
                init,
            ),
            40,
            padding_idx=1,
        ),
        "char_transformer": lambda: CharTransformer(
            _with_init(CharTransformerConfig(n_layers=3, d_model=32, n_heads=4, d_ff=64, max_positions=64), init), 27
        ),
        "streaming_lm": lambda: StreamingLM.create(_with_init(StreamingLMConfig(**sl), init)),
        "streaming_lm_persistent": lambda: StreamingLM.create(
            _with_init(StreamingLMConfig(**sl, persistent_memory=8), init)
        ),
        "transformer": lambda: TransformerModel(_with_init(TransformerConfig(**mt), init), 40, 40, 1, 2, 0),
        "transformer_mae_untied": lambda: TransformerModel(
            _with_init(
                TransformerConfig(
                    **mt, attention="mae", share_all_embeddings=False, share_decoder_input_output_embed=False
                ),
                init,
            ),
            40,
            44,
            1,
            2,
            0,
        ),
    }


def build(name: str, init: Optional[str] = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return zoo(init)[name]()


def separate_projections(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The state dict with each stacked `qkv_proj` split into the q_proj/k_proj/v_proj the digests were
    recorded from."""
    out = {}
    for key, value in state.items():
        prefix, stacked, kind = key.rpartition("qkv_proj.")
        if not stacked:
            out[key] = value
            continue
        for name, block in zip(SEPARATE_PROJECTIONS, value.chunk(3)):
            out[f"{prefix}{name}.{kind}"] = block
    return out


def heads_as_recorded(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The state dict with char_transformer's `aux_heads.` prefix dropped: the heads were the model's own
    `layer_heads` / `target_heads` when the digests were recorded."""
    return {key.removeprefix("aux_heads."): value for key, value in state.items()}


def streamed_layers_as_recorded(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The state dict of a streaming_lm with its layers' attention named `attn` / `attn_norm`, as the streamed
    layers named them when the digests were recorded (now TransformerLayer's `self_attn` / `self_attn_norm`)."""
    pattern = re.compile(r"^layers\.(\d+)\.self_attn(_norm)?\.")
    return {pattern.sub(lambda m: f"layers.{m.group(1)}.attn{m.group(2) or ''}.", k): v for k, v in state.items()}


def digests(init: Optional[str] = None) -> Dict[str, Dict[str, str]]:
    """model name -> {state_dict key (separate q/k/v projections, heads and streamed layers as recorded): sha256
    of the tensor's bytes}."""
    out = {}
    for name in zoo(init):
        state = heads_as_recorded(separate_projections(build(name, init).state_dict()))
        if name.startswith("streaming_lm"):
            state = streamed_layers_as_recorded(state)
        out[name] = {k: hashlib.sha256(v.detach().contiguous().numpy().tobytes()).hexdigest() for k, v in state.items()}
    return out
