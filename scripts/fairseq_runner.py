"""Run fairseq's beam search on the toolkit's model, for scripts/bench_generate.py --fairseq-python.

fairseq runs in its own interpreter (scripts/fairseq_beam_search.py; scripts/setup_fairseq_bench.sh builds
one), because fairseq 0.12.2 pins hydra-core 1.0 and omegaconf 2.0. This side exports the model's weights
under fairseq's parameter names with the batches to decode, and reads back fairseq's timing and hypotheses.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from toolkit.errors import UserError
from toolkit.eval.beam_search import GenerationConfig
from toolkit.models.transformer import TransformerModel

FAIRSEQ_SCRIPT = Path(__file__).resolve().parent / "fairseq_beam_search.py"


def check_fairseq_can_hold(model: TransformerModel) -> None:
    """Refuse (UserError) a model that fairseq's `transformer` cannot express."""
    cfg = model.cfg
    positions = getattr(cfg.positions, "value", cfg.positions)  # an enum, or its value in a checkpoint's config
    if cfg.pre_ln or positions != "sinusoidal" or not cfg.share_all_embeddings or cfg.attention != "standard":
        raise UserError("--fairseq-python: only the post-LN, sinusoidal, shared-embedding standard transformer maps")


def fairseq_state_dict(model: TransformerModel) -> Dict[str, Tensor]:
    """The toolkit transformer's weights under fairseq's names: the stacked q/k/v projection split in three,
    `*_norm` as fairseq's `*_layer_norm`, the tied output projection as the shared embedding."""
    check_fairseq_can_hold(model)
    cfg = model.cfg
    src = model.state_dict()
    out = {
        "encoder.embed_tokens.weight": src["encoder_embed.weight"],
        "decoder.embed_tokens.weight": src["decoder_embed.weight"],
        "decoder.output_projection.weight": src["decoder_embed.weight"],
    }
    attention = {
        "self_attn": ("self_attn", "self_attn_layer_norm"),
        "cross_attn": ("encoder_attn", "encoder_attn_layer_norm"),
    }
    for side in ("encoder", "decoder"):
        for i in range(cfg.encoder_layers if side == "encoder" else cfg.decoder_layers):
            ours, theirs = f"{side}_layers.{i}.", f"{side}.layers.{i}."
            for mine, (name, norm) in attention.items():
                if ours + f"{mine}.qkv_proj.weight" not in src:
                    continue  # the encoder has no cross-attention
                for part in ("weight", "bias"):
                    q, k, v = src[ours + f"{mine}.qkv_proj.{part}"].chunk(3)
                    out.update({theirs + f"{name}.{p}_proj.{part}": w for p, w in zip("qkv", (q, k, v))})
                    out[theirs + f"{name}.out_proj.{part}"] = src[ours + f"{mine}.out_proj.{part}"]
                    out[theirs + f"{norm}.{part}"] = src[ours + f"{mine}_norm.{part}"]
            for part in ("weight", "bias"):
                out[theirs + f"fc1.{part}"] = src[ours + f"ffn.fc1.{part}"]
                out[theirs + f"fc2.{part}"] = src[ours + f"ffn.fc2.{part}"]
                out[theirs + f"final_layer_norm.{part}"] = src[ours + f"ffn_norm.{part}"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def check_fairseq_python(python: str) -> None:
    """Refuse (UserError) an interpreter that cannot import fairseq's beam search."""
    probe = "import fairseq, fairseq.sequence_generator; print(fairseq.__version__)"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(
            f"--fairseq-python {python} cannot import fairseq ({last_error_line(done)}); "
            "bash scripts/setup_fairseq_bench.sh"
        )


def last_error_line(done: subprocess.CompletedProcess) -> str:
    """The last line a failed interpreter wrote to stderr (the exception), or its exit code."""
    return (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]


class FairseqBeamSearch:
    """One exported model and batch list; each call runs fairseq once in a fresh interpreter."""

    def __init__(
        self,
        python: str,
        model: TransformerModel,
        batches: List[Tensor],
        probe: Tuple[Tensor, Tensor],
        generation: GenerationConfig,
        threads: int,
    ):
        self.python = python
        self.dir = tempfile.TemporaryDirectory(prefix="fairseq_bench_")
        self.export = Path(self.dir.name) / "export.pt"
        cfg = model.cfg
        torch.save(
            {
                "weights": fairseq_state_dict(model),
                "arch": dict(
                    encoder_layers=cfg.encoder_layers,
                    decoder_layers=cfg.decoder_layers,
                    d_model=cfg.d_model,
                    ffn_dim=cfg.ffn_dim,
                    heads=cfg.n_heads,
                    max_positions=cfg.max_positions,
                ),
                "vocab_size": model.decoder_embed.num_embeddings,
                "positions": model.encoder_positions.table.clone(),
                "batches": [b.cpu() for b in batches],
                "probe": tuple(t.cpu() for t in probe),
                "generation": dict(
                    beam=generation.beam,
                    lenpen=generation.lenpen,
                    max_len_a=generation.max_len_a,
                    max_len_b=generation.max_len_b,
                    min_len=generation.min_len,
                ),
                "threads": threads or torch.get_num_threads(),
            },
            self.export,
        )

    def __call__(self, wall: bool = False) -> Tuple[List[Tensor], float]:
        """fairseq's best hypotheses (without eos) and the seconds of its timed pass (CPU time; wall-clock time
        with `wall`); keeps their scores and the probe logits."""
        result = Path(self.dir.name) / "result.pt"
        done = subprocess.run(
            [self.python, str(FAIRSEQ_SCRIPT), str(self.export), str(result)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise UserError(f"--fairseq-python {self.python} failed: {last_error_line(done)}")
        out = torch.load(result, weights_only=True)
        self.probe_logits, self.scores = out["probe_logits"], out["scores"]
        seconds = out["wall_seconds" if wall else "seconds"]
        return [h[:-1] for h in out["hypotheses"]], seconds  # without eos, as the toolkit side
