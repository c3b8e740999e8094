"""`tk-analyze spans`: the learned attention span of every layer and head of a checkpoint with relative attention
(a streaming_lm, or any model with `adaptive_span` attention, e.g. a T64 char model or a translation decoder).

Writes OUTPUT/spans.png (a layers x heads heatmap, and per layer the heads' spans sorted, as bars, like
figure 3 of Sukhbaatar et al. 2019) and OUTPUT/spans.json (the numbers), both at once (atomic folder).
Static spans are read from the weights; dynamic spans (predicted from the input) are the mean predicted span
over the first blocks of the validation split, which needs the checkpoint's data folder.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from omegaconf import MISSING, OmegaConf
from torch import nn

from toolkit.config.cli_overrides import apply_overrides, check_complete, split_overrides
from toolkit.errors import ConfigError, DataError
from toolkit.eval.analysis_output import write_analysis
from toolkit.models.streaming_lm import StreamingLM, StreamingLMConfig
from toolkit.models.transformer_lm import TransformerLM
from toolkit.modules.attention.span_attention import SpanMode, current_windows, span_modules, span_stats
from toolkit.modules.memory_placement import place_memories
from toolkit.train.trained_run import RunCheckpoint, load_trained_run, read_run_checkpoint

DYNAMIC_SAMPLE_STREAMS = 8  # dynamic spans: rows of the validation blocks the mean predicted span is taken over


@dataclass
class SpansConfig:
    """Arguments of `tk-analyze spans`."""

    checkpoint: str = MISSING  # a tk-train checkpoint of a model with relative attention (streaming_lm, or
    #                            model.attention=adaptive_span); other models than streaming_lm need their dataset
    output: Optional[str] = None  # folder for spans.png and spans.json (default: beside the checkpoint,
    #                               <checkpoint name>_spans/)
    data: Optional[str] = None  # dynamic spans only: the dataset folder (default: the checkpoint's)


def load_model(checkpoint: RunCheckpoint) -> nn.Module:
    """The checkpoint's model with its weights, in eval mode.

    A streaming_lm is built from the checkpoint alone (on the meta device, then given the saved tensors), so
    static spans need no dataset folder; any other model is built with its task (the checkpoint's dataset)."""
    model_cfg = checkpoint.config.model
    name = model_cfg.get("name")
    if name == "streaming_lm":
        values = {f.name: model_cfg[f.name] for f in fields(StreamingLMConfig) if f.name in model_cfg}
        values["vocab_size"] = int(checkpoint.weights["embed.weight"].shape[0])
        values["block_size"] = values.get("block_size") or int(checkpoint.config.task.get("tokens_per_sample", 1))
        cfg = StreamingLMConfig(**values)
        with torch.device("meta"):
            model: nn.Module = StreamingLM(cfg)
            place_memories(model, cfg.memory)
        model.load_state_dict(checkpoint.weights, assign=True)
    else:
        model = load_trained_run(checkpoint.path, data=checkpoint.config.data).model
    if not span_modules(model):
        raise ConfigError(
            f"{checkpoint.path}: model '{name}' has no relative attention with spans "
            "(needs streaming_lm or model.attention=adaptive_span)"
        )
    return model.eval()


@torch.no_grad()
def observe_dynamic_spans(model: nn.Module, checkpoint: RunCheckpoint, block: int) -> None:
    """Run the first validation blocks (of `block` tokens) through a dynamic-span decoder LM so that span_stats
    has something to average."""
    from toolkit.data.char_corpus import load_char_split

    if not isinstance(model, TransformerLM):
        raise ConfigError(f"{checkpoint.path}: dynamic spans are analysed in decoder LMs only (they need its input)")
    folder = checkpoint.config.get("data")
    if not folder or not Path(folder).is_dir():
        raise DataError(f"dynamic spans depend on the input: the dataset folder is needed (data={folder})")
    tokens = np.asarray(load_char_split(folder, "valid")[: DYNAMIC_SAMPLE_STREAMS * block], dtype=np.int64)
    rows = len(tokens) // block
    if rows == 0:
        raise DataError(f"{folder}/valid holds fewer than {block} tokens")
    model(torch.from_numpy(tokens[: rows * block]).view(rows, block))


def span_report(model: nn.Module, checkpoint: str, step: Optional[int]) -> Dict[str, Any]:
    """The numbers of spans.json."""
    spans = span_stats(model)
    modules = span_modules(model)
    settings = modules[0].span_settings  # every layer's relative attention is built from the same settings
    kind = {SpanMode.fixed: "fixed", SpanMode.dynamic: "dynamic"}.get(settings.span, "static")
    return {
        "checkpoint": checkpoint,
        "step": step,
        "kind": kind,
        "max_span": settings.max_span,
        "ramp": settings.span_ramp,
        "n_layers": len(modules),
        "n_heads": modules[0].n_heads,
        "persistent_memory": settings.persistent_memory,
        "spans": spans.tolist(),  # [layer][head], in tokens
        "windows": current_windows(model),  # keys per query each layer computes (trimmed length)
        "layer_mean": spans.mean(dim=1).tolist(),
        "layer_max": spans.max(dim=1).values.tolist(),
        "mean_span": float(spans.mean()),
        "max_span_learned": float(spans.max()),
    }


def render_png(report: Dict[str, Any]) -> bytes:
    """Heatmap (layers x heads) and sorted per-layer bars of the spans, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spans = np.asarray(report["spans"], dtype=float)
    n_layers, n_heads = spans.shape
    fig, (heat, bars) = plt.subplots(1, 2, figsize=(6 + 0.5 * n_heads + 0.25 * n_layers, 0.35 * n_layers + 3))
    top = max(float(spans.max()), 1.0)  # colour scale up to the longest learned span, for contrast
    image = heat.imshow(spans, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=top)
    heat.set_xlabel("head")
    heat.set_ylabel("layer")
    heat.set_xticks(range(n_heads))
    heat.set_yticks(range(n_layers))
    if spans.size <= 256:
        for (layer, head), z in np.ndenumerate(spans):
            heat.text(
                head, layer, f"{z:.0f}", ha="center", va="center", fontsize=7, color="white" if z < top / 2 else "black"
            )
    fig.colorbar(image, ax=heat, label="span z (tokens)")
    heat.set_title(f"learned span ({report['kind']}), S = {report['max_span']}")
    # the paper's figure: for each layer, its heads' spans in increasing order
    width = 0.8 / n_heads
    x = np.arange(n_layers)[:, None] + (np.arange(n_heads)[None, :] - (n_heads - 1) / 2) * width
    bars.bar(x.ravel(), np.sort(spans, axis=1).ravel(), width=width, color="tab:blue")
    bars.set_xticks(range(n_layers))
    bars.set_xlabel("layer (heads sorted by span)")
    bars.set_ylabel(f"span z (tokens; keys reach z + R, R = {report['ramp']})")
    bars.set_title(f"mean span {report['mean_span']:.0f}")
    fig.suptitle(Path(report["checkpoint"]).name + (f", step {report['step']}" if report["step"] is not None else ""))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def analyze_spans(checkpoint: str, output: Optional[str] = None, data: Optional[str] = None) -> Dict[str, Any]:
    """Write spans.png and spans.json for a checkpoint; returns the report plus the paths written."""
    saved = read_run_checkpoint(checkpoint, data=data)
    model = load_model(saved)
    if span_modules(model)[0].span_settings.span == SpanMode.dynamic:
        observe_dynamic_spans(model, saved, int(saved.config.task.get("tokens_per_sample", 1)))
    report = span_report(model, checkpoint, saved.step)
    png = render_png(report)
    return write_analysis(checkpoint, output, "spans", report, png)


def run(args: List[str]) -> int:
    """`tk-analyze spans checkpoint=PATH [output=DIR] [data=DIR]`; last stdout line: a JSON summary."""
    cfg = OmegaConf.structured(SpansConfig)
    apply_overrides(cfg, split_overrides(args))
    check_complete(cfg)
    result = analyze_spans(cfg.checkpoint, cfg.output, cfg.data)
    for layer, (mean, top) in enumerate(zip(result["layer_mean"], result["layer_max"])):
        print(f"layer {layer}: mean span {mean:.1f}, max {top:.1f}, window {result['windows'][layer]}")
    summary = {k: result[k] for k in ("checkpoint", "step", "kind", "mean_span", "max_span_learned", "png", "json")}
    print(json.dumps(summary))
    return 0
