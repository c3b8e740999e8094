"""tk-translate checkpoint=PATH [input=FILE] [output=FILE] [task.generation.beam=5 ...]

Translates raw text with a translation checkpoint: from stdin line by line (interactive: each line is
answered as soon as it is read), or from a file in batches. Text is normalized like the training data
(lowercased when the dataset was) and encoded with the dataset's sentencepiece model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, TextIO

import torch
from omegaconf import MISSING, OmegaConf

from toolkit.cli.common import run_cli
from toolkit.config.cli_overrides import apply_overrides, check_complete, split_overrides
from toolkit.errors import ConfigError


@dataclass
class TranslateConfig:
    checkpoint: str = MISSING  # a translation checkpoint written by tk-train
    input: str = "-"  # a text file, or '-' for stdin (interactive, one line at a time)
    output: str = "-"  # where translations go ('-' = stdout)
    batch_size: int = 64  # sentences per batch when translating a file
    data: Optional[str] = None  # dataset folder with spm.model (default: the checkpoint's)
    device: str = "auto"


def _batches(lines: Iterable[str], size: int) -> Iterator[List[str]]:
    batch: List[str] = []
    for line in lines:
        batch.append(line.rstrip("\n"))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _body(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    from toolkit.config.compose import load_registries
    from toolkit.eval.beam_search import generate
    from toolkit.train import checkpoint as ckpt
    from toolkit.train.setup import build_run, resolve_device

    pairs = split_overrides(args)
    cfg = OmegaConf.structured(TranslateConfig)
    apply_overrides(cfg, [(k, v) for k, v in pairs if not k.startswith("task.")])
    check_complete(cfg)
    load_registries()
    state = ckpt.load_checkpoint(cfg.checkpoint)
    train_cfg = OmegaConf.create(state["config"])
    if train_cfg.task.name != "translation":
        raise ConfigError(f"{cfg.checkpoint} is a {train_cfg.task.name} checkpoint, not a translation one")
    OmegaConf.set_struct(train_cfg, True)
    apply_overrides(train_cfg, [(k, v) for k, v in pairs if k.startswith("task.")])
    if cfg.data is not None:
        train_cfg.data = cfg.data
    run = build_run(train_cfg)
    device = resolve_device(cfg.device)
    model = run.model.to(device).eval()
    model.load_state_dict(state["model"])
    task = run.task
    lowercase = task.meta.get("normalization", {}).get("lowercase", False)

    def translate(batch: List[str]) -> List[str]:
        texts = [line.lower() if lowercase else line for line in batch]
        ids = [task.vocab.encode(text)[: task.cfg.max_source_positions - 1] + [task.eos_idx] for text in texts]
        width = max(len(x) for x in ids)
        src = torch.full((len(ids), width), task.pad_idx, dtype=torch.long)
        for row, seq in enumerate(ids):  # batch assembly, once per sentence (not a model hot path)
            src[row, : len(seq)] = torch.tensor(seq)
        with torch.no_grad():
            results = generate(model, src.to(device), task.cfg.generation)
        return [task.vocab.decode(nbest[0].tokens.tolist()) for nbest in results]

    source: TextIO = sys.stdin if cfg.input == "-" else open(cfg.input, encoding="utf-8")
    sink: TextIO = sys.stdout if cfg.output == "-" else open(cfg.output, "w", encoding="utf-8")
    try:
        size = 1 if cfg.input == "-" else cfg.batch_size
        for batch in _batches(source, size):
            for line in translate(batch):
                sink.write(line + "\n")
            sink.flush()
    finally:
        if source is not sys.stdin:
            source.close()
        if sink is not sys.stdout:
            sink.close()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_body, argv)


if __name__ == "__main__":
    sys.exit(main())
