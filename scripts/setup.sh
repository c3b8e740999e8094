#!/usr/bin/env bash
# Install the toolkit into the current Python environment.
# torch is installed first and pinned, so that pip takes the local CPU wheel and nothing pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
