#!/usr/bin/env bash
# Builds a Python with fairseq 0.12.2 for the beam-search comparison in scripts/bench_generate.py:
#
#     bash scripts/setup_fairseq_bench.sh [DIR]        # default DIR: /tmp/fairseq_bench
#     python scripts/bench_generate.py ... --fairseq-python DIR/venv/bin/python
#
# Benchmark only; nothing in the toolkit imports fairseq. fairseq 0.12.2 (its last release) needs three changes
# to build and import on Python 3.11, all kept inside DIR:
#  - its source archive lacks fairseq/clib/libbase/balanced_assignment.cpp, so the C++ extensions that beam
#    search does not use (libbase, libnat, the alignment operator) are left out of the build;
#  - it pins hydra-core 1.0 and omegaconf 2.0, which conflict with the toolkit's: they live in DIR/venv, a
#    virtual environment that sees this Python's torch but not its hydra/omegaconf;
#  - Python 3.11's dataclasses refuse an unhashable default (fairseq's and hydra 1.0's `common: CommonConfig =
#    CommonConfig()`), which 3.10 accepted: the venv's sitecustomize.py restores the 3.10 rule for those.
set -euo pipefail

DIR=${1:-/tmp/fairseq_bench}
PY=${PYTHON:-python}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
"$PY" -m venv --system-site-packages "$DIR/venv"
VPY="$DIR/venv/bin/python"
# pip >= 24.1 rejects omegaconf 2.0.6's metadata
"$VPY" -m pip install -q "pip<24.1" cython bitarray regex cffi "hydra-core==1.0.7" "omegaconf==2.0.6"
"$VPY" -m pip download -q fairseq==0.12.2 --no-deps -d "$DIR"
rm -rf "$DIR/src" && mkdir "$DIR/src" && tar xzf "$DIR/fairseq-0.12.2.tar.gz" -C "$DIR/src"
SRC="$DIR/src/fairseq-0.12.2"

"$VPY" - "$SRC/setup.py" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
# drop the extensions.extend([...]) blocks that build libbase, libnat and the alignment operator
for name in ('"fairseq.libbase"', '"fairseq.libnat"'):
    start = text.rindex("    extensions.extend(", 0, text.index(name))
    end = text.index("\n    )\n", start) + len("\n    )\n")
    text = text[:start] + text[end:]
open(path, "w").write(text)
EOF
(cd "$SRC" && "$VPY" setup.py build_ext --inplace >"$DIR/build.log" 2>&1) || {
    echo "error: building fairseq's extensions failed; see $DIR/build.log" >&2
    exit 1
}
SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$SRC" >"$SITE/fairseq_src.pth"
cat >"$SITE/sitecustomize.py" <<'EOF'
"""Python 3.10's dataclass rule inside this benchmark venv: a dataclass instance may be a field's default
(fairseq 0.12.2 and hydra-core 1.0.7 rely on it; 3.11 rejects unhashable defaults)."""
import dataclasses

_get_field = dataclasses._get_field


def _get_field_allowing_dataclass_defaults(cls, name, type_, *args):
    default = cls.__dict__.get(name, dataclasses.MISSING)
    if isinstance(default, dataclasses.Field):
        default = default.default
    klass = type(default)
    if dataclasses.is_dataclass(default) and not isinstance(default, type) and klass.__hash__ is None:
        klass.__hash__ = object.__hash__  # only while the field is checked
        try:
            return _get_field(cls, name, type_, *args)
        finally:
            klass.__hash__ = None
    return _get_field(cls, name, type_, *args)


dataclasses._get_field = _get_field_allowing_dataclass_defaults
EOF
"$VPY" -c "import fairseq.sequence_generator, fairseq.models.transformer; print('fairseq', fairseq.__version__)" 2>/dev/null
echo "ready: --fairseq-python $DIR/venv/bin/python"
