#!/usr/bin/env bash
# The Quickstart's main job: prepare the shipped text8 sample, train the tiny char LM, print its test bpc
# next to the unigram/bigram/trigram levels of the same split (the end-of-training summary).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f data-bin/text8_sample/meta.json ]; then
  tk-preprocess config=text8 input=data/text8/text8-prefix-5M.xz destdir=data-bin/text8_sample
fi
tk-train config=baselines/rotary_lm_text8_tiny "$@"
