"""DDP on CPU (gloo, 2 processes) gives the same validation metrics and weights as 1 process.

Same global batch (2 x 8 vs 1 x 16) and the same seeded epoch permutation (the datamodules'
sampler: rank r of N takes every N-th example of it, so the two ranks of one DDP step see the 16
examples one single-process step sees), dropout off. DDP
averages the two ranks' gradients, which for a mean loss over equal halves is the single
process's gradient; what differs is float summation order and per-rank padding.
Tolerance: identical accuracy, validation loss within 1e-4, weights within 1e-4 (SGD; see below).
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification

from conftest import data_args, tiny_config

DDP_TIMEOUT_S = 240


def read_metrics(root: Path) -> dict[str, float]:
    rows = list(csv.DictReader(next(root.rglob("metrics.csv")).open()))
    values = {}
    for row in rows:
        values.update({k: float(v) for k, v in row.items() if v not in ("", None) and k.startswith("val")})
    return values


def run(args: list[str], root: Path, devices: int, batch_size: int) -> dict[str, float]:
    common = [
        *args, f"--data.batch_size={batch_size}", "--trainer.accelerator=cpu",
        f"--trainer.devices={devices}", f"--trainer.default_root_dir={root}", "--trainer.max_steps=4",
        "--trainer.val_check_interval=4", "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={root}",
        "--seed_everything=0", f"--model.init_args.export_dir={root / 'export'}",
    ]
    if devices > 1:
        common.append("--trainer.strategy=ddp")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "kdlight.cli", "fit", *common], capture_output=True, text=True,
                          timeout=DDP_TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return read_metrics(root)


@pytest.fixture(scope="module")
def dropout_free_teacher(assets, tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp_teacher")
    config = tiny_config(len(open(assets["tokenizer"] / "vocab.txt").read().split()), layers=2)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    for name in ("vocab.txt", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"):
        if (assets["tokenizer"] / name).exists():
            (path / name).write_bytes((assets["tokenizer"] / name).read_bytes())
    return path


# SGD, because Adam turns float-rounding noise on near-zero gradients (common in a random tiny
# model) into full learning-rate-sized steps, which hides real differences behind fake ones.
SGD = ["--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=0.5"]
MODULES = {
    "teacher": lambda t: ["--model=TeacherFineTuning", f"--model.model={t}", *SGD],
    "vanilla_kd": lambda t: ["--model=VanillaKD", f"--model.teacher={t}", "--model.student=TruncatedTeacher",
                             "--model.student.num_layers=1", "--model.temperature=2", *SGD],
}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_ddp_matches_single_process(assets, dropout_free_teacher, tmp_path, module):
    args = [*MODULES[module](dropout_free_teacher), *data_args(assets)]
    args = [a for a in args if not a.startswith("--data.batch_size")]
    single = run(args, tmp_path / "single", devices=1, batch_size=16)
    ddp = run(args, tmp_path / "ddp", devices=2, batch_size=8)
    a = BertForSequenceClassification.from_pretrained(tmp_path / "single" / "export")
    b = BertForSequenceClassification.from_pretrained(tmp_path / "ddp" / "export")  # rank 0 exported
    diffs = {name: (p - q).abs().max().item() for (name, p), q in zip(a.named_parameters(), b.parameters())}
    assert single["val/accuracy"] == ddp["val/accuracy"]
    assert abs(single["val/loss"] - ddp["val/loss"]) < 1e-4
    for name, diff in diffs.items():
        assert diff < 1e-4, name
