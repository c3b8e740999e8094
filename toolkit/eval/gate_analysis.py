"""`tk-analyze gates`: the mean MAE gate weight of every attention module (layer) and expert over a subset.

Writes OUTPUT/gates.png (a layers x experts heatmap) and OUTPUT/gates.json (the numbers), both at once (atomic
folder). The checkpoint's sentences of the subset are read in order (the first `max_sentences` of them) and
run teacher-forced; a sequence-level gate (encoder self-attention) counts once per sentence, a per-position
gate (decoder self- and encoder-decoder attention) once per real target position. For a language model
(decoder LM with model.attention=mae) the "sentences" are the subset's consecutive windows of
task.tokens_per_sample tokens, each run from an empty context, and every position counts.

  tk-analyze gates checkpoint=PATH [subset=valid] [output=DIR] [max_sentences=N] [batch_size=64] [data=DIR]
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import MISSING, OmegaConf
from torch import Tensor

from toolkit.config.choices import Device
from toolkit.config.cli_overrides import apply_overrides, check_complete, split_overrides
from toolkit.errors import ConfigError
from toolkit.eval.analysis_output import write_analysis


@dataclass
class GatesConfig:
    """Arguments of `tk-analyze gates`."""

    checkpoint: str = MISSING  # a tk-train checkpoint of a model with MAE attention (model.attention=mae): an
    #                            encoder-decoder or a decoder LM
    subset: str = "valid"  # split of the checkpoint's dataset to run
    output: Optional[str] = None  # folder for gates.png and gates.json (default: <checkpoint name>_gates/ beside it)
    max_sentences: Optional[int] = None  # only the first N sentences (LMs: windows) of the subset (None: all)
    batch_size: int = 64  # sentences per forward pass (the numbers do not depend on it)
    data: Optional[str] = None  # dataset folder (default: the checkpoint's)
    device: Device = Device.cpu  # cpu, cuda or auto


def load_run(checkpoint: str, data: Optional[str], device: str) -> tuple[Any, Any, Optional[int]]:
    """(task, model in eval mode on `device`, step) of a tk-train checkpoint of a model with MAE attention."""
    from toolkit.models.transformer import TransformerModel
    from toolkit.models.transformer_lm import TransformerLM
    from toolkit.train.trained_run import load_trained_run

    run = load_trained_run(checkpoint, data=data, device=device)
    if not isinstance(run.model, (TransformerModel, TransformerLM)) or not run.model.mae_modules():
        raise ConfigError(
            f"{checkpoint}: model '{run.checkpoint.config.model.name}' has no MAE attention (needs model.attention=mae)"
        )
    return run.task, run.model, run.checkpoint.step


@torch.no_grad()
def mean_gates(task: Any, model: Any, subset: str, max_sentences: Optional[int], batch_size: int) -> Dict[str, Any]:
    """Sum of gate rows and row counts per MAE module over the subset -> mean gate (modules x experts)."""
    modules = model.mae_modules()
    if any(m.mae_gate is None for m in modules.values()):
        raise ConfigError("mae.uniform=true: UNI-MAE has no gate to analyse")
    device = next(model.parameters()).device
    splits = getattr(task, "splits", None)  # a language-modeling task's token streams
    n, batches = (sentence_batches if splits is None else window_batches)(task, subset, max_sentences, batch_size)
    sums = {name: torch.zeros(m.n_experts, dtype=torch.float64) for name, m in modules.items()}
    counts = dict.fromkeys(modules, 0)
    for net_input, padding in batches:
        net_input = {k: v.to(device) for k, v in net_input.items()}
        model(**net_input)
        target_padding = padding(model, net_input)
        for name, module in modules.items():
            g = module.last_gate.double()
            if g.dim() == 2:  # one gate per sequence
                rows = g
            else:  # one per position: the real ones
                rows = g.reshape(-1, g.size(-1)) if target_padding is None else g[~target_padding]
            sums[name] += rows.sum(0).cpu()
            counts[name] += rows.size(0)
    names = list(modules)
    mean = torch.stack([sums[k] / max(counts[k], 1) for k in names])
    entropy = -(mean * mean.clamp(min=1e-30).log()).sum(-1)
    membership = next(iter(modules.values())).membership
    return {
        "layers": names,
        "experts": [torch.nonzero(row).flatten().tolist() for row in membership],  # heads of each expert
        "mean_gate": mean.tolist(),
        "usage_entropy": entropy.tolist(),  # entropy of each module's mean gate; log(E) = balanced
        "rows": [counts[k] for k in names],
        "sentences": n,
    }


PaddingOf = Callable[[Any, Dict[str, Tensor]], Optional[Tensor]]  # (model, net input) -> (B, T) padding or None
Batches = Iterator[Tuple[Dict[str, Tensor], PaddingOf]]


def sentence_batches(task: Any, subset: str, max_sentences: Optional[int], batch_size: int) -> Tuple[int, Batches]:
    """A translation subset's first sentences in batches: (count, net inputs with their target padding)."""
    task.check_subset(subset, task.datasets)
    n = len(task.datasets[subset][0])
    n = min(n, max_sentences) if max_sentences is not None else n

    def target_padding(model: Any, net_input: Dict[str, Tensor]) -> Tensor:
        return net_input["prev_output_tokens"].eq(model.pad_idx)

    batches = (
        task._collate(subset, np.arange(s, min(s + batch_size, n)))["net_input"] for s in range(0, n, batch_size)
    )
    return n, ((net_input, target_padding) for net_input in batches)


def window_batches(task: Any, subset: str, max_windows: Optional[int], batch_size: int) -> Tuple[int, Batches]:
    """A language-modeling subset cut into consecutive windows of task.tokens_per_sample tokens (the whole subset
    when it is shorter), the first `max_windows` of them in batches: (count, net inputs without padding)."""
    task.check_subset(subset, task.splits)
    tokens = torch.from_numpy(np.asarray(task.splits[subset], dtype=np.int64))
    width = min(int(task.cfg.tokens_per_sample), tokens.numel())
    windows = tokens[: tokens.numel() // width * width].view(-1, width)
    windows = windows[:max_windows] if max_windows is not None else windows
    return len(windows), (({"tokens": w}, lambda model, net_input: None) for w in windows.split(batch_size))


def render_png(report: Dict[str, Any]) -> bytes:
    """Heatmap of the mean gate weight, modules (rows) x experts (columns), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = np.asarray(report["mean_gate"], dtype=float)
    n_layers, n_experts = mean.shape
    fig, ax = plt.subplots(figsize=(3 + 0.45 * n_experts, 1.5 + 0.35 * n_layers))
    image = ax.imshow(mean, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(float(mean.max()), 1e-9))
    ax.set_xticks(range(n_experts))
    ax.set_xlabel("expert")
    ax.set_yticks(range(n_layers), report["layers"])
    if mean.size <= 400:
        for (layer, expert), w in np.ndenumerate(mean):
            color = "white" if w < mean.max() / 2 else "black"
            ax.text(expert, layer, f"{w:.2f}", ha="center", va="center", fontsize=6, color=color)
    fig.colorbar(image, ax=ax, label="mean gate weight")
    step = f", step {report['step']}" if report.get("step") is not None else ""
    title = f"{Path(report['checkpoint']).name}{step}: {report['subset']} ({report['sentences']} sentences)"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def analyze_gates(
    checkpoint: str, subset: str = "valid", output_dir: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Write gates.png and gates.json for a checkpoint; returns the report plus the paths written.
    `overrides`: other GatesConfig fields (max_sentences, batch_size, data, device)."""
    cfg = OmegaConf.structured(GatesConfig(checkpoint=checkpoint, subset=subset, output=output_dir))
    apply_overrides(cfg, [(k, str(v)) for k, v in (overrides or {}).items() if v is not None])
    task, model, step = load_run(cfg.checkpoint, cfg.data, cfg.device)
    report = {"checkpoint": cfg.checkpoint, "step": step, "subset": cfg.subset}
    report.update(mean_gates(task, model, cfg.subset, cfg.max_sentences, cfg.batch_size))
    png = render_png(report)
    return write_analysis(checkpoint, cfg.output, "gates", report, png)


def run(args: List[str]) -> int:
    """`tk-analyze gates checkpoint=PATH ...`; last stdout line: a JSON summary."""
    cfg = OmegaConf.structured(GatesConfig)
    apply_overrides(cfg, split_overrides(args))
    check_complete(cfg)
    extra = {k: cfg[k] for k in ("max_sentences", "batch_size", "data", "device")}
    result = analyze_gates(cfg.checkpoint, cfg.subset, cfg.output, extra)
    for name, row, h in zip(result["layers"], result["mean_gate"], result["usage_entropy"]):
        print(f"{name}: top expert {int(np.argmax(row))} ({max(row):.3f}), usage entropy {h:.3f}")
    print(json.dumps({k: result[k] for k in ("checkpoint", "step", "subset", "sentences", "png", "json")}))
    return 0
