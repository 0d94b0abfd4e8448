#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): bare generate vs the shared trace vs every method,
# a device-map split and one `mmxai compare`, on a random Qwen2-VL-2B-shaped model in
# bfloat16, batch 8, in one run under 8 minutes; writes OUT/gpu_check.md and prints it.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--budget SECONDS]   # on a CUDA machine
#   bash benchmarks/gpu_check.sh --dry-run --out DIR              # the same steps on a CPU
#
# On the project's GPU machine (python3 3.12 with torch, transformers, accelerate,
# scikit-image, rich, pluggy; no captum, no pycocotools, no registry, no hub, and a
# setuptools of unknown version, maybe none): build mmxai's wheel here first, into .whl
# (ignored by git; build it again after every change: the wheel is what runs there), then
# from the repository root, through the device tool's `run` with carry [".whl"]:
#
#   pip wheel --no-deps -w .whl .                 # here (pyproject needs setuptools>=77)
#   bash benchmarks/gpu_check.sh --out "$OUT"     # there
#
# When the chosen python cannot import mmxai with its plugins (entry points), this script
# installs into a folder of its own (MMXAI_SITE, default /tmp/mmxai-site), put on
# PYTHONPATH, without dependencies and fetching nothing: the wheels in WHEELS (default
# .whl: mmxai's, and any the GPU machine lacks, e.g. captum's), then, only if none of them
# was mmxai's, this checkout, built with the machine's own setuptools
# (--no-build-isolation). GPU_CHECK_INSTALL=1 installs so even when the python imports
# mmxai already (the tests: an editable install would hide a step that imports the
# checkout's bare mmxai/ folder instead of the installed package).
# Without captum the methods that call it are rows marked "unavailable" (gradcam's default
# engine needs none); pycocotools only the COCO reader imports: no step needs it.
#
# PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# mmxai as installed, not the checkout's folder: from the repository root the bare mmxai/
# would import, without mmxai.methods and mmxai.plugins. $1: the folder it must come from.
installed() {
    (cd / && "$PYTHON" - "${1:-}" <<'EOF' 2>/dev/null)
import importlib.metadata as metadata
import sys
import mmxai.methods.tam
assert mmxai.__file__.startswith(sys.argv[1])
assert any(ep.value.startswith("mmxai.methods") for ep in metadata.entry_points(group="mmxai"))
EOF
}

if [[ ${GPU_CHECK_INSTALL:-} == 1 ]] || ! installed; then
    site=$(realpath -m "${MMXAI_SITE:-/tmp/mmxai-site}")  # absolute: the steps change folder
    pip=("$PYTHON" -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target "$site")
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    shopt -s nullglob
    wheels=("${WHEELS:-.whl}"/*.whl)
    if ((${#wheels[@]})); then
        echo "gpu_check: installing ${wheels[*]} into $site" >&2
        "${pip[@]}" "${wheels[@]}"
    fi
    if ! installed "$site"; then
        echo "gpu_check: installing this checkout into $site (nothing fetched)" >&2
        "${pip[@]}" --no-build-isolation . || {
            echo "gpu_check: this python cannot build mmxai (pyproject.toml needs" \
                 "setuptools>=77): run 'pip wheel --no-deps -w .whl .' where it can, and" \
                 "carry .whl" >&2
            exit 1
        }
    fi
    installed "$site" || { echo "gpu_check: mmxai is still not importable from $site" >&2
                           exit 1; }
fi

exec "$PYTHON" benchmarks/gpu_check.py "$@"
