#!/usr/bin/env bash
# Refresh requirements.lock: every dependency of distsel and its test tools pinned, for every
# platform and Python that distsel supports (a universal resolution), torch held at TORCH_VERSION.
# setup.sh, .ci/run and the Dockerfile install through this file as pip constraints.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/python" -m pip install --quiet uv
echo "torch==$TORCH_VERSION" > "$tools/torch.txt"
"$tools/venv/bin/uv" pip compile pyproject.toml --extra test --universal --python-version 3.10 \
  --constraint "$tools/torch.txt" --no-header --quiet --output-file requirements.lock
{ printf '# Pinned by scripts/lock.sh (bash scripts/lock.sh to refresh). Used as pip constraints.\n'
  cat requirements.lock; } > "$tools/lock" && mv "$tools/lock" requirements.lock
echo "requirements.lock: $(grep -c '==' requirements.lock) pins"
