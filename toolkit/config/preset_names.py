"""The presets' flat names of earlier releases and the names they have now (`config=FOLDER/NAME`).

Presets live in one folder per paper under toolkit/configs/config/. Names follow one pattern,
`[MODEL_]DATASET[_VARIANT][_SIZE]` with the size (`tiny`, `large`) last; MODEL is left out in a folder of one
model (adaptive_span/, all_attention/). Every old name still composes: it is registered in Hydra's ConfigStore
as a preset whose only default is the new one, so `config=t12_text8`, a checkpoint's command line and a user's
preset whose defaults list names `text8_char_tiny` give exactly the configs they gave before.
"""

from __future__ import annotations

from typing import Dict, Iterable, List

RENAMED: Dict[str, str] = {
    "adaptive_span_text8": "adaptive_span/text8",
    "adaptive_span_enwik8": "adaptive_span/enwik8",
    "adaptive_span_text8_large": "adaptive_span/text8_large",
    "adaptive_span_enwik8_large": "adaptive_span/enwik8_large",
    "adaptive_span_tiny_text8": "adaptive_span/text8_tiny",
    "adaptive_span_tiny_text8_fixed": "adaptive_span/text8_fixed_tiny",
    "all_attention_text8": "all_attention/text8",
    "all_attention_enwik8": "all_attention/enwik8",
    "all_attention_enwik8_large": "all_attention/enwik8_large",
    "all_attention_wt103": "all_attention/wt103",
    "all_attention_tiny_text8": "all_attention/text8_tiny",
    "all_attention_tiny_wikitext2": "all_attention/wikitext2_tiny",
    "base_iwslt14": "mae/base_iwslt14",
    "base_iwslt14_tiny": "mae/base_iwslt14_tiny",
    "base_wmt14": "mae/base_wmt14",
    "base_wt103": "mae/base_wt103",
    "mae6_iwslt14": "mae/mae6_iwslt14",
    "mae6_wmt14": "mae/mae6_wmt14",
    "mae7_iwslt14": "mae/mae7_iwslt14",
    "mae7_iwslt14_tiny": "mae/mae7_iwslt14_tiny",
    "mae7_wmt14": "mae/mae7_wmt14",
    "mae7_wt103": "mae/mae7_wt103",
    "nobcd_mae7_iwslt14": "mae/nobcd_mae7_iwslt14",
    "nobcd_mae7_iwslt14_tiny": "mae/nobcd_mae7_iwslt14_tiny",
    "nobcd_mae7_wmt14": "mae/nobcd_mae7_wmt14",
    "uni_mae6_iwslt14": "mae/uni_mae6_iwslt14",
    "uni_mae6_wmt14": "mae/uni_mae6_wmt14",
    "uni_mae7_iwslt14": "mae/uni_mae7_iwslt14",
    "uni_mae7_iwslt14_tiny": "mae/uni_mae7_iwslt14_tiny",
    "uni_mae7_wmt14": "mae/uni_mae7_wmt14",
    "pkm_text8": "pkm/pkm_text8",
    "pkm_text8_tiny": "pkm/pkm_text8_tiny",
    "pkm_wt103": "pkm/pkm_wt103",
    "pkm_text8_deep_baseline": "pkm/deep_baseline_text8",
    "pkm_wt103_deep_baseline": "pkm/deep_baseline_wt103",
    "t12_text8": "t64/t12_text8",
    "t12_enwik8": "t64/t12_enwik8",
    "t12_text8_no_aux": "t64/t12_text8_no_aux",
    "t12_text8_no_intermediate": "t64/t12_text8_no_intermediate",
    "t12_text8_no_multitarget": "t64/t12_text8_no_multitarget",
    "t64_text8": "t64/t64_text8",
    "t64_enwik8": "t64/t64_enwik8",
    "t64_tiny_text8": "t64/t64_text8_tiny",
    "t64_tiny_text8_noaux": "t64/t64_text8_no_aux_tiny",
    "text8_char_tiny": "baselines/transformer_lm_text8_tiny",
    "text8_t12": "baselines/transformer_lm_text8",
    "wikitext2_tiny": "baselines/transformer_lm_wikitext2_tiny",
    "transformer_lm_wt103": "baselines/transformer_lm_wt103",
    "transformer_iwslt14": "baselines/transformer_iwslt14",
    "iwslt14_tiny": "baselines/transformer_iwslt14_tiny",
    "transformer_base_wmt14": "baselines/transformer_base_wmt14",
}


def current_name(name: str) -> str:
    """The preset's name today (an old flat name is translated; any other name is returned as it is)."""
    return RENAMED.get(name, name)


def register_old_names() -> None:
    """Each old name as a ConfigStore preset that only includes the new one (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for old, new in RENAMED.items():
        store.store(group="config", name=old, node={"defaults": [f"/config/{new}", "_self_"]}, package="_global_")


def rename_table() -> str:
    """The table as text, one `old -> new` per line (docs, `tk-train --help`)."""
    width = max(map(len, RENAMED))
    return "\n".join(f"{old:<{width}} -> {new}" for old, new in sorted(RENAMED.items()))


def presets_by_folder(names: Iterable[str]) -> Dict[str, List[str]]:
    """{FOLDER: [NAME, ...]} for names FOLDER/NAME (a name without a folder is under '')."""
    groups: Dict[str, List[str]] = {}
    for name in sorted(names):
        folder, _, rest = name.rpartition("/")
        groups.setdefault(folder, []).append(rest)
    return groups
