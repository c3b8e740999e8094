"""T64's deep character transformer (Al-Rfou et al. 2019): a configuration of `transformer_lm`.

`char_transformer` keeps its own config (the presets, stored checkpoints and fixtures compose unchanged) and
builds the decoder LM of toolkit.models.transformer_lm with: pre-LN layers and a final LayerNorm, learned
position tables added at every layer's input (or the first's only; or rotary positions instead), an output
layer with a bias, untied by default, and T64's auxiliary heads (toolkit.modules.aux_heads) on by default:
``layer_{l}_nll`` from a head after layer l (l = 1..n-1) and ``target_{k}_nll`` for the character k ahead
(k = 2..m).

The model never weights the terms: schedules in the config do (toolkit.aux_weights). Only the terms in
``active_aux`` (non-zero weight at this step) are computed, so a switched-off loss costs nothing and sends no
gradient into its head.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Dict

from toolkit.errors import ConfigError
from toolkit.models.init_schemes import DEFAULT_SCHEME
from toolkit.models.transformer_lm import LMPositions, PositionsAt, TransformerLM, TransformerLMConfig
from toolkit.modules.attention.registry import OptionBlock
from toolkit.modules.aux_heads import AuxHeadsConfig, IntermediateHeads
from toolkit.modules.memory_placement import MemoryConfigMixin
from toolkit.modules.transformer_layer import Activation
from toolkit.registry import MODELS


class CharPositions(StrEnum):
    """Where learned positions are added, or none added: rotary positions."""

    every_layer = "every_layer"  # at the input of every layer (T64)
    first_layer = "first_layer"  # at the input of the first layer only
    rotary = "rotary"  # no tables: every self-attention rotates its queries and keys (toolkit.modules.rotary)


@dataclass
class CharTransformerConfig(MemoryConfigMixin):
    name: str = "char_transformer"
    n_layers: int = 12  # number of Transformer layers (n)
    d_model: int = 512  # model width
    n_heads: int = 8  # attention heads
    d_ff: int = 2048  # feed-forward hidden size
    dropout: float = 0.55  # residual and embedding dropout
    attention_dropout: float = 0.0  # dropout on attention probabilities
    activation_dropout: float = 0.0  # dropout after the FFN activation
    activation: Activation = Activation.relu  # relu or gelu
    attention: Any = "standard"  # a registered attention (docs/architecture.md): a name (standard, mae,
    #                              adaptive_span) or {name: NAME, option: value, ...}
    max_positions: int = 512  # rows of each learned position table (>= the window length)
    positions: CharPositions = CharPositions.every_layer  # learned positions added at every layer or the first
    #                                                       only, or rotary positions in every self-attention
    intermediate_heads: IntermediateHeads = IntermediateHeads.separate  # heads after layers 1..n-1 (IntermediateHeads)
    n_targets: int = 2  # m: predict the characters 1..m ahead (1 = next character only, no target_k terms)
    tie_embeddings: bool = False  # share the input embedding and the final output projection
    vocab_size: int = 0  # 0 = from the task's vocabulary (or the preset when no data is prepared)
    init: str = DEFAULT_SCHEME  # parameter initialisation: 'gpt2' (fast-learning) or 'fairseq' (docs/init.md)
    scale_embedding: bool = True  # multiply the token embedding by sqrt(d_model) (fairseq); false learns
    #                               faster (the positions keep up with the tokens; docs/init.md)


def transformer_lm_config(cfg: Any) -> TransformerLMConfig:
    """The transformer_lm configuration of a char_transformer config (a dataclass or a DictConfig)."""
    if cfg.n_targets < 1:  # named as this config's key (transformer_lm's is model.aux_heads.n_targets)
        raise ConfigError(f"model.n_targets must be >= 1, got {cfg.n_targets}")
    rotary = str(cfg.positions) == CharPositions.rotary
    return TransformerLMConfig(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_ff=cfg.d_ff,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout,
        activation=cfg.activation,
        pre_ln=True,  # pre-LN: the residual stream of every layer can feed a prediction head
        final_norm=True,
        attention=cfg.attention,
        positions=LMPositions.rotary if rotary else LMPositions.learned,
        positions_at=PositionsAt.input if rotary else PositionsAt(str(cfg.positions)),
        max_positions=cfg.max_positions,
        tie_embeddings=cfg.tie_embeddings,
        output_bias=True,
        vocab_size=cfg.vocab_size,
        init=cfg.init,
        scale_embedding=cfg.scale_embedding,
        aux_heads=AuxHeadsConfig(IntermediateHeads(str(cfg.intermediate_heads)), cfg.n_targets),
        memory=cfg.memory,
    )


@MODELS.register("char_transformer", CharTransformerConfig)
class CharTransformer(TransformerLM):
    """transformer_lm built from a char_transformer config (`transformer_lm_config`); `cfg` is that
    transformer_lm configuration."""

    def __init__(self, cfg: Any, vocab_size: int):
        super().__init__(transformer_lm_config(cfg), vocab_size)

    @classmethod
    def build(cls, cfg: Any, task: Any) -> "CharTransformer":
        return cls(cfg, cfg.vocab_size or task.vocab_size)

    def attention_blocks(self, cfg: Any) -> Dict[str, OptionBlock]:
        """None: a char_transformer config has no `mae:` block (MAE's options come with `model.attention`)."""
        return {}
