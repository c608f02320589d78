#!/usr/bin/env bash
# Create .venv and install distsel with its test tools. Idempotent; safe to rerun.
# torch is pinned first: on a machine that carries the CPU wheel locally, pip takes it from there;
# elsewhere PyPI's default wheel for the platform is used (CUDA on Linux x86_64 with a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[test]"
