"""Golden-output cases: tiny models of every registered architecture on fixed weights and fixed inputs.

`scripts/make_golden_outputs.py` builds each case (seeded init, then a seeded perturbation so that gates,
spans and heads are far from their symmetric initial values), runs it and writes the fixture; the test
`tests/unit/test_golden_outputs.py` rebuilds the model from the stored plain config through the same
path the trainer uses (the registered model's `from_config`), loads the stored state_dict and runs it again.

A fixture file holds only tensors and plain containers (loads with `torch.load(weights_only=True)`):
{"format", "case", "model", "config", "task", "memory", "state_dict", "inputs", "outputs"}. "memory" is the
product-key memory placement, a top-level training-config key when the fixtures were written; `build_model`
applies it as the model config's `memory` field, where it is now.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from toolkit.eval.beam_search import GenerationConfig, generate
from toolkit.models import load_all
from toolkit.modules.attention.span_attention import span_stats
from toolkit.modules.pkm import PKMConfig, ProductKeyMemory
from toolkit.registry import MODELS
from toolkit.tasks.stream_lm_data import score_substreams

load_all()  # every model registers itself on import

FORMAT = 1
FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
SUFFIX = ".golden"
PKM_LAYER = "pkm_layer"  # the stand-alone ProductKeyMemory (not a registered model)

# Names a stored config key may have been renamed to since the fixtures were written: {model: {old: new}}
# (new = None: the field was removed and its stored value is dropped). Empty today; add an entry (never edit
# the fixtures) when a config field is renamed or removed.
CONFIG_RENAMES: Dict[str, Dict[str, Optional[str]]] = {}
# Likewise for state_dict keys: (regex, replacement) applied in order to every stored key, and to the parameter
# names that key stored gradients (`expected_outputs`). A change of layout (not just of names) needs the
# toolkit's own checkpoint upgrade, called in `replay`.
STATE_RENAMES: List[Tuple[str, str]] = [
    # char_transformer's heads became one module, `aux_heads` (checkpoints: aux_heads.nest_aux_head_keys)
    (r"^layer_heads\.", "aux_heads.layer_heads."),
    (r"^target_heads\.", "aux_heads.target_heads."),
    # streaming_lm's layers became transformer_lm's TransformerLayers (checkpoints:
    # streaming_lm.name_layer_attention_keys)
    (r"^layers\.(\d+)\.attn\.", r"layers.\1.self_attn."),
    (r"^layers\.(\d+)\.attn_norm\.", r"layers.\1.self_attn_norm."),
]

Outputs = Dict[str, Any]
Runner = Callable[[nn.Module, Dict[str, Any]], Outputs]


@dataclass
class Case:
    """One golden case: how to build the model and what to run on it."""

    name: str
    model: str  # registry name, or PKM_LAYER
    config: Dict[str, Any]  # overrides of the model's config dataclass
    task: Dict[str, Any]  # what the builder reads from the task (vocab_size, pad_idx, ...)
    inputs: Callable[[torch.Generator], Dict[str, Any]]
    run: Runner
    memory: Optional[Dict[str, Any]] = None  # the model config's `memory` (product-key memory placement)
    prepare: Optional[Callable[[nn.Module], None]] = None  # after the perturbation (e.g. span values)


# ---- building -------------------------------------------------------------------------------------------
def plain_config(model: str, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """The full config of `model` as a plain dict: the registered dataclass's defaults plus `overrides`."""
    if model == PKM_LAYER:
        base = OmegaConf.structured(PKMConfig)
    else:
        base = OmegaConf.structured(MODELS.get(model).config_cls)
    # Enum values as their names: a fixture holds only plain containers (it loads with weights_only=True)
    return OmegaConf.to_container(OmegaConf.merge(base, overrides), enum_to_str=True)


def build_model(
    model: str, config: Dict[str, Any], task: Dict[str, Any], memory: Optional[Dict[str, Any]]
) -> nn.Module:
    """The model of a stored case, built as the trainer builds it (`from_config`: the builder, then the
    product-key memories of the config's `memory`, which the fixtures store beside the config)."""
    renames = CONFIG_RENAMES.get(model, {})
    config = {renames.get(key, key): value for key, value in config.items() if renames.get(key, key) is not None}
    if memory is not None:
        config = {**config, "memory": memory}
    if model == PKM_LAYER:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PKMConfig), config))
        return ProductKeyMemory(task["d_in"], task["d_out"], cfg)
    entry = MODELS.get(model)
    cfg = OmegaConf.merge(OmegaConf.structured(entry.config_cls), config)
    fake_task = SimpleNamespace(**task, cfg=SimpleNamespace(tokens_per_sample=task.get("tokens_per_sample", 0)))
    return entry.builder.from_config(cfg, fake_task)


@torch.no_grad()
def perturb(model: nn.Module, seed: int) -> None:
    """Add seeded noise to every parameter: gates, heads and norms leave their symmetric initial values."""
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.named_parameters()):
        p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)


def randint(g: torch.Generator, high: int, *shape: int, low: int = 0) -> Tensor:
    return torch.randint(low, high, shape, generator=g)


# ---- runners ---------------------------------------------------------------------------------------------
def mae_gates(model: nn.Module) -> Dict[str, Tensor]:
    """Detached gate probabilities of every MAE module's last forward, by module name."""
    return {name: m.last_gate.clone() for name, m in model.named_modules() if getattr(m, "last_gate", None) is not None}


def batchnorm_stats(model: nn.Module) -> Dict[str, Tensor]:
    return {
        name: buf.clone()
        for name, buf in model.named_buffers()
        if name.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


@torch.no_grad()
def run_lm(model: nn.Module, inputs: Dict[str, Any]) -> Outputs:
    model.eval()
    out, aux = model(inputs["tokens"])
    result: Outputs = {"output": out, "aux": dict(aux), "gates": mae_gates(model)}
    if model.scores_own_output:
        result["nll"] = model.output_nll(out, inputs["target"])
        result["log_prob"] = model.output_log_prob(out)
    return result


def run_lm_pkm(model: nn.Module, inputs: Dict[str, Any]) -> Outputs:
    """Training-mode forward/backward (BatchNorm statistics move, gradients reach the memory), then eval."""
    model.train()
    logits, _ = model(inputs["tokens"])
    loss = F.cross_entropy(logits.transpose(1, 2), inputs["target"])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in sorted(model.named_parameters()) if "memory" in n or "keys" in n}
    stats = batchnorm_stats(model)
    model.eval()
    with torch.no_grad():
        eval_logits, _ = model(inputs["tokens"])
    return {
        "train_logits": logits.detach(),
        "loss": loss.detach(),
        "grads": grads,
        "bn": stats,
        "eval_logits": eval_logits,
    }


@torch.no_grad()
def run_char(model: nn.Module, inputs: Dict[str, Any]) -> Outputs:
    model.eval()
    logits, aux = model(inputs["tokens"], target=inputs["target"])
    subset = sorted(model.aux_term_names())[::2]  # every other term: switched-off heads are skipped
    _, aux_subset = model(inputs["tokens"], target=inputs["target"], active_aux=set(subset))
    return {"logits": logits, "aux": dict(aux), "aux_subset": dict(aux_subset), "no_target": model(inputs["tokens"])[0]}


def run_stream(model: nn.Module, inputs: Dict[str, Any]) -> Outputs:
    """Blocks read one after another with the cache carried, the scored sub-streams, and one training
    step's loss and gradients (with the span term)."""
    model.eval()
    blocks: List[Outputs] = []
    with torch.no_grad():
        cache = None
        for tokens in inputs["blocks"]:
            out, aux, cache = model(tokens, cache)
            blocks.append({"output": out, "aux": dict(aux)})
        device = next(model.parameters()).device  # a torch.device, as the task passes it
        total, count = score_substreams(model, inputs["stream"].numpy(), 3, inputs["blocks"].size(-1), device)
    model.train()
    first = inputs["blocks"][0]
    out, aux = model(first, target=inputs["block_targets"], reset=True)
    out, aux = model(inputs["blocks"][1], target=inputs["block_targets"], reset=False)  # carried cache
    if model.scores_own_output:
        loss = model.output_nll(out, inputs["block_targets"]).mean()
    else:
        loss = F.cross_entropy(out.transpose(1, 2), inputs["block_targets"])
    loss = loss + 0.01 * aux.get("span_l1", torch.zeros(()))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in sorted(model.named_parameters()) if p.grad is not None}
    return {
        "blocks": blocks,
        "final_cache": [c.clone() for c in cache],
        "substream_nll": total,
        "substream_count": count,
        "train_loss": loss.detach(),
        "grads": grads,
        "span_stats": span_stats(model),
    }


def hypotheses(model: nn.Module, src: Tensor, beam: int) -> List[List[Dict[str, Any]]]:
    cfg = GenerationConfig(beam=beam, nbest=beam, max_len_b=7)
    return [
        [{"tokens": h.tokens, "score": h.score, "positional_scores": h.positional_scores} for h in sentence]
        for sentence in generate(model, src, cfg)
    ]


@torch.no_grad()
def run_mt(model: nn.Module, inputs: Dict[str, Any]) -> Outputs:
    model.eval()
    logits, _ = model(inputs["src"], inputs["prev"])
    result: Outputs = {"log_probs": F.log_softmax(logits.float(), dim=-1), "gates": mae_gates(model)}
    result["beam1"] = hypotheses(model, inputs["src"], 1)
    result["beam4"] = hypotheses(model, inputs["src"], 4)
    return result


def run_pkm_layer(model: nn.Module, inputs: Dict[str, Any]) -> Outputs:
    model.train()
    out = model(inputs["x"], padding_mask=inputs["padding_mask"])
    out.sum().backward()
    grads = {n: p.grad.clone() for n, p in sorted(model.named_parameters())}
    stats = batchnorm_stats(model)
    model.eval()
    with torch.no_grad():
        eval_out = model(inputs["x"])
        scores, indices = model.lookup(model.query(inputs["x"].reshape(-1, model.d_in)))
    return {
        "train_out": out.detach(),
        "grads": grads,
        "bn": stats,
        "eval_out": eval_out,
        "scores": scores,
        "indices": indices,
    }


# ---- the cases ---------------------------------------------------------------------------------------------
LM_V, LM_T = 23, 9
LM_TASK = {"vocab_size": LM_V, "pad_idx": 1}
LM_BASE = dict(n_layers=2, d_model=16, n_heads=2, d_ff=32, dropout=0.0, max_positions=32)


def lm_inputs(g: torch.Generator) -> Dict[str, Any]:
    return {"tokens": randint(g, LM_V, 2, LM_T, low=2), "target": randint(g, LM_V, 2, LM_T, low=2)}


CHAR_V, CHAR_T = 11, 10
CHAR_BASE = dict(n_layers=3, d_model=16, n_heads=2, d_ff=32, dropout=0.0, max_positions=16)


def char_inputs(g: torch.Generator) -> Dict[str, Any]:
    return {"tokens": randint(g, CHAR_V, 3, CHAR_T), "target": randint(g, CHAR_V, 3, CHAR_T)}


ST_V, ST_M = 13, 8
ST_BASE = dict(
    d_model=16, n_layers=2, n_heads=2, d_ff=24, attn_span=100, span_ramp=8, cache_margin=4, dropout=0.0, emb_dropout=0.0
)
ST_TASK = {"vocab_size": ST_V, "pad_idx": 1, "tokens_per_sample": ST_M}


def stream_inputs(g: torch.Generator) -> Dict[str, Any]:
    return {
        "blocks": randint(g, ST_V, 3, 2, ST_M, low=2),
        "block_targets": randint(g, ST_V, 2, ST_M, low=2),
        "stream": randint(g, ST_V, 43, low=2),
    }


def set_self_attention_spans(values: List[float], layers: str = "layers") -> Callable[[nn.Module], None]:
    """Span parameters r per head of adaptive_span attention, shifted per layer, inside [0, 1] (`layers`: the
    model's layer list)."""

    @torch.no_grad()
    def prepare(model: nn.Module) -> None:
        for i, layer in enumerate(getattr(model, layers)):
            layer.self_attn.span.span_param.copy_(torch.tensor(values) + 0.1 * i)

    return prepare


SPAN = {"name": "adaptive_span", "max_span": 8, "span_ramp": 2}

MT_V = 17
MT_TASK = {"vocab_size": MT_V, "pad_idx": 1, "eos_idx": 2, "bos_idx": 0}
MT_BASE = dict(encoder_layers=2, decoder_layers=2, d_model=16, ffn_dim=32, n_heads=4, dropout=0.0, max_positions=32)


def mt_inputs(g: torch.Generator, src_vocab: int = MT_V, tgt_vocab: int = MT_V) -> Dict[str, Any]:
    src = randint(g, src_vocab, 3, 7, low=3)
    src[:, -1] = 2
    src[1, :2] = 1  # left padding
    src[2, :3] = 1
    tgt = randint(g, tgt_vocab, 3, 6, low=3)
    prev = torch.cat([torch.full((3, 1), 2), tgt[:, :-1]], dim=1)
    prev[2, 4:] = 1  # right padding of the decoder input
    return {"src": src, "prev": prev}


def pkm_inputs(g: torch.Generator) -> Dict[str, Any]:
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[1, 3:] = True
    padding[2, 1:] = True
    return {"x": torch.randn(3, 5, 12, generator=g), "padding_mask": padding}


MAE = {"attention": "mae", "mae": {"drop": 1, "gate_hidden": 8}}
CASES: List[Case] = [
    Case("lm_plain", "transformer_lm", LM_BASE, LM_TASK, lm_inputs, run_lm),
    Case(
        "lm_postln_sinusoidal_untied",
        "transformer_lm",
        {**LM_BASE, "pre_ln": False, "positions": "sinusoidal", "activation": "gelu", "tie_embeddings": False},
        LM_TASK,
        lm_inputs,
        run_lm,
    ),
    Case("lm_mae", "transformer_lm", {**LM_BASE, "n_heads": 4, **MAE}, LM_TASK, lm_inputs, run_lm),
    Case(
        "lm_adaptive_io",
        "transformer_lm",
        {
            **LM_BASE,
            "adaptive_input": True,
            "adaptive_softmax": True,
            "adaptive_cutoffs": [5, 12],
            "adaptive_factor": 2.0,
            "tie_adaptive_weights": True,
            "tie_adaptive_proj": True,
            "tie_embeddings": False,
        },
        LM_TASK,
        lm_inputs,
        run_lm,
    ),
    Case(
        "lm_pkm_replace_ffn",
        "transformer_lm",
        LM_BASE,
        LM_TASK,
        lm_inputs,
        run_lm_pkm,
        memory={"layers": [1], "mode": "replace_ffn", "pkm": {"mem_size": 36, "key_dim": 8, "heads": 2, "knn": 3}},
    ),
    Case(
        "char_t64_separate_heads",
        "char_transformer",
        {**CHAR_BASE, "n_targets": 3},
        {"vocab_size": CHAR_V},
        char_inputs,
        run_char,
    ),
    Case(
        "char_t64_shared_heads_first_layer_positions",
        "char_transformer",
        {
            **CHAR_BASE,
            "n_targets": 2,
            "intermediate_heads": "shared",
            "positions": "first_layer",
            "tie_embeddings": True,
        },
        {"vocab_size": CHAR_V},
        char_inputs,
        run_char,
    ),
    Case(
        "char_t64_adaptive_span",
        "char_transformer",
        {**CHAR_BASE, "n_targets": 2, "attention": SPAN},
        {"vocab_size": CHAR_V},
        char_inputs,
        run_char,
        prepare=set_self_attention_spans([0.3, 0.6]),
    ),
    Case(
        "stream_adaptive_span",
        "streaming_lm",
        ST_BASE,
        ST_TASK,
        stream_inputs,
        run_stream,
        prepare=set_self_attention_spans([0.1, 0.4]),
    ),
    Case(
        "stream_all_attention",
        "streaming_lm",
        {**ST_BASE, "persistent_memory": 3},
        ST_TASK,
        stream_inputs,
        run_stream,
        prepare=set_self_attention_spans([0.2, 0.05]),
    ),
    Case(
        "stream_fixed_window",
        "streaming_lm",
        {**ST_BASE, "adaptive_span": False, "attn_span": 12},
        ST_TASK,
        stream_inputs,
        run_stream,
    ),
    Case(
        "stream_dynamic_span",
        "streaming_lm",
        {**ST_BASE, "dynamic_span": True, "span_init": 0.1},
        ST_TASK,
        stream_inputs,
        run_stream,
    ),
    Case(
        "stream_adaptive_io",
        "streaming_lm",
        {
            **ST_BASE,
            "adaptive_input": True,
            "adaptive_softmax": True,
            "adaptive_cutoffs": [4, 8],
            "adaptive_factor": 2.0,
        },
        ST_TASK,
        stream_inputs,
        run_stream,
        prepare=set_self_attention_spans([0.15, 0.3]),
    ),
    Case(
        "stream_mae",
        "streaming_lm",
        {**ST_BASE, "attention": {"name": "mae", "gate_hidden": 8}},
        ST_TASK,
        stream_inputs,
        run_stream,
        prepare=set_self_attention_spans([0.1, 0.4]),
    ),
    Case("mt_base", "transformer", MT_BASE, MT_TASK, mt_inputs, run_mt),
    Case(
        "mt_decoder_span",
        "transformer",
        {**MT_BASE, "slot_attention": {"decoder_self": {**SPAN, "persistent_memory": 2}}},
        MT_TASK,
        mt_inputs,
        run_mt,
        prepare=set_self_attention_spans([0.2, 0.5, 0.4, 0.7], "decoder_layers"),
    ),
    Case("mt_mae_all_slots", "transformer", {**MT_BASE, **MAE}, MT_TASK, mt_inputs, run_mt),
    Case(
        "mt_mae_decoder_self_argmax",
        "transformer",
        {**MT_BASE, "attention": "mae", "mae_slots": ["decoder_self"], "mae": {"drop": 2, "mode": "argmax_expert"}},
        MT_TASK,
        mt_inputs,
        run_mt,
    ),
    Case(
        "mt_preln_learned_unshared",
        "transformer",
        {
            **MT_BASE,
            "pre_ln": True,
            "positions": "learned",
            "share_all_embeddings": False,
            "share_decoder_input_output_embed": False,
        },
        {**MT_TASK, "src_vocab_size": 15, "tgt_vocab_size": 19},
        lambda g: mt_inputs(g, 15, 19),
        run_mt,
    ),
    Case(
        PKM_LAYER,
        PKM_LAYER,
        {"mem_size": 49, "key_dim": 8, "heads": 2, "knn": 3, "query_layers": 2, "value_dim": 6},
        {"d_in": 12, "d_out": 10},
        pkm_inputs,
        run_pkm_layer,
    ),
]
CASES_BY_NAME = {case.name: case for case in CASES}


def fixture_path(name: str) -> Path:
    return FIXTURE_DIR / f"{name}{SUFFIX}"


def make_fixture(case: Case, seed: int) -> Dict[str, Any]:
    """Build, perturb and run one case; the fixture dict (state_dict taken before running)."""
    torch.manual_seed(seed)
    config = plain_config(case.model, case.config)
    model = build_model(case.model, config, case.task, case.memory)
    perturb(model, seed)
    if case.prepare is not None:
        case.prepare(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = case.inputs(torch.Generator().manual_seed(seed))
    outputs = case.run(model, inputs)
    return {
        "format": FORMAT,
        "case": case.name,
        "model": case.model,
        "config": config,
        "task": dict(case.task),
        "memory": case.memory,
        "state_dict": state,
        "inputs": inputs,
        "outputs": to_plain(outputs),
    }


def to_plain(value: Any) -> Any:
    """Outputs as tensors and plain containers only (numpy scalars become Python numbers)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def renamed(key: str) -> str:
    """A stored state_dict key (or parameter name) as the models name it now (STATE_RENAMES)."""
    for pattern, replacement in STATE_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def expected_outputs(fixture: Dict[str, Any]) -> Outputs:
    """The stored outputs, their gradients keyed by today's parameter names (STATE_RENAMES)."""
    outputs = dict(fixture["outputs"])
    if isinstance(outputs.get("grads"), dict):
        outputs["grads"] = {renamed(name): grad for name, grad in outputs["grads"].items()}
    return outputs


def replay(fixture: Dict[str, Any]) -> Outputs:
    """Rebuild a stored case's model, load its weights and run it on its inputs."""
    case = CASES_BY_NAME[fixture["case"]]
    model = build_model(fixture["model"], fixture["config"], fixture["task"], fixture["memory"])
    state = {renamed(key): value for key, value in fixture["state_dict"].items()}
    model.load_state_dict(state, strict=True)
    return to_plain(case.run(model, fixture["inputs"]))


def differences(expected: Any, actual: Any, path: str = "") -> List[str]:
    """Where `actual` is not exactly `expected` (tensors: same dtype, shape and bits), as readable lines."""
    if isinstance(expected, Tensor):
        if not isinstance(actual, Tensor):
            return [f"{path}: expected a tensor, got {type(actual).__name__}"]
        if expected.dtype != actual.dtype or expected.shape != actual.shape:
            return [f"{path}: expected {expected.dtype}{list(expected.shape)}, got {actual.dtype}{list(actual.shape)}"]
        if torch.equal(expected, actual):
            return []
        if expected.is_floating_point():
            gap = (expected.double() - actual.double()).abs().nan_to_num(nan=float("inf")).max().item()
            return [f"{path}: values differ (max abs difference {gap:.3g})"]
        return [f"{path}: values differ ({int((expected != actual).sum())} of {expected.numel()} elements)"]
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(expected) != set(actual):
            got = sorted(actual) if isinstance(actual, dict) else type(actual).__name__
            return [f"{path}: expected keys {sorted(expected)}, got {got}"]
        return [line for key in expected for line in differences(expected[key], actual[key], f"{path}.{key}")]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            return [f"{path}: expected a list of {len(expected)}, got {actual!r:.80}"]
        return [line for i, (e, a) in enumerate(zip(expected, actual)) for line in differences(e, a, f"{path}[{i}]")]
    if type(expected) is not type(actual) or expected != actual:
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    return []
