#!/usr/bin/env python
"""Benchmark: WMT-style binarization throughput (lines/s) and memory, for the wmt14_en_de pipeline.

Real text only: the shipped newstest2013 (plain) and newstest2014 (sgm) en/de lines, repeated to --lines
lines per language. Measured stages, each on the same text:
  clean      normalize + whitespace word counts + the ratio/length rule, pairs written to two files
             (single process, as in the recipe)
  binarize   sentencepiece encoding into an indexed dataset (toolkit.data.spm.Binarizer), for each worker
             count in --workers (1 = in-process, N > 1 = a spawn pool of N processes, bounded read-ahead)
Reported: wall seconds, lines/s, tokens/s, CPU seconds of the main process and its workers (lines per CPU
second does not depend on how busy a shared machine is), and the peak resident set size of the main process and of the
largest child (ru_maxrss; it stays flat as --lines grows because nothing but the per-line sizes is kept).
The sentencepiece model (--vocab-size) is learned on the distinct lines once, untimed.

    python scripts/bench_binarize.py                        # 300k lines per language, workers 1 and 2
    python scripts/bench_binarize.py --lines 1000000 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tarfile
import tempfile
import time
from pathlib import Path

from toolkit.data.indexed_dataset import IndexedDataset, best_dtype
from toolkit.data.parallel_corpus import CleanSettings, WordCounter, clean_stream, iter_pairs, read_segment_pair
from toolkit.data.spm import Binarizer, SpmTrainSettings, train_spm

DATA = Path(__file__).resolve().parents[1] / "data" / "wmt14"


def real_lines(workdir: Path) -> tuple[list[str], list[str]]:
    """newstest2013 + newstest2014 (en, de), 6,003 aligned pairs."""
    with tarfile.open(DATA / "wmt14-newstest2013-de-en-plain.tar.xz") as archive:
        en, de = (
            archive.extractfile(f"newstest2013-plain/newstest2013.{lang}").read().decode().split("\n")[:-1]
            for lang in ("en", "de")
        )
    with tarfile.open(DATA / "wmt14-newstest2014-deen-full-sgm.tar.xz") as archive:
        archive.extractall(workdir, filter="data")
    sgm = workdir / "newstest2014-full-sgm"
    en14, de14 = read_segment_pair(sgm / "newstest2014-deen-src.en.sgm", sgm / "newstest2014-deen-ref.de.sgm")
    return en + en14, de + de14


def repeat_to(lines: list[str], n: int, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(lines[i % len(lines)] + "\n")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (pool workers once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mb() -> tuple[float, float]:
    """(main process, largest finished child) peak RSS in MB."""
    to_mb = 1 / 1024  # Linux reports KiB
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mb,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mb,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=300_000, help="lines per language")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--chunk-lines", type=int, default=10000)
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        en, de = real_lines(work)
        raw = (work / "raw.en", work / "raw.de")
        repeat_to(en, args.lines, raw[0])
        repeat_to(de, args.lines, raw[1])
        (work / "spm.en").write_text("\n".join(en) + "\n", encoding="utf-8")
        (work / "spm.de").write_text("\n".join(de) + "\n", encoding="utf-8")
        settings = SpmTrainSettings(vocab_size=args.vocab_size)
        model = train_spm([work / "spm.en", work / "spm.de"], work / "spm", settings)
        dtype = best_dtype(args.vocab_size)

        clean = (work / "clean.en", work / "clean.de")
        start, cpu = time.perf_counter(), cpu_seconds()
        with WordCounter("whitespace") as counter:
            rule = CleanSettings(1.5, 1, 250)
            stats = clean_stream(iter_pairs(*raw), ("en", "de"), rule, counter, False, True, clean)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        results.append(
            {
                "stage": "clean",
                "workers": 1,
                "lines": 2 * stats.read,
                "seconds": round(seconds, 2),
                "lines_per_s": round(2 * stats.read / seconds),
                "cpu_s": round(cpu, 2),
                "lines_per_cpu_s": round(2 * stats.read / cpu),
            }
        )

        for workers in args.workers:
            start, cpu = time.perf_counter(), cpu_seconds()
            tokens = 0
            with Binarizer(model, dtype, workers, args.chunk_lines) as binarizer:
                for lang, path in zip(("en", "de"), clean):
                    tokens += binarizer.binarize(path, work / f"train.{lang}", stats.kept).tokens
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            lines = 2 * stats.kept
            assert sum(len(IndexedDataset(work / f"train.{lang}")) for lang in ("en", "de")) == lines
            main_mb, child_mb = peak_rss_mb()
            results.append(
                {
                    "stage": "binarize",
                    "workers": workers,
                    "lines": lines,
                    "seconds": round(seconds, 2),
                    "lines_per_s": round(lines / seconds),
                    "tokens_per_s": round(tokens / seconds),
                    "cpu_s": round(cpu, 2),
                    "lines_per_cpu_s": round(lines / cpu),
                    "peak_rss_main_mb": round(main_mb),
                    "peak_rss_child_mb": round(child_mb),
                }
            )
    for row in results:
        print(json.dumps(row))
    best = max(r["lines_per_s"] for r in results if r["stage"] == "binarize")
    clean_rate = results[0]["lines_per_s"]
    total = 2 * 4_500_000
    print(
        f"extrapolated for 4.5M pairs (9M lines): clean {total / clean_rate / 60:.1f} min, "
        f"binarize {total / best / 60:.1f} min at {best:,} lines/s (+ sentencepiece training on the sample)"
    )


if __name__ == "__main__":
    main()
