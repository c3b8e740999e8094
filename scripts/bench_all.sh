#!/usr/bin/env bash
# Re-measure every benchmark in the README, one after another, each with the machine's load printed before it.
#
#   scripts/bench_all.sh [LOG_DIR]        # default: runs/bench_all (one log per benchmark, plus loads.txt)
#
# Run it only on an idle machine (`uptime`: a 1-minute load well under 1 before it starts); a figure taken
# while anything else ran is not published. Needs data-bin/text8_sample and data-bin/iwslt14_sample
# (README Quickstart / scripts/quickstart.sh prepare them). With FAIRSEQ_PYTHON set (a Python with fairseq 0.12.2:
# bash scripts/setup_fairseq_bench.sh), beam search is also timed against fairseq's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
logs="${1:-runs/bench_all}"
mkdir -p "$logs"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, whatever toolkit is installed

run() {  # NAME COMMAND...
    local name="$1"; shift
    echo "== $name: $* | load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$logs/loads.txt"
    "$@" >"$logs/$name.log" 2>&1 || echo "   $name failed (exit $?), see $logs/$name.log" | tee -a "$logs/loads.txt"
    tail -n 4 "$logs/$name.log"
    echo "   load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$logs/loads.txt"
}

run train_char python scripts/bench_train.py --data data-bin/text8_sample
run train_mt python scripts/bench_train.py --config iwslt14_tiny --data data-bin/iwslt14_sample
run word_lm python scripts/bench_word_lm.py train
run pkm_train python scripts/bench_pkm_train.py
run pkm_layer python scripts/bench_pkm_layer.py
run t64_aux python scripts/bench_t64_aux.py
run adaptive_span python scripts/bench_adaptive_span.py
run mae python scripts/bench_mae.py --threads 1 --clock cpu --gate-hidden 64 --layers 6 --tokens 2048
run mae_causal python scripts/bench_mae.py --threads 1 --clock cpu --gate-hidden 64 --layers 6 --tokens 2048 --causal
run binarize python scripts/bench_binarize.py --lines 300000
run generate python scripts/bench_generate.py --data data-bin/iwslt14_sample --force-len 31 --beams 1,5 \
    --batch-sizes 128 --limit 500 --threads 1 --rounds 3 --device cpu ${FAIRSEQ_PYTHON:+--fairseq-python "$FAIRSEQ_PYTHON"}
run ddp python scripts/bench_ddp.py --updates 30
