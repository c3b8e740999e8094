"""The model contract: the base class every registered model derives from (the registry refuses others).

A model is an nn.Module built by `build(cfg, task)` whose `forward(**batch["net_input"], target=...)` returns
`(output, aux)`: the output (logits, or hidden states when the model scores them itself, see `output_nll`)
and a dict of named auxiliary terms (mean losses; the config's `aux_weights` schedules weigh them).

Every command builds a model with `from_config(cfg, task)`: `build`, then the product-key memories that
`cfg.memory` places in its layers (toolkit.modules.memory_placement), whose reads the base class counts for
`metrics()`. Everything else the trainer, the criterions, the tasks and the evaluations may ask of a model is
a hook below, with a default that does nothing. A model overrides the ones it needs; callers call them plainly.
The base class adds no parameters and no buffers, so checkpoints are those of the model's own modules.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Tuple

from torch import Tensor, nn

from toolkit.modules.memory_placement import UsageMonitor, memory_parameter_count, place_memories


class ToolkitModel(nn.Module):
    """Base of every registered model: the optional hooks, each a no-op by default."""

    scores_own_output: ClassVar[bool] = False
    """True when `forward`'s output is not logits (adaptive softmax: hidden states) and `output_nll` scores
    it; callers then use output_nll instead of a cross-entropy over the output."""

    carries_stream_cache: ClassVar[bool] = False
    """True for a model that reads a corpus as contiguous streams and carries its cache across blocks:
    `forward(tokens, cache)` returns (output, aux, new_cache), `init_cache(batch)` makes an empty cache, and
    `stream_state`/`load_stream_state` move the training cache in and out of checkpoints (task.mode=stream,
    task.eval_protocol=stream need one)."""

    _memory_usage: Optional[UsageMonitor] = None  # set by from_config when the model holds memories

    @classmethod
    def build(cls, cfg: Any, task: Any) -> "ToolkitModel":
        """The model of config `cfg` for `task` (vocabulary sizes, special symbols)."""
        raise NotImplementedError(f"{cls.__name__} must define build(cfg, task)")

    @classmethod
    def from_config(cls, cfg: Any, task: Any) -> "ToolkitModel":
        """`build(cfg, task)`, then the product-key memories of `cfg.memory` in its layers (a model config with
        that field: MemoryConfigMixin), watched for `metrics()`. Every command builds its model here."""
        model = cls.build(cfg, task)
        if place_memories(model, getattr(cfg, "memory", None)):  # a model config without the field: none
            model._memory_usage = UsageMonitor(model)
        return model

    # ---- auxiliary terms (the criterion weighs them; the trainer freezes the heads of switched-off ones) ----
    def aux_term_names(self) -> List[str]:
        """Every auxiliary term `forward` can return. A model that lists any accepts `active_aux` (the set
        of terms with a non-zero weight now) in forward and may skip computing the others."""
        return []

    def aux_term_parameters(self, name: str) -> List[nn.Parameter]:
        """Parameters that only auxiliary term `name` uses: the trainer stops training them (requires_grad
        False) while the term's weight is 0, so data parallelism never waits for their gradients."""
        return []

    # ---- output -----------------------------------------------------------------------------------
    def output_nll(self, output: Tensor, target: Tensor) -> Tensor:
        """Per-token NLL (float32, shape of target; padding counts 0) of `forward`'s output: only for a model
        with `scores_own_output` (the others return logits, which callers score with cross-entropy)."""
        raise NotImplementedError(f"{type(self).__name__} returns logits: score them with cross-entropy")

    def shared_output_weight(self) -> Optional[Tensor]:
        """The output layer's weight when the model applies it functionally (an embedding table reused
        through F.linear) rather than through an nn.Linear; FLOP counting adds it. None: no such weight."""
        return None

    # ---- training ---------------------------------------------------------------------------------
    def after_update(self) -> None:
        """Called by the trainer after every optimizer step (e.g. to clamp learned spans into range)."""

    def metrics(self) -> Dict[str, float]:
        """Model-specific numbers for the training log (e.g. learned spans, gate entropies). The base class
        reports `memory_metrics()`: a model that overrides this returns its own numbers and `super().metrics()`."""
        return self.memory_metrics()

    def memory_metrics(self) -> Dict[str, float]:
        """Per product-key memory, the share of its slots read and the KL from uniform of their weights over
        every read since the last call (`pkm/NAME_usage`, `pkm/NAME_kl_uniform`); {} without memories."""
        return self._memory_usage.report() if self._memory_usage is not None else {}

    @contextmanager
    def uncounted(self) -> Iterator[None]:
        """Forwards inside do not count towards the memory usage `metrics()` reports (e.g. the trainer's second
        look at a batch before a checkpoint, which a resumed run would not repeat)."""
        if self._memory_usage is None:
            yield
            return
        with self._memory_usage.paused():
            yield

    def memory_parameter_count(self) -> int:
        """Parameters of the product-key memories (dry runs report them beside the total)."""
        return memory_parameter_count(self)

    def parameter_breakdown(self) -> Dict[str, int]:
        """Named parameter sub-totals that dry runs report beside the total."""
        return {}

    def compiled_methods(self) -> Tuple[str, ...]:
        """Methods besides `forward` that torch.compile also wraps (e.g. incremental `decode`)."""
        return ()

    # ---- the training streams' cache (carries_stream_cache models) ---------------------------------------
    def stream_state(self) -> Optional[List[Tensor]]:
        """The carried training cache (CPU copies), or None (no cache, or none yet)."""
        return None

    def load_stream_state(self, state: Optional[List[Tensor]]) -> None:
        """Restore a cache from `stream_state`; a model that carries none has nothing to restore."""
