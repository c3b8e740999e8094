"""The streamed (cached) language model of adaptive attention span and all-attention (Sukhbaatar et al. 2019):
a configuration of `transformer_lm`.

`streaming_lm` keeps its own config (the presets, stored checkpoints and fixtures compose unchanged) and
builds the decoder LM of toolkit.models.transformer_lm with the reference's layout (facebookresearch/
adaptive-span): relative positions (one learned table of position keys shared by all layers, no absolute
positions), so that the model reads the corpus as contiguous streams in blocks of M tokens, every layer
keeping a cache of its own inputs at the most recent positions; attention without biases; post-LayerNorm
layers without residual dropout and without a final norm; a ReLU FFN, dropped in all-attention layers
(persistent memory, unless `keep_ffn`); dropout on the attention weights and the FFN hidden units, optional
dropout on the input embeddings and the final hidden states; an untied output layer with a bias; an
unscaled N(0, 1) token embedding.

The model returns logits and a dict of auxiliary terms ('span_l1': sum over layers of the mean span, when
the span is adaptive); weighting them is the criterion's job. The layers' attention is `model.attention`:
`adaptive_span` (the relative attention the span fields describe) or `mae` (MAE's gate reweighting its heads).
Word-level models take adaptive input and an adaptive softmax (toolkit.models.adaptive_io); with the latter,
`StreamingLM.create` builds an `AdaptiveSoftmaxStreamingLM` (transformer_lm's AdaptiveSoftmaxLM), which returns
the last hidden states instead of logits and scores them itself. `aux_heads` (off by default) adds T64's
auxiliary heads (toolkit.modules.aux_heads). How to call it (a carried cache, the trainer's contract):
toolkit.models.transformer_lm.

Checkpoints written before the model was folded into transformer_lm name each layer's attention `attn` and
its norm `attn_norm`; they load (`name_layer_attention_keys`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

from omegaconf import MISSING
from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.models.adaptive_io import AdaptiveIOConfig, check_adaptive_config
from toolkit.models.init_schemes import check_scheme
from toolkit.models.transformer_lm import AdaptiveSoftmaxLM, TransformerLM
from toolkit.models.transformer_lm_config import EmbeddingInit, LMPositions, TransformerLMConfig
from toolkit.modules.attention.registry import OptionBlock, choose_attention
from toolkit.modules.attention.span_attention import AdaptiveSpanConfig, SpanMode
from toolkit.modules.aux_heads import AuxHeadsConfig, check_aux_heads
from toolkit.modules.memory_placement import MemoryConfigMixin
from toolkit.modules.transformer_layer import Activation
from toolkit.registry import MODELS

ADAPTIVE_IO_FIELDS = [f.name for f in fields(AdaptiveIOConfig)]


@dataclass
class StreamingLMConfig(AdaptiveIOConfig, MemoryConfigMixin):
    """Architecture of the streamed LM; defaults are the 12-layer text8 model of the adaptive-span paper.
    Word-level models add adaptive input/softmax (AdaptiveIOConfig's fields)."""

    vocab_size: int = MISSING
    """Output classes (set by the task from its dictionary)."""
    d_model: int = 512
    """Hidden size."""
    n_layers: int = 12
    """Number of layers."""
    n_heads: int = 8
    """Attention heads per layer."""
    d_ff: int = 2048
    """Inner size of the ReLU FFN."""
    block_size: int = 512
    """Tokens per streamed block (M); the task cuts streams into blocks of this length."""
    attn_span: int = 8192
    """Maximum span S: the most keys a query can see, and the size of the position-key table."""
    adaptive_span: bool = True
    """Learn a span per head (soft ramp mask, trimming); false: a fixed hard window of attn_span keys."""
    span_ramp: int = 32
    """Ramp R of the soft mask."""
    span_init: float = 0.0
    """Initial span parameter r in [0, 1] (z = r * S; 0 starts every head at span R)."""
    dynamic_span: bool = False
    """Predict the span per position from the input (paper section 2.2); needs adaptive_span."""
    cache_margin: int = 64
    """Cached positions kept beyond the current window (L - 1 positions back), so a span that grows at the
    next step still finds its keys (the reference keeps 64 extra). With dynamic spans the window is the
    current block's (largest predicted span + R, rounded up); a later block whose spans reach farther than
    the cache sees only the cached keys."""
    persistent_memory: int = 0
    """N persistent key/value vectors per layer and head (all-attention); 0 = off."""
    attention: Any = "adaptive_span"
    """The layers' attention: 'adaptive_span' (relative attention as the span fields here say; a mapping
    {name: adaptive_span, span_ramp: 16, ...} overrides them) or 'mae' ({name: mae, drop: 1, ...}: MAE's gate
    reweighting the heads of that relative attention). Plain attention cannot use the streamed cache."""
    keep_ffn: bool = False
    """Keep the FFN sublayer in all-attention layers (ablation); layers without persistent memory always
    have one."""
    dropout: float = 0.3
    """Dropout on attention weights (context and persistent) and on FFN hidden units."""
    emb_dropout: float = 0.0
    """Dropout on the input embeddings and on the last hidden states."""
    init: str = "fairseq"
    """Parameter initialisation: 'fairseq' (the default here: the adaptive-span reference's own PyTorch
    defaults, unscaled embeddings, positions inside attention, which learn fast) or 'gpt2'; relative position
    keys, spans and persistent memory keep theirs under both (docs/init.md)."""
    aux_heads: AuxHeadsConfig = field(default_factory=AuxHeadsConfig)
    """Auxiliary prediction heads (T64): intermediate-layer losses on the outputs of layers 1..n-1 and
    multiple targets from the last hidden states; off by default. They need the plain output layer."""


@dataclass
class StreamingLMModelConfig(StreamingLMConfig):
    """The `model=streaming_lm` config group: StreamingLMConfig with sizes taken from the task when 0."""

    vocab_size: int = 0
    """Output classes; 0 = the task's vocabulary size."""
    block_size: int = 0
    """Tokens per streamed block; 0 = the task's tokens_per_sample (a non-zero value must equal it)."""
    name: str = "streaming_lm"
    """Registry name."""


def validate_config(cfg: StreamingLMConfig) -> None:
    """Raise ConfigError naming the first inconsistent key."""
    if not isinstance(cfg.vocab_size, int) or cfg.vocab_size <= 0:
        raise ConfigError(f"model.vocab_size must be a positive integer, got {cfg.vocab_size!r}")
    if cfg.d_model % cfg.n_heads:
        raise ConfigError(f"model.d_model={cfg.d_model} is not divisible by model.n_heads={cfg.n_heads}")
    for key in ("n_layers", "n_heads", "d_ff", "block_size", "attn_span"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"model.{key} must be positive, got {getattr(cfg, key)}")
    for key in ("span_ramp", "cache_margin", "persistent_memory"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"model.{key} must be >= 0, got {getattr(cfg, key)}")
    if not 0.0 <= cfg.span_init <= 1.0:
        raise ConfigError(f"model.span_init must be in [0, 1], got {cfg.span_init}")
    if cfg.dynamic_span and not cfg.adaptive_span:
        raise ConfigError("model.dynamic_span=true needs model.adaptive_span=true")
    check_adaptive_config(cfg, tie_embeddings=False)
    check_scheme(cfg.init)
    check_aux_heads(cfg.aux_heads, cfg.adaptive_softmax)


def relative_settings(cfg: StreamingLMConfig) -> AdaptiveSpanConfig:
    """The relative attention the span fields of the model config describe."""
    mode = SpanMode.fixed if not cfg.adaptive_span else SpanMode.dynamic if cfg.dynamic_span else SpanMode.adaptive
    return AdaptiveSpanConfig(cfg.attn_span, mode, cfg.span_ramp, cfg.span_init, cfg.persistent_memory)


def relative_attention(cfg: StreamingLMConfig) -> AdaptiveSpanConfig:
    """The layers' relative attention: the span fields', or what a mapping `{name: adaptive_span, ...}` in
    `model.attention` makes of them."""
    settings = relative_settings(cfg)
    choice = choose_attention(cfg.attention, "model.attention", {"adaptive_span": OptionBlock(settings, "model")})
    relative = choice.options if choice.name == "adaptive_span" else settings
    if relative.max_span <= 0:
        raise ConfigError(f"model.attention.max_span must be positive, got {relative.max_span}")
    return relative


def transformer_lm_config(cfg: Any) -> TransformerLMConfig:
    """The transformer_lm configuration of a streaming_lm config (a dataclass or a DictConfig)."""
    validate_config(cfg)
    relative = relative_attention(cfg)
    return TransformerLMConfig(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_ff=cfg.d_ff,
        dropout=0.0,  # no residual dropout: on the attention weights and the FFN hidden units only
        attention_dropout=cfg.dropout,
        activation_dropout=cfg.dropout,
        activation=Activation.relu,
        pre_ln=False,
        final_norm=False,
        attention=cfg.attention,
        adaptive_span=relative_settings(cfg),
        positions=LMPositions.relative,
        max_positions=cfg.block_size,
        cache_margin=cfg.cache_margin,
        ffn=relative.persistent_memory == 0 or cfg.keep_ffn,
        embed_dropout=cfg.emb_dropout,
        final_dropout=cfg.emb_dropout,
        embedding_init=EmbeddingInit.unit,
        scale_embedding=False,
        tie_embeddings=False,
        output_bias=True,
        vocab_size=cfg.vocab_size,
        init=cfg.init,
        aux_heads=cfg.aux_heads,
        memory=cfg.memory,
        **{name: getattr(cfg, name) for name in ADAPTIVE_IO_FIELDS},
    )


def name_layer_attention_keys(state_dict: Dict[str, Tensor], prefix: str, *_: object) -> None:
    """load_state_dict pre-hook: a streamed checkpoint's `layers.N.attn.*` / `layers.N.attn_norm.*` become
    the layer's `self_attn` / `self_attn_norm` (TransformerLayer's names; the order is unchanged)."""
    pattern = re.compile(rf"^{re.escape(prefix)}layers\.(\d+)\.attn(_norm)?\.")
    for key in [k for k in state_dict if pattern.match(k)]:
        state_dict[pattern.sub(lambda m: f"{prefix}layers.{m.group(1)}.self_attn{m.group(2) or ''}.", key)] = (
            state_dict.pop(key)
        )


def with_streamed_layer_names(model: nn.Module, weights: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """A copy of the state dict `weights` with a streaming_lm's layer keys as `model` holds them (what
    load_state_dict does through the pre-hook), for the checks that compare a checkpoint's keys with the model's."""
    out = dict(weights)
    for name, module in model.named_modules():
        if isinstance(module, StreamingLM):
            name_layer_attention_keys(out, f"{name}." if name else "")
    return out


@MODELS.register("streaming_lm", StreamingLMModelConfig)
class StreamingLM(TransformerLM):
    """transformer_lm built from a streaming_lm config (`transformer_lm_config`); `cfg` is that transformer_lm
    configuration."""

    def __init__(self, cfg: Any, padding_idx: Optional[int] = None):
        super().__init__(transformer_lm_config(cfg), cfg.vocab_size, padding_idx)
        self._register_load_state_dict_pre_hook(name_layer_attention_keys)

    def attention_blocks(self, cfg: Any) -> Dict[str, OptionBlock]:
        """The span fields of the streaming_lm config (no `mae:` block: MAE's options come with
        `model.attention`)."""
        return {"adaptive_span": OptionBlock(cfg.adaptive_span, "model")}

    @classmethod
    def create(cls, cfg: Any, padding_idx: Optional[int] = None) -> "StreamingLM":  # type: ignore[override]
        """The model of a config: an AdaptiveSoftmaxStreamingLM when cfg.adaptive_softmax, else a StreamingLM."""
        model_cls = AdaptiveSoftmaxStreamingLM if cfg.adaptive_softmax else StreamingLM
        return model_cls(cfg, padding_idx)

    @classmethod
    def build(cls, cfg: Any, task: Any) -> "StreamingLM":
        """The model of a `model=streaming_lm` config for a task (vocabulary and block length from it)."""
        values = {f.name: cfg[f.name] for f in fields(StreamingLMConfig)}
        values["vocab_size"] = cfg.vocab_size or task.vocab_size
        task_block = int(getattr(task.cfg, "tokens_per_sample", 0) or 0)
        if cfg.block_size and task_block and cfg.block_size != task_block:
            raise ConfigError(
                f"model.block_size={cfg.block_size} differs from task.tokens_per_sample={task_block} "
                "(the streamed block length); set model.block_size=0 to take the task's"
            )
        values["block_size"] = cfg.block_size or task_block or StreamingLMConfig.block_size
        model_cfg = StreamingLMConfig(**values)
        # the padding id matters only to the adaptive layers (a zero embedding row; pad targets ignored)
        padding_idx = getattr(task, "pad_idx", None) if (cfg.adaptive_input or cfg.adaptive_softmax) else None
        return cls.create(model_cfg, padding_idx)


class AdaptiveSoftmaxStreamingLM(AdaptiveSoftmaxLM, StreamingLM):
    """A streaming_lm config with an adaptive softmax: transformer_lm's AdaptiveSoftmaxLM (forward returns
    the last hidden states, which the criterion and the evaluations score through `output_nll`)."""
