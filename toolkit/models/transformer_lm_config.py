"""The configuration of the decoder-only LM (toolkit.models.transformer_lm) and its one-line checks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Mapping, Optional, Tuple

from toolkit.errors import ConfigError
from toolkit.models.adaptive_io import AdaptiveIOConfig
from toolkit.models.init_schemes import DEFAULT_SCHEME
from toolkit.modules.attention.mae import MAEConfig
from toolkit.modules.attention.registry import AttentionFactory, Context, OptionBlock, build_choice, choose_attention
from toolkit.modules.attention.span_attention import AdaptiveSpanConfig, validate_span_config
from toolkit.modules.aux_heads import AuxHeadsConfig
from toolkit.modules.memory_placement import MemoryConfigMixin
from toolkit.modules.transformer_layer import Activation


class LMPositions(StrEnum):
    """How the model knows where a token is."""

    learned = "learned"  # a learned absolute position table
    sinusoidal = "sinusoidal"  # fixed absolute sinusoids
    # no position vectors: each self-attention rotates its queries and keys to their positions (RoPE), so
    # attention scores depend on relative distance; the windowed model only (no carried cache)
    rotary = "rotary"
    # no absolute positions: one learned table of relative position keys that every layer's (relative)
    # attention reads; the model can then carry a cache of earlier inputs across blocks (a stream)
    relative = "relative"


class PositionsAt(StrEnum):
    """Where the position vectors join the token embeddings."""

    input = "input"  # added to the token embeddings, dropout over the sum
    first_layer = "first_layer"  # a learned table added at the first layer's input, after the embedding dropout
    every_layer = "every_layer"  # a learned table per layer, each added at its layer's input (T64)


class EmbeddingInit(StrEnum):
    """Initial values of a plain token embedding table under `init: fairseq` (gpt2 sets its own)."""

    scaled = "scaled"  # N(0, d_model^-1/2), fairseq's (used times sqrt(d_model) with scale_embedding)
    unit = "unit"  # PyTorch's N(0, 1), never scaled (the adaptive-span reference's)


@dataclass
class TransformerLMConfig(AdaptiveIOConfig, MemoryConfigMixin):
    """Decoder-only Transformer LM; the adaptive input/softmax fields come from AdaptiveIOConfig."""

    name: str = "transformer_lm"
    n_layers: int = 2  # number of Transformer layers
    d_model: int = 256  # model width
    n_heads: int = 4  # attention heads
    d_ff: int = 1024  # feed-forward hidden size
    dropout: float = 0.1  # residual dropout, and embedding dropout unless embed_dropout is set
    attention_dropout: float = 0.0  # dropout on attention probabilities
    activation_dropout: float = 0.0  # dropout after the FFN activation
    activation: Activation = Activation.relu  # relu or gelu
    pre_ln: bool = True  # LayerNorm before each sublayer (True) or after (False, Vaswani et al.)
    final_norm: bool = True  # with pre_ln: a LayerNorm after the last layer (fairseq's wiki103 model has none)
    attention: Any = "standard"  # a registered attention (docs/architecture.md): a name (standard, mae,
    #                              adaptive_span) or {name: NAME, option: value, ...}
    mae: MAEConfig = field(default_factory=MAEConfig)  # MAE's options when attention is mae (a mapping overrides them)
    positions: LMPositions = LMPositions.learned  # learned, sinusoidal, rotary or relative (see below)
    positions_at: PositionsAt = PositionsAt.input  # input, first_layer or every_layer (learned tables only)
    max_positions: int = 1024  # longest input the position table covers
    tie_embeddings: bool = True  # share the plain input embedding and the plain output projection
    output_bias: bool = False  # a bias in the plain output projection (also when it is tied)
    vocab_size: int = 0  # 0 = from the task's vocabulary (or the preset when no data is prepared)
    init: str = DEFAULT_SCHEME  # parameter initialisation: 'gpt2' (fast-learning) or 'fairseq' (docs/init.md)
    scale_embedding: bool = True  # multiply a plain token embedding by sqrt(d_model) (fairseq); false learns
    #                               faster (the positions keep up with the tokens; docs/init.md)
    # auxiliary heads (T64): intermediate-layer losses, multiple targets; off by default (plain output only)
    aux_heads: AuxHeadsConfig = field(default_factory=AuxHeadsConfig)
    adaptive_span: AdaptiveSpanConfig = field(default_factory=AdaptiveSpanConfig)
    """Relative attention's options: the defaults of `attention: adaptive_span` (a mapping overrides them)
    and, with `positions: relative`, the relative attention that `attention: mae` reweights. max_span 0 =
    max_positions; with relative positions max_span is also the size of the shared position-key table."""
    cache_margin: int = 64
    """With `positions: relative`: cached positions kept beyond each layer's current window when the model
    carries a cache across blocks, so that a span that grows at the next step still finds its keys."""
    ffn: bool = True
    """A position-wise FFN sublayer in every layer; false: attention-only layers (all-attention, whose
    persistent memory takes the FFN's place)."""
    embed_dropout: Optional[float] = None
    """Dropout on the input embeddings (with absolute positions added); None = `dropout`."""
    final_dropout: float = 0.0
    """Dropout on the last hidden states (after the final norm), before the output layer and the heads."""
    embedding_init: EmbeddingInit = EmbeddingInit.scaled
    """A plain token embedding's initial values under `init: fairseq`: scaled (N(0, d^-1/2)) or unit
    (N(0, 1), never multiplied by sqrt(d_model))."""


def check_positions(cfg: Any) -> None:
    """ConfigError: positions at the layers' inputs are learned tables; relative positions have none."""
    if cfg.positions_at != PositionsAt.input and cfg.positions != LMPositions.learned:
        raise ConfigError(
            f"model.positions_at={cfg.positions_at} adds learned tables: set model.positions=learned "
            f"(got {cfg.positions}) or model.positions_at=input"
        )
    if cfg.cache_margin < 0:
        raise ConfigError(f"model.cache_margin must be >= 0, got {cfg.cache_margin}")


def layer_attention(
    cfg: Any, blocks: Mapping[str, OptionBlock]
) -> Tuple[AttentionFactory, Optional[AdaptiveSpanConfig]]:
    """The layers' attention factory (from `model.attention`, with the model's option `blocks`) and, with
    relative positions, the relative attention settings it builds on (None otherwise). With relative
    positions the layers attend in the streamed context: over a carried cache, reading the model's shared
    position keys."""
    choice = choose_attention(cfg.attention, "model.attention", blocks)
    if cfg.positions != LMPositions.relative:
        return build_choice(
            choice, Context.causal, "model.attention", max_len=cfg.max_positions, n_heads=cfg.n_heads
        ), None
    if choice.name == "adaptive_span":
        relative = choice.options
    else:  # the relative attention another variant (MAE) reweights: the adaptive_span block
        block = choose_attention("adaptive_span", "model.adaptive_span", blocks)
        validate_span_config(block.options, cfg.n_heads, block.prefix)
        relative = block.options
    relative = replace(relative, max_span=relative.max_span or cfg.max_positions)
    if choice.name == "adaptive_span":
        choice = replace(choice, options=relative)
    attention = build_choice(
        choice, Context.streamed, "model.attention", max_len=relative.max_span, n_heads=cfg.n_heads, relative=relative
    )
    return attention, relative
