"""tk-translate checkpoint=PATH [input=FILE] [output=FILE] [task.generation.beam=5 ...]

Translates raw text with a translation checkpoint: from stdin line by line (interactive: each line is
answered as soon as it is read), or from a file in batches. Text is normalized like the training data
(lowercased when the dataset was) and encoded with the dataset's sentencepiece model. Input must be UTF-8
(a line that is not stops with one line naming it); an output file is written whole once every line is
translated, so a failed run leaves none.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence

import torch
from omegaconf import MISSING, OmegaConf

from toolkit.cli.common import run_cli
from toolkit.config.choices import Device
from toolkit.config.cli_overrides import apply_overrides, check_complete, split_overrides
from toolkit.config.ranges import bounded, check_ranges
from toolkit.errors import DataError


@dataclass
class TranslateConfig:
    checkpoint: str = MISSING  # a translation checkpoint written by tk-train
    input: str = "-"  # a text file, or '-' for stdin (interactive, one line at a time)
    output: str = "-"  # where translations go ('-' = stdout)
    batch_size: int = bounded(64, ge=1)  # sentences per batch when translating a file
    data: Optional[str] = None  # dataset folder with spm.model (default: the checkpoint's)
    device: Device = Device.auto  # cpu, cuda or auto (cuda when available)


def _decoded(lines: Iterable[bytes], name: str) -> Iterator[str]:
    """Each line as text; a line that is not UTF-8 is a DataError naming the input and the line."""
    for number, raw in enumerate(lines, 1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise DataError(
                f"{name} line {number} is not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})"
            ) from None


def _batches(lines: Iterable[str], size: int) -> Iterator[List[str]]:
    batch: List[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _read_input(path: str) -> List[str]:
    """All lines of an input file, checked to be UTF-8 before any model is loaded."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"input={path}: cannot read ({error.strerror})") from None
    return list(_decoded(data.splitlines(keepends=True), f"input={path}"))


def _body(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    from toolkit.cli.outputs import check_output_file
    from toolkit.data.atomic import atomic_write_bytes
    from toolkit.eval.beam_search import generate
    from toolkit.train.trained_run import load_trained_run

    pairs = split_overrides(args)
    cfg = OmegaConf.structured(TranslateConfig)
    apply_overrides(cfg, [(k, v) for k, v in pairs if not k.startswith("task.")])
    check_complete(cfg)
    check_ranges(cfg)
    if cfg.input != "-" and not Path(cfg.input).is_file():
        raise DataError(f"input={cfg.input}: no such file")
    if cfg.output != "-":
        check_output_file(cfg.output, "output")
    lines = _read_input(cfg.input) if cfg.input != "-" else None
    run = load_trained_run(
        cfg.checkpoint,
        [(k, v) for k, v in pairs if k.startswith("task.")],
        cfg.data,
        cfg.device,
        task_name="translation",
    )
    model, task, device = run.model, run.task, run.device
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

    # stdin: one line at a time, answered at once; a file: in batches
    source = lines if lines is not None else _decoded(sys.stdin.buffer, "stdin")
    size = 1 if lines is None else cfg.batch_size
    written: List[str] = []  # an output file is written whole at the end: never empty or half-written
    for batch in _batches(source, size):
        for line in translate(batch):
            if cfg.output == "-":
                sys.stdout.write(line + "\n")
            else:
                written.append(line + "\n")
        sys.stdout.flush()
    if cfg.output != "-":
        atomic_write_bytes(cfg.output, "".join(written).encode("utf-8"))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_body, argv)


if __name__ == "__main__":
    sys.exit(main())
