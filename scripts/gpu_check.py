"""GPU readiness check: one run that measures what a GPU machine must show, written to one JSON file.

    python scripts/gpu_check.py --device cuda --out gpu_check.json     # the real check (scripts/gpu_check.sh)
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/x.json  # the same code paths, tiny, in seconds

Checks (each records its numbers or its error; one failing check does not stop the others):
- env: torch, device name, dense bf16 peak (toolkit/train/flops.py), whether bf16 is supported;
- train_steps: bf16 and fp16 (with loss scaling) training steps of base_wmt14 (transformer-base) and
  t12_text8 at their preset batch sizes (3584 target tokens; 16 x 512 characters): tokens/s, model TFLOP/s,
  MFU, peak memory, final loss;
- sdpa_backend: which scaled-dot-product-attention kernel the models' attention actually ran (flash,
  efficient, cudnn, math), read from the profiler, for encoder self-attention with padding, causal decoder
  self-attention and the causal LM;
- mae7_vs_base: bf16 step time of mae7_wmt14 against base_wmt14 on the same batch;
- adaptive_span: streamed bf16 steps of the 12-layer text8 model (16 streams x 512) with adaptive spans
  (S=8192; spans at their initial value and set to S/4) against a fixed window of 512, cache carried;
- pkm: a product-key memory layer with 512^2 slots (paper defaults) forward/backward on 16 x 512 tokens;
- fp16_overflow_skip: 2 fp16 steps with the trainer's loss scaler, the first made to overflow (huge initial
  scale): it must be skipped (weights unchanged, scale halved) and the second applied;
- beam_search: transformer-base, beam 4, sentences/s (random weights: every hypothesis runs to max length,
  the worst case);
- train_large_batch: bf16 steps of base_wmt14 and mae7_wmt14 at 8 x 3584 target tokens and t12_text8 at 64 x 512
  characters (what one GPU carries), eager and compiled (inductor; the first step's compile time apart).
The JSON is rewritten after every check, so a run stopped by its time limit keeps what it measured.
Timings use warm-up steps and CUDA synchronisation; all models have random weights and random tokens.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from toolkit.aux_layer_weights import build_aux_weights  # noqa: E402
from toolkit.config.compose import compose_train_config  # noqa: E402
from toolkit.eval.beam_search import GenerationConfig, generate  # noqa: E402
from toolkit.modules.attention.span_attention import current_windows  # noqa: E402
from toolkit.modules.pkm import PKMConfig, ProductKeyMemory  # noqa: E402
from toolkit.registry import CRITERIONS, MODELS  # noqa: E402
from toolkit.train.flops import peak_tflops, train_flops_per_token  # noqa: E402
from toolkit.train.precision import DTYPES, grad_scaler  # noqa: E402

PAD, EOS, BOS = 1, 2, 0
# tiny sizes for --tiny (CPU tests): same code paths, seconds instead of minutes
TINY_MT = [
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "model.d_model=32",
    "model.ffn_dim=64",
    "task.vocab_size=50",
]
TINY_CHAR = [
    "model.n_layers=2",
    "model.d_model=32",
    "model.n_heads=4",
    "model.d_ff=64",
    "task.tokens_per_sample=32",
    "task.batch_size=2",
    "model.max_positions=64",
]
TINY_SPAN = [
    "model.n_layers=1",
    "model.d_model=32",
    "model.n_heads=4",
    "model.d_ff=64",
    "task.tokens_per_sample=32",
    "task.batch_size=2",
    "model.attn_span=1024",
]


class Clock:
    """Seconds per call of a step, after warm-up, with the device synchronised around the timed calls."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def per_step(self, step: Callable[[], Any], warmup: int, steps: int) -> float:
        for _ in range(warmup):
            step()
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        self.sync()
        return (time.perf_counter() - start) / steps


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=DTYPES[precision], enabled=DTYPES[precision] is not None)


def fake_task(cfg: Any) -> SimpleNamespace:
    """What the model and criterion builders read from a task, without any data."""
    vocab = int(cfg.task.vocab_size)
    return SimpleNamespace(
        vocab_size=vocab,
        pad_idx=PAD,
        eos_idx=EOS,
        bos_idx=BOS,
        cfg=SimpleNamespace(tokens_per_sample=int(cfg.task.get("tokens_per_sample", 0) or 0)),
    )


@functools.lru_cache(maxsize=None)
def composed(preset: str, overrides: tuple) -> Any:
    return compose_train_config(preset, list(overrides))


def build(preset: str, overrides: List[str], device: torch.device) -> tuple[Any, nn.Module, Any]:
    cfg = composed(preset, tuple(overrides))
    task = fake_task(cfg)
    model = MODELS.get(cfg.model.name).builder.from_config(cfg.model, task).to(device)
    criterion = CRITERIONS.get(cfg.criterion.name).builder(cfg.criterion, task, build_aux_weights(cfg))
    return cfg, model, criterion


def translation_batch(cfg: Any, device: torch.device, tokens: int, length: int = 28) -> Dict[str, Any]:
    """Random sentence pairs of `length` tokens (eos last), `tokens` target tokens in all."""
    rows, vocab = max(1, tokens // length), int(cfg.task.vocab_size)
    src = torch.randint(3, vocab, (rows, length), device=device)
    tgt = torch.randint(3, vocab, (rows, length), device=device)
    src[:, -1] = tgt[:, -1] = EOS
    src[::2, :3] = PAD  # some left padding: the padded-attention path
    prev = torch.cat([torch.full((rows, 1), EOS, device=device), tgt[:, :-1]], dim=1)
    return {"net_input": {"src_tokens": src, "prev_output_tokens": prev}, "target": tgt, "ntokens": tgt.numel()}


def char_batch(cfg: Any, device: torch.device, stream: bool = False) -> Dict[str, Any]:
    b, t, vocab = int(cfg.task.batch_size), int(cfg.task.tokens_per_sample), int(cfg.task.vocab_size)
    chunk = torch.randint(0, vocab, (b, t + 1), device=device)
    net_input: Dict[str, Any] = {"tokens": chunk[:, :-1]}
    if stream:
        net_input["reset"] = False  # the cache carried from the previous block
    return {"net_input": net_input, "target": chunk[:, 1:], "ntokens": b * t}


def train_step_fn(model: nn.Module, criterion: Any, batch: Dict[str, Any], device: torch.device, precision: str):
    """One training update as the trainer does it: autocast forward, scaled backward, unscale, AdamW step."""
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=device.type == "cuda"
    )
    scaler = grad_scaler(precision, device)
    state = {"loss": math.nan}

    def step() -> None:
        with autocast(device, precision):
            loss, ntokens, _ = criterion(model, batch, 0)
        scaler.scale(loss / ntokens).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state["loss"] = float(loss.detach()) / ntokens

    return step, state


def measure_training(model, criterion, batch, device, precision, clock, warmup, steps, seq_len) -> Dict[str, Any]:
    reset_peak(device)
    step, state = train_step_fn(model, criterion, batch, device, precision)
    seconds = clock.per_step(step, warmup, steps)
    tokens_per_s = batch["ntokens"] / seconds
    flops = train_flops_per_token(model, seq_len)
    result = {
        "precision": precision,
        "tokens_per_step": batch["ntokens"],
        "step_s": seconds,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops,
        "tflops_per_s": flops * tokens_per_s / 1e12,
        "peak_memory_gib": peak_gib(device),
        "loss": state["loss"],
        "loss_finite": math.isfinite(state["loss"]),
    }
    peak = peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    result["mfu"] = result["tflops_per_s"] / peak if peak else None
    return result


# ---- the checks -----------------------------------------------------------------------------------------------
def check_env(args, device, clock) -> Dict[str, Any]:
    info: Dict[str, Any] = {"torch": torch.__version__, "device": str(device), "tiny": args.tiny}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        info.update(
            {
                "name": name,
                "capability": list(torch.cuda.get_device_capability(device)),
                "bf16_supported": torch.cuda.is_bf16_supported(),
                "peak_tflops_bf16": peak_tflops(name),
                "memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30,
            }
        )
    return info


def check_train_steps(args, device, clock) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for preset, tiny in (("base_wmt14", TINY_MT), ("t12_text8", TINY_CHAR)):
        torch.manual_seed(0)
        cfg, model, criterion = build(preset, tiny if args.tiny else [], device)
        if preset == "base_wmt14":
            batch = translation_batch(cfg, device, 256 if args.tiny else int(cfg.task.max_tokens))
        else:
            batch = char_batch(cfg, device)
        for precision in ("bf16", "fp16"):  # the same model continues training in the other precision
            out[f"{preset}/{precision}"] = measure_training(
                model, criterion, batch, device, precision, clock, args.warmup, args.steps, batch["target"].size(1)
            )
        del model
    return out


def check_train_large_batch(args, device, clock) -> Dict[str, Any]:
    """bf16 steps at the batch a single GPU would carry (the preset's 8-GPU global batch for base_wmt14, 4x the
    streams for t12_text8; mae7_wmt14 beside base_wmt14), eager and with `compile=true` (inductor): where MFU is
    meant to be read."""
    out: Dict[str, Any] = {}
    for preset, tiny in (("base_wmt14", TINY_MT), ("mae7_wmt14", TINY_MT), ("t12_text8", TINY_CHAR)):
        for compiled in (False, True):
            name = f"{preset}/bf16/{'compiled' if compiled else 'eager'}"
            try:
                out[name] = large_batch_step(args, device, clock, preset, tiny, compiled)
            except Exception as error:  # one failing variant keeps the others' numbers
                out[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-1500:]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return out


def large_batch_step(args, device, clock, preset: str, tiny: List[str], compiled: bool) -> Dict[str, Any]:
    """One preset's bf16 training steps at the large batch, eager or compiled."""
    from toolkit.train.compile import compile_model

    torch.manual_seed(0)
    extra = ["task.batch_size=64"] if preset == "t12_text8" and not args.tiny else []
    cfg, model, criterion = build(preset, (tiny if args.tiny else []) + extra, device)
    if preset == "t12_text8":
        batch = char_batch(cfg, device)
    else:
        batch = translation_batch(cfg, device, 256 if args.tiny else 8 * int(cfg.task.max_tokens))
    compile_s = None
    if compiled:
        compile_model(model, "eager" if args.tiny else "inductor")  # tiny: dynamo only, seconds
        began = time.perf_counter()
        step, _ = train_step_fn(model, criterion, batch, device, "bf16")
        step()  # the first step compiles: its time is reported apart from the steady-state steps
        clock.sync()
        compile_s = time.perf_counter() - began
    result = measure_training(
        model, criterion, batch, device, "bf16", clock, args.warmup, args.steps, batch["target"].size(1)
    )
    if compiled:
        result["first_step_with_compile_s"] = compile_s
    return result


def sdpa_ops(run: Callable[[], Any]) -> Dict[str, int]:
    """aten scaled-dot-product-attention ops (by kernel family) that `run` called, with counts."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    families = {"flash": "flash", "efficient": "efficient", "cudnn": "cudnn", "math": "math"}
    found: Dict[str, int] = {}
    for event in prof.key_averages():
        if event.key.startswith("aten::_scaled_dot_product"):
            family = next((f for key, f in families.items() if key in event.key), event.key)
            found[f"{family} ({event.key})"] = event.count
    return found


def check_sdpa_backend(args, device, clock) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    precision = "bf16"
    _, mt, _ = build("base_wmt14", TINY_MT if args.tiny else [], device)
    cfg, lm, _ = build("t12_text8", TINY_CHAR if args.tiny else [], device)
    mt.eval(), lm.eval()
    batch = translation_batch(
        SimpleNamespace(task=SimpleNamespace(vocab_size=mt.encoder_embed.num_embeddings)),
        device,
        256 if args.tiny else 3584,
    )
    src, prev = batch["net_input"]["src_tokens"], batch["net_input"]["prev_output_tokens"]
    tokens = char_batch(cfg, device)["net_input"]["tokens"]
    with torch.no_grad(), autocast(device, precision):
        enc = mt.encode(src)
        out["encoder_self_attention_padded"] = sdpa_ops(lambda: mt.encode(src))
        out["decoder_causal_and_cross_attention"] = sdpa_ops(lambda: mt.decode(prev, enc))
        out["char_lm_causal"] = sdpa_ops(lambda: lm(tokens))
    return out


def check_mae7_vs_base(args, device, clock) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    batch = None
    for preset in ("base_wmt14", "mae7_wmt14"):
        torch.manual_seed(0)
        cfg, model, criterion = build(preset, TINY_MT if args.tiny else [], device)
        batch = batch or translation_batch(cfg, device, 256 if args.tiny else int(cfg.task.max_tokens))
        out[preset] = measure_training(
            model, criterion, batch, device, "bf16", clock, args.warmup, args.steps, batch["target"].size(1)
        )
        del model
    out["mae7_over_base_step_time"] = out["mae7_wmt14"]["step_s"] / out["base_wmt14"]["step_s"]
    return out


def check_adaptive_span(args, device, clock) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    variants = {
        "adaptive_S8192_initial_spans": ([], None),
        "adaptive_S8192_spans_S/4": ([], 0.25),
        "fixed_512": (["model.adaptive_span=false", "model.attn_span=512"], None),
    }
    for name, (extra, span) in variants.items():
        torch.manual_seed(0)
        # 16 streams (the preset's 64 are for 8 GPUs' worth of memory at wide spans): the per-token costs compare
        cfg, model, criterion = build(
            "adaptive_span_text8", (TINY_SPAN if args.tiny else ["task.batch_size=16"]) + extra, device
        )
        if span is not None:
            with torch.no_grad():
                for layer in model.layers:
                    layer.self_attn.span.span_param.fill_(span)
        batch = char_batch(cfg, device, stream=True)
        with torch.no_grad():  # fill the carried cache first: the steps then see a full window
            model(**{**batch["net_input"], "reset": True}, target=batch["target"])
            model(**batch["net_input"], target=batch["target"])
        result = measure_training(
            model, criterion, batch, device, "bf16", clock, args.warmup, args.steps, batch["target"].size(1)
        )
        result["windows"] = current_windows(model)
        out[name] = result
        del model
    return out


def check_pkm(args, device, clock) -> Dict[str, Any]:
    torch.manual_seed(0)
    cfg = PKMConfig(mem_size=64**2, key_dim=32, heads=4, knn=8) if args.tiny else PKMConfig()
    d = 32 if args.tiny else 512
    memory = ProductKeyMemory(d, d, cfg).to(device).train()
    x = torch.randn(2 if args.tiny else 16, 32 if args.tiny else 512, d, device=device, requires_grad=True)
    reset_peak(device)

    def step() -> None:
        with autocast(device, "bf16"):
            out = memory(x)
        out.float().pow(2).mean().backward()

    seconds = clock.per_step(step, args.warmup, args.steps)
    memory.track_usage = True
    with torch.no_grad(), autocast(device, "bf16"):
        memory(x)
    return {
        "mem_size": cfg.mem_size,
        "key_dim": cfg.key_dim,
        "heads": cfg.heads,
        "knn": cfg.knn,
        "d_model": d,
        "tokens_per_step": x.shape[0] * x.shape[1],
        "step_s": seconds,
        "tokens_per_s": x.shape[0] * x.shape[1] / seconds,
        "peak_memory_gib": peak_gib(device),
        "weights_dtype": str(memory.last_weights.dtype),
        "slots_read_fraction": float(memory.last_indices.unique().numel() / cfg.mem_size),
    }


def check_fp16_overflow_skip(args, device, clock) -> Dict[str, Any]:
    torch.manual_seed(0)
    cfg, model, criterion = build("base_wmt14", TINY_MT, device)
    batch = translation_batch(cfg, device, 256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = grad_scaler("fp16", device)
    if device.type != "cuda":  # the trainer's scaler is off on CPU; exercise the same logic with one that is on
        scaler = torch.amp.GradScaler("cpu")
    # the first scaled backward overflows float16 (max 65504); the back-off then lands on a usable scale
    scaler._init_scale, scaler._backoff_factor = 2.0**40, 2.0**-28
    steps = []
    for _ in range(2):
        before = [p.detach().clone() for p in model.parameters()]
        scale = scaler.get_scale() if scaler.is_enabled() and scaler._scale is not None else scaler._init_scale
        with autocast(device, "fp16"):
            loss, ntokens, _ = criterion(model, batch, 0)
        scaler.scale(loss / ntokens).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        changed = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
        steps.append(
            {
                "scale_before": scale,
                "scale_after": scaler.get_scale(),
                "weights_changed": changed,
                "loss": float(loss.detach()) / ntokens,
            }
        )
    return {
        "steps": steps,
        "first_step_skipped": not steps[0]["weights_changed"],
        "second_step_applied": steps[1]["weights_changed"],
        "scale_reduced": steps[0]["scale_after"] < steps[0]["scale_before"],
    }


def check_beam_search(args, device, clock) -> Dict[str, Any]:
    torch.manual_seed(0)
    cfg, model, _ = build("base_wmt14", TINY_MT if args.tiny else [], device)
    model.eval()
    sentences = 8 if args.tiny else 128
    src = translation_batch(cfg, device, sentences * 24, length=24)["net_input"]["src_tokens"]
    gen = GenerationConfig(beam=4, lenpen=0.6, max_len_a=0.0 if args.tiny else 1.2, max_len_b=10)
    out: Dict[str, Any] = {"sentences": sentences, "source_length": src.size(1), "beam": gen.beam}
    for precision in ("fp32",) if args.tiny else ("fp32", "bf16"):
        hyps: List[Any] = []

        def search() -> None:
            with autocast(device, precision):
                hyps[:] = generate(model, src, gen)

        seconds = clock.per_step(search, args.warmup, 1 if args.tiny else 3)
        out[precision] = {
            "seconds": seconds,
            "sentences_per_s": sentences / seconds,
            "mean_output_length": sum(len(h[0].tokens) for h in hyps) / len(hyps),
        }
    return out


def write_json(out: Path, results: Dict[str, Any]) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out)


CHECKS = {  # in running order: the slowest (compilation) last, so a time limit costs the fewest results
    "env": check_env,
    "train_steps": check_train_steps,
    "sdpa_backend": check_sdpa_backend,
    "fp16_overflow_skip": check_fp16_overflow_skip,
    "mae7_vs_base": check_mae7_vs_base,
    "adaptive_span": check_adaptive_span,
    "pkm": check_pkm,
    "beam_search": check_beam_search,
    "train_large_batch": check_train_large_batch,
}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny models and batches (CPU tests of the code paths)")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file written")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per measurement (default 3; 0 tiny)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 10; 1 tiny)")
    parser.add_argument("--checks", nargs="*", default=list(CHECKS), help=f"subset of: {', '.join(CHECKS)}")
    args = parser.parse_args(argv)
    unknown = [c for c in args.checks if c not in CHECKS]
    if unknown:
        print(f"error: unknown check '{unknown[0]}'; valid: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: --device cuda but torch sees no CUDA device (use --device cpu --tiny for a CPU run)",
            file=sys.stderr,
        )
        return 2
    args.warmup = args.warmup if args.warmup is not None else (0 if args.tiny else 3)
    args.steps = args.steps if args.steps is not None else (1 if args.tiny else 10)
    device = torch.device(args.device)
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # tiny ops: one thread is fastest and least disturbed by a busy machine
    clock = Clock(device)
    results: Dict[str, Any] = {}
    start = time.perf_counter()
    for name in args.checks:
        began = time.perf_counter()
        try:
            results[name] = CHECKS[name](args, device, clock)
        except Exception as error:  # one failing check must not lose the others' numbers
            results[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-2000:]}
        results[name]["check_seconds"] = time.perf_counter() - began
        print(
            f"{name}: {'error' if 'error' in results[name] else 'ok'} ({results[name]['check_seconds']:.1f} s)",
            flush=True,
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
        results["total_seconds"] = time.perf_counter() - start
        write_json(Path(args.out), results)  # after every check: a time limit keeps what has been measured
    print(f"wrote {args.out}")
    return 1 if any(isinstance(v, dict) and "error" in v for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
