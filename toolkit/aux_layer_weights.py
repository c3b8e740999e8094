"""The aux heads' per-layer weight rule (Al-Rfou et al. 2019): layer l's loss stops at l / (2n) of training.

The config's `aux_layer_weights` is one schedule (toolkit.aux_weights.WeightScheduleConfig) for all the
intermediate-layer terms `layer_{l}_nll` of a model of n = model.n_layers layers: term l follows it with its
end at end_fraction * l / n of max_update (T64: end_fraction 0.5). Here it becomes one plain schedule per
term name, which joins the `aux_weights` rules; the generic schedules know nothing about layers.

Configs written before (stored in checkpoints, or a user's own files) said the same inside `aux_weights`:
`per_layer_fraction: true` and `n_layers: N` on a pattern entry. `upgrade_per_layer_entries` reads them as
`aux_layer_weights` (with a deprecation warning), so such runs still load, evaluate and resume.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Dict, List

from omegaconf import DictConfig, OmegaConf

from toolkit.aux_weights import AuxWeights, WeightScheduleConfig, typed_schedule
from toolkit.errors import ConfigError

log = logging.getLogger(__name__)

KEY = "aux_layer_weights"
OLD_KEYS = ("per_layer_fraction", "n_layers")  # the fields aux_weights entries had for this rule


def layer_term_names(n_layers: int) -> List[str]:
    """The intermediate-layer terms of a model of `n_layers` layers: layer_1_nll .. layer_{n-1}_nll."""
    return [f"layer_{l}_nll" for l in range(1, n_layers)]


def layer_schedules(template: WeightScheduleConfig, n_layers: int) -> Dict[str, WeightScheduleConfig]:
    """One plain schedule per intermediate-layer term: layer l ends at template.end_fraction * l / n_layers."""
    if template.end is not None:
        raise ConfigError(
            f"{KEY}.end: layer l ends at end_fraction * l / model.n_layers of max_update; set end_fraction instead"
        )
    if template.end_fraction is None:
        raise ConfigError(f"{KEY}.end_fraction must be set (layer l ends at end_fraction * l / model.n_layers)")
    # the same float operations, in the same order, as the schedule's own per-layer option once did
    return {
        name: dataclasses.replace(template, end_fraction=template.end_fraction * l / n_layers)
        for l, name in enumerate(layer_term_names(n_layers), start=1)
    }


def model_layers(cfg: DictConfig) -> int:
    """model.n_layers, which the per-layer rule needs (a ConfigError for a model without it)."""
    n_layers = cfg.model.get("n_layers") if isinstance(cfg.model, DictConfig) else None
    if not isinstance(n_layers, int) or n_layers < 1:
        raise ConfigError(f"{KEY}: model {cfg.model.get('name')} has no model.n_layers (a decoder LM's layer count)")
    return n_layers


def build_aux_weights(cfg: DictConfig) -> AuxWeights:
    """The weights of a training config: `aux_weights` plus the per-layer schedules of `aux_layer_weights`."""
    raw_layer = cfg.get(KEY)
    if raw_layer is None:
        return AuxWeights(cfg.aux_weights, cfg.max_update)
    template = typed_schedule(OmegaConf.to_container(raw_layer, resolve=True), KEY)
    named = layer_schedules(template, model_layers(cfg))
    weights = AuxWeights(cfg.aux_weights, cfg.max_update, named)
    for key in cfg.aux_weights:
        both = [name for name in named if re.fullmatch(str(key), name)]
        if both:
            raise ConfigError(
                f"aux_weights.{key} and {KEY} both set the weight of {both[0]}: keep one ({KEY} is the per-layer "
                "rule, layer l of model.n_layers ending at end_fraction * l / n)"
            )
    return weights


def upgrade_per_layer_entries(cfg: DictConfig) -> None:
    """Read the old form of the rule, `aux_weights.KEY.{per_layer_fraction, n_layers}`, as today's, in place.

    - `per_layer_fraction: true` with end_fraction set: the entry's schedule becomes `aux_layer_weights` and
      the entry goes (its n_layers must be model.n_layers, as the old form required of it).
    - an entry of only `n_layers` (an old command-line override onto a preset that now sets
      `aux_layer_weights`): it goes, once its n_layers is checked against model.n_layers.
    - otherwise the rule had no effect (`end` set, no end_fraction, per_layer_fraction false): the entry stays
      as the plain schedule it was, without the two fields.
    """
    raw = cfg.get("aux_weights")
    if not isinstance(raw, DictConfig):
        return
    for key in [str(k) for k in raw]:
        entry = raw[key]
        if not isinstance(entry, DictConfig) or not any(name in entry for name in OLD_KEYS):
            continue
        old: Dict[str, Any] = OmegaConf.to_container(entry, resolve=True)  # type: ignore[assignment]
        per_layer, n_old = old.pop("per_layer_fraction", None), old.pop("n_layers", None)
        where = f"aux_weights.{key}"
        if per_layer is None and not old:  # only n_layers: the cut-offs now follow model.n_layers
            _check_layers(cfg, where, n_old)
            del raw[key]
        elif per_layer and old.get("end") is None and old.get("end_fraction") is not None:
            _check_layers(cfg, where, n_old)
            del raw[key]
            cfg[KEY] = typed_schedule(old, where)
        else:  # the rule never applied to this entry: the plain schedule it computed
            raw[key] = old
            log.warning("%s: per_layer_fraction/n_layers are deprecated and had no effect here: dropped", where)
            continue
        log.warning(
            "%s: per_layer_fraction/n_layers are deprecated; read as %s=%s (layer l of model.n_layers ends at "
            "end_fraction * l / n)",
            where,
            KEY,
            OmegaConf.to_container(cfg[KEY], enum_to_str=True) if cfg.get(KEY) is not None else None,
        )


def _check_layers(cfg: DictConfig, where: str, n_old: Any) -> None:
    n_layers = model_layers(cfg)
    if n_old is not None and n_old != n_layers:
        raise ConfigError(
            f"{where}.n_layers={n_old} differs from model.n_layers={n_layers}: the per-layer cut-offs follow "
            f"model.n_layers now; drop {where}.n_layers and per_layer_fraction (set {KEY} instead)"
        )
