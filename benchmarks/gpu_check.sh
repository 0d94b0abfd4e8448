#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): bare generate vs the shared trace vs every method,
# a device-map split and one `mmxai compare`, on a random Qwen2-VL-2B-shaped model in
# bfloat16, batch 8, in one run under 8 minutes; writes OUT/gpu_check.md and prints it.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--budget SECONDS]   # on a CUDA machine
#   bash benchmarks/gpu_check.sh --dry-run --out DIR              # the same steps on a CPU
#
# On the project's GPU machine (python3 3.12 with torch, transformers, accelerate,
# scikit-image, rich, pluggy, setuptools; no captum, no pycocotools, no registry, no hub),
# from the repository root, through the device tool's `run`:
#
#   bash benchmarks/gpu_check.sh --out "$OUT"
#
# When the chosen python cannot import mmxai with its plugins (entry points), this script
# installs into a folder of its own (MMXAI_SITE, default /tmp/mmxai-site), put on
# PYTHONPATH, without dependencies and fetching nothing: the wheels in WHEELS (default
# .whl, the folder the device tool carries wheels in, e.g. captum's), then, unless one of
# them was mmxai's, this checkout, built with the machine's own setuptools
# (--no-build-isolation). Should that setuptools be too old for pyproject.toml, build the
# wheel here first (`pip wheel --no-deps -w .whl .`) and carry .whl.
# Without captum the methods that call it are rows marked "unavailable" (gradcam's default
# engine needs none); pycocotools only the COCO reader imports: no step needs it.
#
# PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# mmxai as installed, not the checkout's folder: from the repository root the bare mmxai/
# would import, without mmxai.methods and mmxai.plugins
installed() {
    (cd / && "$PYTHON" - <<'EOF' 2>/dev/null)
import importlib.metadata as metadata
import mmxai.methods.tam
assert any(ep.value.startswith("mmxai.methods") for ep in metadata.entry_points(group="mmxai"))
EOF
}

if ! installed; then
    site=${MMXAI_SITE:-/tmp/mmxai-site}
    pip=("$PYTHON" -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target "$site")
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    shopt -s nullglob
    wheels=("${WHEELS:-.whl}"/*.whl)
    if ((${#wheels[@]})); then
        echo "gpu_check: installing ${wheels[*]} into $site" >&2
        "${pip[@]}" "${wheels[@]}"
    fi
    if ! installed; then
        echo "gpu_check: installing this checkout into $site (nothing fetched)" >&2
        "${pip[@]}" --no-build-isolation .
    fi
    installed || { echo "gpu_check: mmxai is still not importable from $site" >&2; exit 1; }
fi

exec "$PYTHON" benchmarks/gpu_check.py "$@"
