#!/usr/bin/env bash
# Create .venv and install distsel with its test tools, pinned by requirements.lock. Idempotent.
# torch: TORCH_INDEX_URL if set; else PyPI's default build where an NVIDIA GPU is present (CUDA on
# Linux); else a CPU wheel already on this machine's pip find-links; else PyTorch's CPU-only index
# on Linux (PyPI's Linux default is the multi-GB CUDA build) and PyPI's default elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
PIP_VERSION=26.3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "pip==$PIP_VERSION"
torch_pin="$(grep -m1 '^torch==' requirements.lock | cut -d' ' -f1)"

install_torch() {
  if .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${torch_pin#torch==}')" 2>/dev/null; then
    return
  fi
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" --index-url "$TORCH_INDEX_URL" "$torch_pin"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    "${pip[@]}" "$torch_pin"
  elif "${pip[@]}" --no-index --no-deps "$torch_pin" 2>/dev/null; then
    :  # its dependencies come with distsel's below
  elif [ "$(uname -s)" = Linux ]; then
    "${pip[@]}" --index-url https://download.pytorch.org/whl/cpu "$torch_pin"
  else
    "${pip[@]}" "$torch_pin"
  fi
}

install_torch
"${pip[@]}" --constraint requirements.lock -e ".[test]"
