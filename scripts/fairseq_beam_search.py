"""fairseq 0.12.2's beam search on a model exported by scripts/bench_generate.py --fairseq-python.

    FAIRSEQ_PYTHON scripts/fairseq_beam_search.py EXPORT.pt RESULT.pt

Runs under a Python that has fairseq (scripts/setup_fairseq_bench.sh builds one) and imports nothing from the
toolkit: fairseq pins hydra-core 1.0 and omegaconf 2.0, which the toolkit's own versions replace. EXPORT.pt
(tensors and plain values only, read with weights_only=True) holds the model's weights under fairseq's
parameter names, its architecture and position table, the vocabulary size, the source batches, a probe batch
and the decoding settings. The script builds fairseq's `transformer` with those weights and positions, writes
the probe batch's decoder logits (so the caller can check that both sides run the same model), warms up on
the first batch, then times one pass of fairseq's SequenceGenerator over all batches (CPU time and wall-clock
time) and writes both, every best hypothesis and its score to RESULT.pt.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from fairseq.data import Dictionary
from fairseq.models.transformer import TransformerModel, base_architecture
from fairseq.sequence_generator import SequenceGenerator


def build_model(export: dict) -> TransformerModel:
    arch = export["arch"]
    args = argparse.Namespace(
        encoder_layers=arch["encoder_layers"],
        decoder_layers=arch["decoder_layers"],
        encoder_embed_dim=arch["d_model"],
        decoder_embed_dim=arch["d_model"],
        encoder_ffn_embed_dim=arch["ffn_dim"],
        decoder_ffn_embed_dim=arch["ffn_dim"],
        encoder_attention_heads=arch["heads"],
        decoder_attention_heads=arch["heads"],
        share_all_embeddings=True,
        max_source_positions=arch["max_positions"],
        max_target_positions=arch["max_positions"],
    )
    base_architecture(args)
    vocab = Dictionary()  # bos 0, pad 1, eos 2, unk 3: the toolkit's sentencepiece layout
    for i in range(len(vocab), export["vocab_size"]):
        vocab.add_symbol(f"piece{i}")
    task = argparse.Namespace(source_dictionary=vocab, target_dictionary=vocab)
    model = TransformerModel.build_model(args, task)
    missing, unexpected = model.load_state_dict(export["weights"], strict=False)
    # only fairseq's bookkeeping buffers may lack a value; every weight must come from the export
    missing = [k for k in missing if not k.endswith(("_float_tensor", ".version"))]
    if missing or unexpected:
        sys.exit(f"error: the export does not fit fairseq's model: missing {missing}, unexpected {unexpected}")
    # fairseq's sinusoidal positions count from pad + 1, the toolkit's from 0: same table, shifted rows
    table = export["positions"]
    offset = vocab.pad() + 1
    shifted = torch.cat([torch.zeros(offset, table.size(1)), table])
    for side in (model.encoder, model.decoder):
        side.embed_positions.weights = shifted
    return model.eval()


def main() -> None:
    export_path, result_path = sys.argv[1:3]
    export = torch.load(export_path, weights_only=True)
    torch.set_num_threads(export["threads"])
    model = build_model(export)
    vocab = model.decoder.dictionary
    settings = export["generation"]
    gen = SequenceGenerator(
        [model],
        vocab,
        beam_size=settings["beam"],
        max_len_a=settings["max_len_a"],
        max_len_b=settings["max_len_b"],
        min_len=settings["min_len"],
        len_penalty=settings["lenpen"],
    )

    def run(src_tokens: torch.Tensor) -> list:
        lengths = src_tokens.ne(vocab.pad()).sum(1)
        sample = {"net_input": {"src_tokens": src_tokens, "src_lengths": lengths}}
        return [nbest[0] for nbest in gen.generate([model], sample)]

    with torch.no_grad():
        probe_src, probe_prev = export["probe"]
        logits = model(probe_src, probe_src.ne(vocab.pad()).sum(1), probe_prev)[0]
        run(export["batches"][0])  # warm-up
        start, wall_start = time.process_time(), time.perf_counter()
        hypotheses = [h for batch in export["batches"] for h in run(batch)]
        seconds, wall_seconds = time.process_time() - start, time.perf_counter() - wall_start
    torch.save(
        {
            "probe_logits": logits,
            "seconds": seconds,
            "wall_seconds": wall_seconds,
            "hypotheses": [h["tokens"] for h in hypotheses],
            "scores": torch.stack([h["score"] for h in hypotheses]),
        },
        result_path,
    )


if __name__ == "__main__":
    main()
