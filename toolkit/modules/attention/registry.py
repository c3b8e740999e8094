"""ATTENTIONS: every attention variant by name, with its typed options and the places it can serve.

A model chooses attention with a config value that is a registered name (`attention: mae`) or a mapping
`{name: adaptive_span, span_ramp: 16}`; `attention_factory(value, context, where)` turns it into a factory
`(d_model, n_heads, dropout) -> nn.Module` for one slot (the `AttentionFactory` TransformerLayer takes). The
slot's `Context` says what the module must do there; a variant that cannot do it is refused with one
ConfigError line naming the key and saying why, when the model is built (tk-train checks that on the meta
device before any work).

Adding a variant = one file that registers itself here (`ATTENTIONS.register(NAME, CONFIG)(AttentionVariant(
...))`, see standard.py) and is imported at the bottom of this package's `__init__.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable, Mapping, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from toolkit.errors import ConfigError, close_matches
from toolkit.registry import Registry

AttentionFactory = Callable[[int, int, float], nn.Module]  # (d_model, n_heads, attention dropout) -> module


class Context(StrEnum):
    """Where an attention module serves, i.e. what its callers ask of it."""

    causal = "causal"  # causal self-attention over windows (decoder-only LMs)
    streamed = "streamed"  # causal self-attention over a block plus a carried cache of earlier inputs
    bidirectional = "bidirectional"  # encoder self-attention: every position sees the whole sequence
    decoder = "decoder"  # a decoder's causal self-attention, also run step by step with a cache
    cross = "cross"  # encoder-decoder attention: queries from the decoder, keys and values from the source


CONTEXT_NAMES = {
    Context.causal: "causal self-attention over windows",
    Context.streamed: "the streamed cache",
    Context.bidirectional: "bidirectional (encoder) self-attention",
    Context.decoder: "decoder self-attention (incremental decoding)",
    Context.cross: "encoder-decoder attention",
}


@dataclass(frozen=True)
class BuildSpec:
    """What a variant's builder knows besides its own options."""

    context: Context
    max_len: int  # the model's longest input (a default for span-like sizes)
    # the streamed LM's relative attention settings (an AdaptiveSpanConfig), which a variant that reweights
    # heads (MAE) builds on there; None elsewhere
    relative: Any = None


@dataclass(frozen=True)
class AttentionVariant:
    """A registered variant: how to build it, and the contexts it cannot serve (context -> why not)."""

    build: Callable[[Any, BuildSpec], AttentionFactory]  # (typed options, spec) -> factory
    unsupported: Mapping[Context, str] = dataclasses.field(default_factory=dict)
    # (typed options, n_heads or None, key prefix for messages) -> raise ConfigError for bad values
    validate: Optional[Callable[[Any, Optional[int], str], None]] = None


ATTENTIONS: Registry[AttentionVariant] = Registry("attention", config_store=False)


@dataclass(frozen=True)
class OptionBlock:
    """A model's own config block of a variant's options (e.g. the `mae:` block): the defaults of that
    variant's options, which a mapping value overrides. `key` names it in messages about a bare name."""

    options: Any  # a dataclass instance, a mapping or a DictConfig
    key: str


@dataclass
class AttentionChoice:
    """A resolved config value: the variant's name, its entry, its typed options and the key prefix that
    messages about them use."""

    name: str
    variant: AttentionVariant
    options: Any
    prefix: str


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return value


def attention_name(value: Any) -> Optional[str]:
    """The variant name of a config value (a name or a mapping with `name`), None when it has none."""
    value = _plain(value)
    name = value.get("name") if isinstance(value, Mapping) else value
    return str(name) if isinstance(name, str) else None


def choose_attention(value: Any, where: str, blocks: Optional[Mapping[str, OptionBlock]] = None) -> AttentionChoice:
    """Resolve `value` (a name, or a mapping with `name` and options) at config key `where`; `blocks` maps
    a variant name to the model's own block of its options (defaults; see OptionBlock). Unknown options,
    wrong types and bad values are one-line ConfigErrors naming the key."""
    value = _plain(value)
    if isinstance(value, str):
        name, options = str(value), {}
    elif isinstance(value, Mapping):
        options = dict(value)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{where}.name: missing (an attention name: {', '.join(ATTENTIONS.names())})")
    else:
        raise ConfigError(f"{where}: expected an attention name or {{name: NAME, option: value}}, got {value!r}")
    try:
        entry = ATTENTIONS.get(name)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    block = (blocks or {}).get(name)
    prefix = f"{block.key}." if block is not None and not options else f"{where}."
    defaults = _plain(block.options) if block is not None else {}
    typed = typed_options(entry.config_cls, {**defaults, **options}, prefix)
    return AttentionChoice(name, entry.builder, typed, prefix)


def typed_options(config_cls: Optional[type], options: Mapping[str, Any], prefix: str) -> Any:
    """The config dataclass of a variant filled from `options`, type-checked by OmegaConf."""
    known = [f.name for f in dataclasses.fields(config_cls)] if config_cls is not None else []
    if not known and options:
        raise ConfigError(f"unknown key '{prefix}{next(iter(options))}' (this attention has no options)")
    if config_cls is None:
        return None
    for key in options:
        if key not in known:
            raise ConfigError(f"unknown key '{prefix}{key}'{close_matches(str(key), known)}; valid: {', '.join(known)}")
    try:
        node = OmegaConf.merge(OmegaConf.structured(config_cls), dict(options))
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or getattr(error, "key", None) or "?"
        raise ConfigError(f"wrong type for key '{prefix}{key}': {str(error).splitlines()[0]}") from None


def check_context(choice: AttentionChoice, context: Context, where: str) -> None:
    """One ConfigError line when the chosen variant cannot serve `context`."""
    why = choice.variant.unsupported.get(context)
    if why is not None:
        raise ConfigError(f"{where}: attention '{choice.name}' cannot serve {CONTEXT_NAMES[context]}: {why}")


def build_choice(
    choice: AttentionChoice,
    context: Context,
    where: str,
    *,
    max_len: int = 0,
    n_heads: Optional[int] = None,
    relative: Any = None,
) -> AttentionFactory:
    """Check a resolved choice against its slot (and its options' values) and return the module factory."""
    check_context(choice, context, where)
    if choice.variant.validate is not None:
        choice.variant.validate(choice.options, n_heads, choice.prefix)
    return choice.variant.build(choice.options, BuildSpec(context, max_len, relative))


def attention_factory(
    value: Any,
    context: Context,
    where: str,
    *,
    max_len: int = 0,
    n_heads: Optional[int] = None,
    blocks: Optional[Mapping[str, OptionBlock]] = None,
    relative: Any = None,
) -> AttentionFactory:
    """The module factory of config value `value` for one slot (see the module docstring)."""
    choice = choose_attention(value, where, blocks)
    return build_choice(choice, context, where, max_len=max_len, n_heads=n_heads, relative=relative)
