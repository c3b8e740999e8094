"""Generation speed (sentences/s, tokens/s) of beam search for several beam and batch sizes, plus BLEU.

    python scripts/bench_generate.py --data DIR [--checkpoint RUN/checkpoint_best.pt] \
        [--split test] [--beams 1,5] [--batch-sizes 16,64,128] [--limit 400]

    python scripts/bench_generate.py --data DIR --force-len 31 --beams 5 --batch-sizes 128 --limit 500 \
        --threads 1 [--rounds 5] [--shared-source-attention]

With --force-len N every hypothesis has exactly N tokens before eos (eos is masked before N tokens and forced
after them: min_len = max_len = N), the model needs no training (an untrained one is built from the flags unless
--checkpoint is given), and the toolkit's beam search is timed against a plain hand-written batched beam loop
(scripts/plain_beam_search.py: same model, same caches, topk over beam x vocab, index_select reordering) in
alternating rounds. The clock is CPU time (time.process_time; use --threads 1), less sensitive than wall time to
other processes; every figure is printed with the load average beside it, as `uptime` reports it. The script
reports each side's median sentences/s and their ratio, and checks that both returned the same best hypotheses.

With --fairseq-python PY (CPU only), fairseq 0.12.2's SequenceGenerator runs on the same weights, batches and
settings in its own interpreter (scripts/fairseq_runner.py; scripts/setup_fairseq_bench.sh builds PY): a third
timed side with --force-len; otherwise one pass after the toolkit's (wall clock), with fairseq's BLEU, how many
best hypotheses are the same and the largest score difference among those. fairseq bounds every sentence of a
batch by max_len_a x the batch's padded source width + max_len_b, the toolkit each sentence by its own source
length, so hypotheses differ where a sentence reaches its bound unless --max-len-a 0.

DIR is a dataset folder from tk-preprocess (meta.json, spm.model, SPLIT.SRC-TGT.{SRC,TGT}.{bin,idx},
SPLIT.TGT.txt). The model comes from a run checkpoint ("model" state dict, "config" with the model section),
or, without one, is built from --layers/--d-model/... and trained for --train-steps updates on the folder's
train split (label-smoothed cross-entropy, Adam, inverse-sqrt schedule), so that the timing reflects a model
that stops its hypotheses, not a random one that always runs to the maximum length. Not a test: no asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.criterions.label_smoothed_cross_entropy import label_smoothed_nll
from toolkit.data.indexed_dataset import IndexedDataset
from toolkit.data.spm import SpmVocab
from toolkit.data.token_batching import batches_for_epoch, collate
from toolkit.errors import USER_ERROR_EXIT, UserError
from toolkit.eval.beam_search import GenerationConfig, generate
from toolkit.eval.bleu import corpus_bleu
from toolkit.models.transformer import TransformerConfig, TransformerModel
from toolkit.train.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fairseq_runner import FairseqBeamSearch, check_fairseq_can_hold, check_fairseq_python  # noqa: E402  (sibling script modules)
from plain_beam_search import plain_beam_search  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset folder from tk-preprocess")
    p.add_argument("--checkpoint", help="run checkpoint; without it a model is trained for --train-steps")
    p.add_argument("--split", default="test")
    p.add_argument("--beams", default="1,5")
    p.add_argument("--batch-sizes", default="16,64,128", help="sentences per generation batch")
    p.add_argument("--limit", type=int, default=0, help="first N sentences of the split only (0 = all)")
    p.add_argument("--lenpen", type=float, default=1.0)
    p.add_argument("--max-len-a", type=float, default=1.2)
    p.add_argument("--max-len-b", type=int, default=10)
    p.add_argument("--protocol", default="sacrebleu", help="BLEU protocol (toolkit/eval/bleu.py)")
    p.add_argument("--layers", type=int, default=2, help="encoder and decoder layers (no checkpoint)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--ffn-dim", type=int, default=1024)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="training updates without a checkpoint (default 300; 0 with --force-len)",
    )
    p.add_argument(
        "--force-len",
        type=int,
        default=0,
        help="force every output to N tokens and time the toolkit against a plain beam loop",
    )
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per setting (--force-len)")
    p.add_argument(
        "--shared-source-attention",
        action="store_true",
        help="the toolkit's beams of a sentence attend to one copy of its source (generation option)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the untrained model's weights")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens per training batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument(
        "--fairseq-python",
        help="also run fairseq 0.12.2's beam search on the same model and batches, with this Python "
        "(scripts/setup_fairseq_bench.sh builds one; CPU only)",
    )
    return p.parse_args()


def load_model(args: argparse.Namespace, task: SimpleNamespace, data: Path, src: str, tgt: str) -> TransformerModel:
    if args.checkpoint:
        state = load_checkpoint(args.checkpoint)  # the safe loader: a checkpoint cannot run code
        fields = {f for f in TransformerConfig.__dataclass_fields__}
        cfg = TransformerConfig(**{k: v for k, v in state["config"]["model"].items() if k in fields})
        model = TransformerModel.build(cfg, task)
        model.load_state_dict(state["model"])
        return model.to(args.device).eval()
    cfg = TransformerConfig(
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        d_model=args.d_model,
        ffn_dim=args.ffn_dim,
        n_heads=args.heads,
        dropout=0.1,
    )
    torch.manual_seed(args.seed)
    model = TransformerModel.build(cfg, task).to(args.device)
    if args.train_steps:
        quick_train(model, args, task, data, src, tgt)
    model.eval()
    return model


def quick_train(model: TransformerModel, args: argparse.Namespace, task, data: Path, src: str, tgt: str) -> None:
    src_ds = IndexedDataset(data / f"train.{src}-{tgt}.{src}")
    tgt_ds = IndexedDataset(data / f"train.{src}-{tgt}.{tgt}")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / args.warmup, (args.warmup / (s + 1)) ** 0.5))
    model.train()
    step, epoch, start = 0, 1, time.perf_counter()
    while step < args.train_steps:
        for idx in batches_for_epoch(
            src_ds.sizes,
            tgt_ds.sizes,
            args.max_tokens,
            seed=1,
            epoch=epoch,
            max_source_positions=1024,
            max_target_positions=1024,
        ):
            batch = collate(idx, src_ds, tgt_ds, task.pad_idx, task.eos_idx)
            logits, _ = model(batch["src_tokens"].to(args.device), batch["prev_output_tokens"].to(args.device))
            lprobs = F.log_softmax(logits.float(), -1)
            loss, nll = label_smoothed_nll(lprobs, batch["target"].to(args.device), 0.1, task.pad_idx)
            opt.zero_grad()
            (loss / batch["ntokens"]).backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0 or step == args.train_steps:
                print(
                    f"train step {step} epoch {epoch} nll/token {float(nll.detach()) / batch['ntokens']:.3f} "
                    f"({time.perf_counter() - start:.0f}s)",
                    flush=True,
                )
            if step >= args.train_steps:
                break
        epoch += 1
    model.eval()


def main() -> None:
    args = parse_args()
    try:
        run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)


def run(args: argparse.Namespace) -> None:
    if args.force_len < 0 or args.rounds < 1:
        raise UserError("--force-len must be >= 0 and --rounds >= 1")
    if args.fairseq_python:
        if args.device != "cpu":
            raise UserError("--fairseq-python needs --device cpu (fairseq runs on the CPU)")
        if not os.access(args.fairseq_python, os.X_OK):
            raise UserError(f"--fairseq-python {args.fairseq_python}: not an executable file")
        check_fairseq_python(args.fairseq_python)
    if args.train_steps is None:
        args.train_steps = 0 if args.force_len else 300
    data = Path(args.data)
    for name in ("meta.json", "spm.model"):
        if not (data / name).is_file():
            raise UserError(f"--data {data}: no {name} (expected a dataset folder from tk-preprocess)")
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = json.loads((data / "meta.json").read_text())
    src, tgt = meta["src_lang"], meta["tgt_lang"]
    vocab = SpmVocab(data / "spm.model")
    task = SimpleNamespace(vocab_size=len(vocab), pad_idx=vocab.pad, eos_idx=vocab.eos, bos_idx=vocab.bos)
    model = load_model(args, task, data, src, tgt)
    if args.fairseq_python:
        check_fairseq_can_hold(model)  # before any timing
    src_ds = IndexedDataset(data / f"{args.split}.{src}-{tgt}.{src}")
    refs = (data / f"{args.split}.{tgt}.txt").read_text(encoding="utf-8").split("\n")[: len(src_ds)]
    n = min(args.limit or len(src_ds), len(src_ds))
    order = np.argsort(src_ds.sizes[:n], kind="stable")  # length-sorted batches waste little padding
    print(
        f"{n} {args.split} sentences, device {args.device}, threads {torch.get_num_threads()}, "
        f"model {sum(p.numel() for p in model.parameters()):,} parameters"
    )
    if args.force_len:
        compare_with_plain_loop(args, model, task, src_ds, order)
        return
    results = []
    for beam in map(int, args.beams.split(",")):
        cfg = GenerationConfig(
            beam=beam,
            lenpen=args.lenpen,
            max_len_a=args.max_len_a,
            max_len_b=args.max_len_b,
            shared_source_attention=args.shared_source_attention,
        )
        for batch_size in map(int, args.batch_sizes.split(",")):
            hyps: dict[int, list[int]] = {}
            scores: dict[int, float] = {}
            ids, batches = source_batches(order, batch_size, src_ds, task, args.device)
            generate(model, batches[0], cfg)  # warm-up
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            for batch_ids, tokens in zip(ids, batches):
                for j, nbest in zip(batch_ids.tolist(), generate(model, tokens, cfg)):
                    hyps[j], scores[j] = nbest[0].tokens.tolist(), nbest[0].score
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            out_tokens = sum(len(h) for h in hyps.values())
            bleu = corpus_bleu([vocab.decode(hyps[j]) for j in range(n)], refs[:n], args.protocol, tgt)
            row = dict(
                beam=beam,
                batch_size=batch_size,
                sentences=n,
                seconds=round(seconds, 3),
                sentences_per_s=round(n / seconds, 1),
                tokens_per_s=round(out_tokens / seconds, 1),
                bleu=round(bleu.score, 2),
            )
            if args.fairseq_python:
                versus, theirs = fairseq_at_natural_lengths(
                    args, model, task, src_ds, order, batches, cfg, hyps, scores
                )
                row.update(versus)
                fairseq_bleu = corpus_bleu([vocab.decode(theirs[j]) for j in range(n)], refs[:n], args.protocol, tgt)
                row.update(
                    ratio_to_fairseq=round(row["fairseq_seconds"] / seconds, 3),
                    fairseq_bleu=round(fairseq_bleu.score, 2),
                )
            results.append(row)
            print(json.dumps(row), flush=True)
    print(f"BLEU signature: {bleu.signature}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


def load() -> str:
    """The 1/5/15-minute load averages, as `uptime` prints them."""
    return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def forced_config(beam: int, length: int, lenpen: float) -> GenerationConfig:
    """Exactly `length` tokens before eos: eos masked before them (min_len), forced after them (max_len)."""
    return GenerationConfig(beam=beam, lenpen=lenpen, min_len=length, max_len_a=0.0, max_len_b=length)


def source_batches(order, batch_size: int, src_ds: IndexedDataset, task, device: str) -> tuple[list, list]:
    """The sentences `order` in batches of `batch_size`: each batch's sentence indices and its (B, S) sources."""
    ids = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return ids, [collate(b, src_ds, None, task.pad_idx, task.eos_idx)["src_tokens"].to(device) for b in ids]


def probe_batch(order, src_ds: IndexedDataset, task, device: str) -> tuple:
    """A short teacher-forced batch (its sources as targets) whose decoder logits both sides of the fairseq
    comparison compute: equal logits mean the same model."""
    batch = collate(order[:4], src_ds, src_ds, task.pad_idx, task.eos_idx)
    return batch["src_tokens"].to(device), batch["prev_output_tokens"].to(device)


def probe_gap(model: TransformerModel, probe: tuple, fairseq: FairseqBeamSearch, pad: int) -> float:
    """Largest difference of the toolkit's and fairseq's probe logits at real target positions (padded ones
    hold garbage on both sides)."""
    with torch.no_grad():
        ours = model(*probe)[0].float().cpu()
    return float((ours - fairseq.probe_logits)[probe[1].ne(pad).cpu()].abs().max())


def fairseq_at_natural_lengths(
    args, model, task, src_ds, order, batches: list, cfg, hyps: dict, scores: dict
) -> tuple[dict, dict]:
    """fairseq's SequenceGenerator on the batches and settings of the toolkit's timed pass (wall clock): its
    time and how many of its best hypotheses and their scores equal the toolkit's; and those hypotheses (with
    eos), by sentence index."""
    probe = probe_batch(order, src_ds, task, args.device)
    fairseq = FairseqBeamSearch(args.fairseq_python, model, batches, probe, cfg, args.threads)
    theirs, seconds = fairseq(wall=True)
    ids = order.tolist()
    same = [hyps[j][:-1] == h.tolist() for j, h in zip(ids, theirs)]
    gaps = [abs(scores[j] - float(s)) for j, s, equal in zip(ids, fairseq.scores, same) if equal]
    versus = dict(
        fairseq_seconds=round(seconds, 3),
        fairseq_sentences_per_s=round(len(ids) / seconds, 1),
        same_best_hypotheses_as_fairseq=f"{sum(same)}/{len(ids)}",
        score_max_abs_diff_where_same=max(gaps, default=0.0),
        probe_logits_max_abs_diff=probe_gap(model, probe, fairseq, task.pad_idx),
    )
    return versus, {j: h.tolist() + [task.eos_idx] for j, h in zip(ids, theirs)}


def timed(clock, cuda: bool, decode):
    """`decode` (one batch -> best hypotheses) run over a list of batches: (all hypotheses, seconds)."""

    def run(batches: list) -> tuple:
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        hypotheses = [h for b in batches for h in decode(b)]
        if cuda:
            torch.cuda.synchronize()
        return hypotheses, clock() - start

    return run


def compare_with_plain_loop(args, model: TransformerModel, task, src_ds: IndexedDataset, order) -> None:
    """Alternating rounds of the toolkit and the plain loop (and fairseq, with --fairseq-python) on the same
    batches; medians and their ratios."""
    n, cuda = len(order), args.device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time  # CPU time is the load-robust clock on the CPU
    results = []
    probe = probe_batch(order, src_ds, task, args.device)
    for beam in map(int, args.beams.split(",")):
        cfg = forced_config(beam, args.force_len, args.lenpen)
        cfg.shared_source_attention = args.shared_source_attention
        for batch_size in map(int, args.batch_sizes.split(",")):
            _, batches = source_batches(order, batch_size, src_ds, task, args.device)
            runners = {
                "toolkit": timed(clock, cuda, lambda b: [nbest[0].tokens[:-1] for nbest in generate(model, b, cfg)]),
                "plain": timed(
                    clock,
                    cuda,
                    lambda b: [
                        h["tokens"][:-1] for h in plain_beam_search(model, b, beam, args.force_len, args.lenpen)
                    ],
                ),
            }
            for run_one in runners.values():  # warm-up
                run_one(batches[:1])
            if args.fairseq_python:
                fairseq = FairseqBeamSearch(args.fairseq_python, model, batches, probe, cfg, args.threads)
                runners["fairseq"] = lambda _: fairseq()
            rates: dict[str, list[float]] = {name: [] for name in runners}
            outputs: dict[str, list] = {}
            for r in range(args.rounds):
                for name, run_one in runners.items():
                    outputs[name], seconds = run_one(batches)
                    rates[name].append(n / seconds)
                    print(
                        f"beam {beam} batch {batch_size} round {r + 1} {name}: {rates[name][-1]:.1f} "
                        f"sentences/s ({load()})",
                        flush=True,
                    )
            lengths = {len(h) for hyps in outputs.values() for h in hyps}
            same = sum(bool(torch.equal(a, b)) for a, b in zip(outputs["toolkit"], outputs["plain"]))
            toolkit, plain = statistics.median(rates["toolkit"]), statistics.median(rates["plain"])
            versus_fairseq = {}
            if args.fairseq_python:
                theirs = statistics.median(rates["fairseq"])
                same_fs = sum(bool(torch.equal(a, b)) for a, b in zip(outputs["toolkit"], outputs["fairseq"]))
                versus_fairseq = dict(
                    fairseq_sentences_per_s=round(theirs, 1),
                    ratio_to_fairseq=round(toolkit / theirs, 3),
                    same_best_hypotheses_as_fairseq=f"{same_fs}/{n}",
                    probe_logits_max_abs_diff=probe_gap(model, probe, fairseq, task.pad_idx),
                )
            row = dict(
                beam=beam,
                batch_size=batch_size,
                sentences=n,
                force_len=args.force_len,
                clock=clock.__name__,
                toolkit_sentences_per_s=round(toolkit, 1),
                plain_sentences_per_s=round(plain, 1),
                ratio=round(toolkit / plain, 3),
                output_lengths=sorted(lengths),
                same_best_hypotheses=f"{same}/{n}",
                **versus_fairseq,
                load=load(),
            )
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
