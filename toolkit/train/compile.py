"""`compile=true`: torch.compile the model for training and evaluation.

The model is compiled in place (`nn.Module.compile`): its state_dict keys, checkpoints, attribute access and
the trainer's hooks are unchanged, and every `model(...)` call (training steps, validation, streamed
scoring) runs the compiled forward. An encoder-decoder's `decode` (incremental decoding in beam search) is
compiled too. Shapes are left to dynamo's automatic dynamic shapes: the first change of a size (a stream's
cache growing from one block to the next, the decoding step's cache length, a batch of another length)
recompiles once with that dimension marked dynamic, so later steps reuse the graph (tests/unit/test_compile.py
counts the compilations). Data-dependent Python branches (adaptive-span window length, "any padding?")
are graph breaks, not errors.
"""

from __future__ import annotations

from typing import Callable, Union

import torch

from toolkit.config.choices import CompileBackend, values
from toolkit.errors import ConfigError
from toolkit.models.base import ToolkitModel


def compile_model(model: ToolkitModel, backend: Union[str, Callable] = "inductor") -> ToolkitModel:
    """Compile `model`'s forward (and its `compiled_methods`, e.g. `decode`) in place; returns the same object.
    `backend`: a CompileBackend name (the configs' Enum checked it), or a dynamo backend callable (tests count
    compilations with one)."""
    if isinstance(backend, str):  # configs hold a CompileBackend already; a caller's text is checked here
        if backend not in set(CompileBackend):
            raise ConfigError(f"compile_backend: '{backend}' (valid: {values(CompileBackend)})")
        backend = CompileBackend(backend).value  # plain text for dynamo's backend lookup
    model.compile(backend=backend)
    for name in model.compiled_methods():
        setattr(model, name, torch.compile(getattr(model, name), backend=backend))
    return model
