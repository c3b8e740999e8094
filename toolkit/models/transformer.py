"""Encoder-decoder Transformer for translation (Vaswani et al. 2017), with incremental decoding.

The decoder reads `prev_output_tokens` = [start] + target[:-1] (teacher forcing) and predicts target, which ends
with eos. The start symbol is eos (fairseq's convention, toolkit/data/token_batching.collate's default) unless the
task sets `decoder_start_idx` (e.g. to bos, when it collates with bos); generation starts from the same symbol.

For generation, `init_decoder_state` creates per-layer key/value caches: each `decode` call then takes only the
newest token(s), appends their self-attention keys/values, and computes the encoder-decoder keys once.

Each of the three attention slots (encoder self-attention, decoder self-attention, encoder-decoder attention)
takes a registered attention (toolkit.modules.attention): `attention` chooses for all of them, `slot_attention.SLOT`
for one. `attention: mae` (with `mae_slots`, `mae`) makes slots mixtures of attentive experts (Peng et al.
2020, docs/mae.md); `metrics()` then reports per-module gate entropy and expert usage for the trainer's logs.
`slot_attention.decoder_self: adaptive_span` gives the decoder relative attention with a learned span (its
`span_l1` cost is an auxiliary term; incremental decoding keeps the earlier positions' keys and values in the
cache).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.errors import ConfigError, close_matches
from toolkit.models.base import ToolkitModel
from toolkit.models.init_schemes import InitTargets, apply_init, check_scheme
from toolkit.modules.attention import Context
from toolkit.modules.attention.base import Cache, reorder_cache
from toolkit.modules.attention.mae import MAEAttention, MAEConfig
from toolkit.modules.attention.mae_gate import (
    COUNT_KEY,
    EXPERT_KEY,
    GATE_PARAM_PATTERN,
    SUM_KEY,
)
from toolkit.modules.attention.mae_stats import mae_metrics
from toolkit.modules.attention.registry import (
    AttentionChoice,
    AttentionFactory,
    OptionBlock,
    attention_name,
    build_choice,
    choose_attention,
)
from toolkit.modules.attention.terms import (
    attention_after_update,
    attention_metrics,
    attention_term_names,
    attention_terms,
)
from toolkit.modules.memory_placement import MemoryConfigMixin
from toolkit.modules.positional import PositionKind, build_positions
from toolkit.modules.transformer_layer import Activation, TransformerLayer
from toolkit.registry import MODELS

# The attention slots of the encoder-decoder model (what `mae_slots` and `slot_attention` name) and what each
# asks of its attention.
SLOT_CONTEXTS = {
    "encoder_self": Context.bidirectional,
    "decoder_self": Context.decoder,
    "encoder_decoder": Context.cross,
}
MAE_SLOTS = tuple(SLOT_CONTEXTS)
# Per-row decoding state MAE keeps in a cross-attention cache (its gate reads the decoder state, not the
# source): beam reordering must select these rows even when the static keys/values are left alone.
MAE_CACHE_KEYS = (SUM_KEY, COUNT_KEY, EXPERT_KEY)


@dataclass
class SlotAttentionConfig:
    """One slot's attention instead of `model.attention`'s (null = `model.attention`, and `mae_slots`)."""

    encoder_self: Any = None
    """Encoder self-attention: a registered attention name or {name: NAME, option: value} (bidirectional)."""
    decoder_self: Any = None
    """Decoder self-attention (causal; also run step by step with a cache while decoding)."""
    encoder_decoder: Any = None
    """Encoder-decoder attention (queries from the decoder, keys and values from the source)."""


@dataclass
class TransformerConfig(MemoryConfigMixin):
    """Sizes and options of the encoder-decoder Transformer (defaults: transformer_base)."""

    name: str = "transformer"
    encoder_layers: int = 6
    """Number of encoder layers."""
    decoder_layers: int = 6
    """Number of decoder layers."""
    d_model: int = 512
    """Model width (embedding and residual stream size)."""
    ffn_dim: int = 2048
    """Hidden size of the position-wise feed-forward sublayers."""
    n_heads: int = 8
    """Attention heads per attention module."""
    dropout: float = 0.1
    """Dropout on embeddings and on every sublayer output before the residual add."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    activation_dropout: float = 0.0
    """Dropout after the FFN activation."""
    pre_ln: bool = False
    """LayerNorm before each sublayer plus a final LayerNorm (True), or after each sublayer (False, the paper)."""
    positions: PositionKind = PositionKind.sinusoidal
    """Position embeddings: 'sinusoidal' (fixed) or 'learned'."""
    max_positions: int = 1024
    """Longest source or target sequence (tokens, eos included) the position tables cover."""
    share_all_embeddings: bool = True
    """One embedding matrix for source, target and output projection (requires a joint vocabulary)."""
    share_decoder_input_output_embed: bool = True
    """Without share_all_embeddings: tie the decoder's input embedding and output projection."""
    scale_embedding: bool = True
    """Multiply token embeddings by sqrt(d_model) before adding positions."""
    activation: Activation = Activation.relu
    """FFN activation: 'relu' or 'gelu'."""
    attention: Any = "standard"
    """Attention of every slot: a registered name (standard, mae, adaptive_span; docs/architecture.md) or
    {name: NAME, option: value, ...}. With 'mae', only the slots listed in mae_slots use it."""
    slot_attention: SlotAttentionConfig = field(default_factory=SlotAttentionConfig)
    """Per-slot choices that replace `attention` (and mae_slots) for that slot."""
    mae: MAEConfig = field(default_factory=MAEConfig)
    """MAE options (experts = heads minus `drop`, gate size, inference mode, UNI-MAE) wherever a slot uses MAE; a
    mapping value ({name: mae, drop: 2}) overrides them."""
    mae_slots: List[str] = field(default_factory=lambda: list(MAE_SLOTS))
    """With attention='mae': the slots that use MAE (encoder_self, decoder_self, encoder_decoder); the
    others keep standard attention."""
    init: str = "fairseq"
    """Parameter initialisation: 'fairseq' (the default here: Vaswani et al. / fairseq's, whose sinusoidal
    positions are as large as the scaled tokens) or 'gpt2' (docs/init.md)."""


@dataclass
class EncoderOut:
    """Encoder states (B, S, D) and the source padding mask (B, S), True at padding."""

    out: Tensor
    padding_mask: Tensor
    any_padding: bool = True  # False: attention may skip the mask (SDPA's faster unmasked path)

    def index_select(self, order: Tensor) -> "EncoderOut":
        rows = (self.out.index_select(0, order), self.padding_mask.index_select(0, order))
        return EncoderOut(*rows, self.any_padding)


@dataclass
class DecoderState:
    """Incremental decoding state: per-layer self- and cross-attention caches, the encoder output, the length."""

    encoder_out: Optional[EncoderOut]
    self_caches: List[Cache]
    cross_caches: List[Cache]
    length: int = 0  # target tokens already fed; the next position index
    # decoder rows per encoder row: > 1 when the beams of a sentence share one copy of its encoder output and
    # encoder-decoder keys/values (which then stay at one row per sentence)
    beams: int = 1


def slot_choices(cfg: TransformerConfig) -> Dict[str, tuple[AttentionChoice, str]]:
    """Each slot's resolved attention and the config key it came from: `slot_attention.SLOT` when set, else
    `attention` (plain attention in the slots `mae_slots` leaves out when that is MAE)."""
    blocks = {"mae": OptionBlock(cfg.mae, "mae")}
    default = choose_attention(cfg.attention, "model.attention", blocks)
    standard = choose_attention("standard", "model.attention")
    if default.name == "mae":
        unknown = [s for s in cfg.mae_slots if s not in MAE_SLOTS]
        if unknown:
            raise ConfigError(
                f"model.mae_slots: unknown slot '{unknown[0]}'{close_matches(unknown[0], MAE_SLOTS)}; "
                f"valid: {', '.join(MAE_SLOTS)}"
            )
    chosen: Dict[str, tuple[AttentionChoice, str]] = {}
    per_slot = getattr(cfg, "slot_attention", None)  # absent from configs written before it existed
    for slot in SLOT_CONTEXTS:
        value = per_slot.get(slot) if isinstance(per_slot, Mapping) else getattr(per_slot, slot, None)
        if value is not None:
            where = f"model.slot_attention.{slot}"
            chosen[slot] = (choose_attention(value, where, blocks), where)
        elif default.name == "mae" and slot not in cfg.mae_slots:
            chosen[slot] = (standard, "model.attention")
        else:
            chosen[slot] = (default, "model.attention")
    return chosen


def slot_factories(cfg: TransformerConfig) -> Dict[str, AttentionFactory]:
    """The attention factory of each slot, checked against what the slot asks (one ConfigError line when a
    variant cannot serve it). MAE's gate is per sequence in the encoder and causal (running prefix mean, one
    gate per position) in the decoder, where its input is the decoder state: cross-attention too, so that
    incremental decoding sees exactly what full recomputation sees."""
    return {
        slot: build_choice(choice, SLOT_CONTEXTS[slot], where, max_len=cfg.max_positions, n_heads=cfg.n_heads)
        for slot, (choice, where) in slot_choices(cfg).items()
    }


def build_embedding(vocab_size: int, dim: int, pad_idx: int) -> nn.Embedding:
    embed = nn.Embedding(vocab_size, dim, padding_idx=pad_idx)
    nn.init.normal_(embed.weight, mean=0.0, std=dim**-0.5)
    nn.init.zeros_(embed.weight[pad_idx])
    return embed


@MODELS.register("transformer", TransformerConfig)
class TransformerModel(ToolkitModel):
    """Embeddings + positions -> encoder layers; decoder layers with causal self- and cross-attention -> logits."""

    def __init__(
        self,
        cfg: TransformerConfig,
        src_vocab_size: int,
        tgt_vocab_size: int,
        pad_idx: int,
        eos_idx: int,
        bos_idx: int,
        decoder_start_idx: Optional[int] = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.pad_idx, self.eos_idx, self.bos_idx = pad_idx, eos_idx, bos_idx
        self.decoder_start_idx = eos_idx if decoder_start_idx is None else decoder_start_idx
        if cfg.share_all_embeddings and src_vocab_size != tgt_vocab_size:
            raise ConfigError(
                f"model.share_all_embeddings=true needs a joint vocabulary, but the source has {src_vocab_size} "
                f"and the target {tgt_vocab_size} symbols"
            )
        check_scheme(cfg.init)
        factories = slot_factories(cfg)
        d = cfg.d_model
        self.embed_scale = math.sqrt(d) if cfg.scale_embedding else 1.0
        self.encoder_embed = build_embedding(src_vocab_size, d, pad_idx)
        self.decoder_embed = (
            self.encoder_embed if cfg.share_all_embeddings else build_embedding(tgt_vocab_size, d, pad_idx)
        )
        self.encoder_positions = build_positions(cfg.positions, cfg.max_positions, d)
        self.decoder_positions = build_positions(cfg.positions, cfg.max_positions, d)

        def layer(cross: bool) -> TransformerLayer:
            return TransformerLayer(
                d,
                cfg.n_heads,
                cfg.ffn_dim,
                dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout,
                activation_dropout=cfg.activation_dropout,
                pre_ln=cfg.pre_ln,
                cross_attention=cross,
                activation=cfg.activation,
                self_attention_cls=factories["decoder_self" if cross else "encoder_self"],
                cross_attention_cls=factories["encoder_decoder"],
            )

        self.encoder_layers = nn.ModuleList(layer(False) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(layer(True) for _ in range(cfg.decoder_layers))
        # pre-LN leaves the residual stream unnormalised: normalise once at the end of each stack
        self.encoder_norm = nn.LayerNorm(d) if cfg.pre_ln else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d) if cfg.pre_ln else nn.Identity()
        self.output_projection: Optional[nn.Linear] = None
        if not (cfg.share_all_embeddings or cfg.share_decoder_input_output_embed):
            self.output_projection = nn.Linear(d, tgt_vocab_size, bias=False)
            nn.init.normal_(self.output_projection.weight, mean=0.0, std=d**-0.5)
        # decoder-input padding of the last teacher-forced call: the decoder's per-position gates have no
        # padding mask of their own (causality keeps real positions clean), metrics() drops padded rows with it
        self._target_padding: Optional[Tensor] = None
        embeds = {id(e): e for e in (self.encoder_embed, self.decoder_embed)}.values()
        positions = [p.weight for p in (self.encoder_positions, self.decoder_positions) if isinstance(p, nn.Embedding)]
        apply_init(self, cfg.init, InitTargets([(e, self.embed_scale) for e in embeds], positions))
        self.attention_has_terms = bool(attention_term_names(self))  # e.g. a learned span's span_l1

    @classmethod
    def build(cls, cfg: TransformerConfig, task: Any) -> "TransformerModel":
        """`task` provides vocab_size (or src_vocab_size/tgt_vocab_size), pad_idx, eos_idx, bos_idx and
        optionally decoder_start_idx (default eos)."""
        src_vocab = getattr(task, "src_vocab_size", None) or task.vocab_size
        tgt_vocab = getattr(task, "tgt_vocab_size", None) or task.vocab_size
        start = getattr(task, "decoder_start_idx", None)
        return cls(cfg, src_vocab, tgt_vocab, task.pad_idx, task.eos_idx, task.bos_idx, start)

    # ---- encoder -------------------------------------------------------------------------------------
    def encode(self, src_tokens: Tensor) -> EncoderOut:
        """Encoder states for (B, S) source tokens; padding may be on either side."""
        padding_mask = src_tokens.eq(self.pad_idx)
        # positions count real tokens only, so left or right padding gives the same states
        positions = ((~padding_mask).cumsum(1) - 1).clamp(min=0)
        self._check_length(src_tokens.size(1), "source")
        x = self.encoder_embed(src_tokens) * self.embed_scale + self.encoder_positions(positions)
        x = F.dropout(x, self.cfg.dropout, self.training)
        # no mask at all lets SDPA take its fastest path when the batch has no padding
        any_padding = bool(padding_mask.any())
        key_mask = padding_mask if any_padding else None
        for layer in self.encoder_layers:
            x = layer(x, padding_mask=key_mask)
        return EncoderOut(self.encoder_norm(x), padding_mask, any_padding)

    # ---- decoder -------------------------------------------------------------------------------------
    def init_decoder_state(self, encoder_out: Optional[EncoderOut] = None, beams: int = 1) -> DecoderState:
        """Caches for incremental decoding (one self and one cross cache dict per decoder layer); the
        encoder-decoder keys and values of `encoder_out` are computed here, once per source row.

        `beams` > 1: each encoder row will serve that many consecutive decoder rows, all attending to its one
        copy; the caller expands the per-hypothesis state with reorder_decoder_state(state, order, static=False).

        MAE modules in 'random_expert' mode get their expert drawn here, one per source sentence, so that beam
        search (which expands the state to beams afterwards) decodes every beam of a sentence with one expert."""
        n = len(self.decoder_layers)
        state = DecoderState(encoder_out, [{} for _ in range(n)], [{} for _ in range(n)], beams=beams)
        if encoder_out is not None:
            rows, device = encoder_out.out.size(0), encoder_out.out.device
            for i, layer in enumerate(self.decoder_layers):
                # once per source row: beam search then copies the keys/values to its beams
                layer.cross_attn.cache_static_kv(encoder_out.out, state.cross_caches[i])
                for module, caches in ((layer.self_attn, state.self_caches), (layer.cross_attn, state.cross_caches)):
                    if isinstance(module, MAEAttention) and module.mode == "random_expert":
                        caches[i][EXPERT_KEY] = torch.randint(module.n_experts, (rows,), device=device)
        return state

    def reorder_decoder_state(self, state: DecoderState, order: Tensor, static: bool = True) -> None:
        """Select rows `order` of every cache (in place). `static=False` leaves the encoder output and the
        cross-attention caches alone: valid when `order` only permutes rows with identical sources (the beams
        of one sentence), and it saves copying them at every step."""
        for cache in state.self_caches:
            reorder_cache(cache, order, grow=True)  # the next decode step extends them
        if static and state.beams > 1:
            # one row per sentence: the sentences of the kept hypotheses (a sentence's beams stay together)
            sources = order[:: state.beams] // state.beams
            for cache in state.cross_caches:
                for key, value in cache.items():
                    cache[key] = value.index_select(0, order if key in MAE_CACHE_KEYS else sources)
            if state.encoder_out is not None:
                state.encoder_out = state.encoder_out.index_select(sources)
        elif static:
            for cache in state.cross_caches:
                reorder_cache(cache, order)
            if state.encoder_out is not None:
                state.encoder_out = state.encoder_out.index_select(order)
        else:  # MAE's running gate input in a cross cache follows the hypotheses
            for cache in state.cross_caches:
                for key in MAE_CACHE_KEYS:
                    if key in cache:
                        cache[key] = cache[key].index_select(0, order)

    def decode(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[EncoderOut] = None,
        caches: Optional[DecoderState] = None,
    ) -> Tensor:
        """Logits (B, T, V). With `caches`, prev_output_tokens holds only the tokens after those already fed
        (normally the newest one, (B, 1)); positions continue from the cached length."""
        if encoder_out is None:
            if caches is None or caches.encoder_out is None:
                raise ValueError("decode needs encoder_out (directly or in the decoder state)")
            encoder_out = caches.encoder_out
        start = caches.length if caches is not None else 0
        t = prev_output_tokens.size(1)
        self._check_length(start + t, "target")
        positions = torch.arange(start, start + t, device=prev_output_tokens.device)
        x = self.decoder_embed(prev_output_tokens) * self.embed_scale + self.decoder_positions(positions)
        x = F.dropout(x, self.cfg.dropout, self.training)
        # the decoder input is right-padded: causal attention keeps real positions off the padding
        enc_mask = encoder_out.padding_mask if encoder_out.any_padding else None
        # ...but a product-key memory's BatchNorm must not see the pad rows (incremental decoding has none)
        target_padding = prev_output_tokens.eq(self.pad_idx) if caches is None else None
        for i, layer in enumerate(self.decoder_layers):
            x = layer(
                x,
                causal=True,
                encoder_out=encoder_out.out,
                encoder_padding_mask=enc_mask,
                self_cache=caches.self_caches[i] if caches is not None else None,
                cross_cache=caches.cross_caches[i] if caches is not None else None,
                ffn_padding_mask=target_padding,
            )
        if caches is not None:
            caches.length += t
        else:
            self._target_padding = target_padding
        return self.output_layer(self.decoder_norm(x))

    def compiled_methods(self) -> tuple[str, ...]:
        """Incremental decoding runs through `decode`, not forward: compile it too."""
        return ("decode",)

    def shared_output_weight(self) -> Optional[Tensor]:
        """The decoder embedding table when the output layer reuses it (through F.linear)."""
        return self.decoder_embed.weight if self.output_projection is None else None

    def output_layer(self, x: Tensor) -> Tensor:
        if self.output_projection is not None:
            return self.output_projection(x)
        return F.linear(x, self.decoder_embed.weight)

    def forward(
        self, src_tokens: Tensor, prev_output_tokens: Tensor, src_lengths: Optional[Tensor] = None
    ) -> tuple[Tensor, Dict[str, Tensor]]:
        """Teacher-forced logits (B, T, V) and named auxiliary terms (the attention's, e.g. span_l1 of a learned span).
        `src_lengths` is accepted for fairseq-style batches and unused: padding is read from pad_idx."""
        logits = self.decode(prev_output_tokens, self.encode(src_tokens))
        return logits, (attention_terms(self) if self.attention_has_terms else {})

    def aux_term_names(self) -> List[str]:
        return attention_term_names(self)

    def after_update(self) -> None:
        """Attention upkeep after an optimizer step (e.g. learned spans back into range)."""
        super().after_update()
        if self.attention_has_terms:
            attention_after_update(self)

    def mae_modules(self) -> Dict[str, MAEAttention]:
        """MAE attention modules by slot name, e.g. 'encoder_self.0', 'encoder_decoder.5'."""
        named = {}
        for stack, layers in (("encoder", self.encoder_layers), ("decoder", self.decoder_layers)):
            for i, layer in enumerate(layers):
                for attr, slot in (("self_attn", f"{stack}_self"), ("cross_attn", "encoder_decoder")):
                    module = getattr(layer, attr, None)
                    if isinstance(module, MAEAttention):
                        named[f"{slot}.{i}"] = module
        return named

    def parameter_breakdown(self) -> Dict[str, int]:
        """Gate parameters (MAE), reported by dry runs beside the total."""
        if attention_name(self.cfg.attention) != "mae" and not self.mae_modules():
            return {}
        pattern = re.compile(GATE_PARAM_PATTERN)
        return {"gate_parameters": sum(p.numel() for n, p in self.named_parameters() if pattern.search(n))}

    def metrics(self) -> Dict[str, float]:
        """Per MAE module: gate entropy and expert-usage summaries of the last teacher-forced forward; other
        attention metrics (e.g. learned spans); then the base class's (product-key memory usage)."""
        extra = attention_metrics(self) if self.attention_has_terms else {}
        return {**mae_metrics(self.mae_modules(), self._target_padding), **extra, **super().metrics()}

    def max_decoder_positions(self) -> int:
        """Longest decoder input (start symbol + generated tokens) the position table covers."""
        return self.cfg.max_positions

    def _check_length(self, length: int, side: str) -> None:
        if length > self.cfg.max_positions:
            raise ValueError(f"{side} length {length} exceeds model.max_positions={self.cfg.max_positions}")
