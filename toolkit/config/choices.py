"""Fixed sets of values of the top-level training settings, as Enums.

OmegaConf rejects any other value when the config is composed, naming the key and the valid values. Members
are `StrEnum`s whose name is their value, so code compares them with plain strings (`cfg.device == "cpu"`),
YAML and JSON write them as those strings, and a config read back from a checkpoint (plain strings) behaves
the same.
"""

from __future__ import annotations

from enum import StrEnum


class Device(StrEnum):
    """Where training runs: cuda when available (auto), or as named."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(StrEnum):
    """Autocast dtype on CUDA (fp32 on CPU)."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Progress(StrEnum):
    """A progress bar on a terminal (auto), always (bar), or plain log lines."""

    auto = "auto"
    bar = "bar"
    plain = "plain"


class Backend(StrEnum):
    """torch.distributed backend: nccl on CUDA, gloo on CPU (auto), or as named."""

    auto = "auto"
    nccl = "nccl"
    gloo = "gloo"


class PhaseUnit(StrEnum):
    """What the lengths of block-coordinate-descent phases count."""

    update = "update"
    epoch = "epoch"


class PhaseBudget(StrEnum):
    """What max_update counts when phases are set: every update, or only those that train group main."""

    updates = "updates"
    main_updates = "main_updates"


class CompileBackend(StrEnum):
    """torch.compile backend: generated kernels (inductor), or tracing only (aot_eager, eager)."""

    inductor = "inductor"
    aot_eager = "aot_eager"
    eager = "eager"


class Subset(StrEnum):
    """The splits every task's dataset holds."""

    train = "train"
    valid = "valid"
    test = "test"


def values(choices: type[StrEnum]) -> str:
    """'a, b, c': the valid values, for messages."""
    return ", ".join(member.value for member in choices)
