#!/usr/bin/env bash
# GPU readiness check on a machine with one GPU: runs scripts/gpu_check.py (docs/gpu.md) and writes one JSON.
#
#   scripts/gpu_check.sh [OUT.json]        # default: gpu_check.json in the current directory
#
# Needs the toolkit's Python dependencies (pip install -e . once). Budget: under 8 minutes on an H100/H200;
# a hard limit of 8 minutes stops it (the JSON is written only at the end, so rerun with --checks to split).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-gpu_check.json}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
timeout 480 python3 "$repo/scripts/gpu_check.py" --device cuda --out "$out"
