"""Optimizer state of a checkpoint saved with separate q/k/v projections, mapped onto the stacked `qkv_proj`.

An optimizer's state dict indexes parameters by position. A checkpoint written when attention had three
projections lists q, k and v (weight and bias each) where the model now has one stacked weight and bias, so
its indices no longer line up. Per-element state (Adam's moments, momentum, Adagrad's sums) is stacked in the
same block order as the weights; per-tensor state (the step count) is the same for the three and kept once,
so every element resumes with the state it had.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import torch
from torch import nn

from toolkit.errors import DataError
from toolkit.modules.attention.base import separate_projection_sources


def _merge(states: Sequence[Dict[str, Any]], name: str) -> Dict[str, Any]:
    merged: Dict[str, Any] = {}
    for key, first in states[0].items():
        values = [s[key] for s in states]
        if isinstance(first, torch.Tensor) and first.dim() > 0:
            merged[key] = torch.cat(values)
        elif all(torch.equal(torch.as_tensor(v), torch.as_tensor(first)) for v in values):
            merged[key] = first
        else:
            raise DataError(
                f"cannot stack the optimizer state '{key}' of {name}'s separate projections: their values differ"
            )
    return merged


def stack_separate_projection_states(
    model: nn.Module,
    saved_model: Mapping[str, Any],
    group_names: Mapping[str, List[str]],
    saved_optimizers: Dict[str, Any],
) -> Dict[str, Any]:
    """`saved_optimizers` (group -> optimizer state dict) with the state of separate q/k/v projections stacked.

    `saved_model` is the checkpoint's model state dict (its key order is the order the old parameters had);
    `group_names` maps each parameter group to its parameter names in optimizer order. Returned unchanged
    when the checkpoint holds stacked projections already."""
    sources = {s: parts for s, parts in separate_projection_sources(model).items() if parts[0] in saved_model}
    if not sources:
        return saved_optimizers
    target = {part: stacked for stacked, parts in sources.items() for part in parts}
    out = dict(saved_optimizers)
    for group, names in group_names.items():
        if group not in saved_optimizers:
            continue
        members = set(names)
        # the group's parameters as the checkpoint's optimizer listed them: model order, separate projections
        old_names = [key for key in saved_model if target.get(key, key) in members]
        saved = saved_optimizers[group]
        old_ids = [i for g in saved["param_groups"] for i in g["params"]]
        if len(old_ids) != len(old_names):
            raise DataError(
                f"cannot map the optimizer state of parameter group '{group}' onto the stacked q/k/v "
                f"projections: the checkpoint lists {len(old_ids)} parameters, the model "
                f"{len(old_names)} under their old names"
            )
        old_index = dict(zip(old_names, old_ids))
        hyper = {i: g for g in saved["param_groups"] for i in g["params"]}
        state, param_groups, new_id = {}, [], 0
        for g in _param_groups_of(saved, names, sources):
            ids = []
            for name in g:
                parts = [old_index[p] for p in sources.get(name, (name,))]
                present = [i for i in parts if i in saved["state"]]
                if present and len(present) != len(parts):
                    raise DataError(
                        f"cannot stack the optimizer state of {name}: some of its separate projections have none"
                    )
                if present:
                    state[new_id] = _merge([saved["state"][i] for i in parts], name)
                ids.append(new_id)
                new_id += 1
            param_groups.append({**hyper[old_index[sources.get(g[0], (g[0],))[0]]], "params": ids})
        out[group] = {"state": state, "param_groups": param_groups}
    return out


def _param_groups_of(saved: Dict[str, Any], names: List[str], sources: Mapping[str, Any]) -> List[List[str]]:
    """The group's parameter names split as its optimizer splits them: one torch param group for all, or
    one per parameter (optimizers whose settings are per tensor)."""
    if len(saved["param_groups"]) == 1:
        return [list(names)]
    if all(len(g["params"]) == 1 for g in saved["param_groups"]):
        return [[name] for name in names]
    raise DataError(
        "cannot map an optimizer state with several multi-parameter groups onto the stacked q/k/v projections"
    )
