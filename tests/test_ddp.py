"""DDP on CPU (gloo, 2 processes) gives the same validation metrics and weights as 1 process.

Same global batch (2 x 8 vs 1 x 16) and the same seeded epoch permutation (the datamodules'
sampler: rank r of N takes every N-th example of it, so the two ranks of one DDP step see the 16
examples one single-process step sees), dropout off. DDP
averages the two ranks' gradients, which for a mean loss over equal halves is the single
process's gradient; what differs is float summation order and per-rank padding.
Tolerance: identical accuracy, validation loss within 1e-4, weights within 1e-4 (SGD; see below).

Covered: TeacherFineTuning, VanillaKD, ZeroShotAdversarialKD (its per-example seeded masks and
Gumbel noise make the adversarial inputs independent of the process count; the generator's
gradients are averaged by hand) and AdaptiveLossMixingKD (the look-ahead uses the ranks' mean
gradient and mean clean score, so the lambda table moves as on one process).
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification

from conftest import data_args, tiny_config
from kdlight.checkpoints import load_checkpoint
from kdlight.cli import cli

pytestmark = pytest.mark.xdist_group("ddp")  # one worker runs the module's single DDP launch
DDP_TIMEOUT_S = 480  # all modules' fits in one launch


def read_metrics(root: Path) -> dict[str, float]:
    rows = list(csv.DictReader(next(root.rglob("metrics.csv")).open()))
    values = {}
    for row in rows:
        values.update({k: float(v) for k, v in row.items() if v not in ("", None) and k.startswith("val")})
    return values


def common_args(root: Path, devices: int, batch_size: int) -> list[str]:
    args = [
        f"--data.batch_size={batch_size}",
        "--trainer.accelerator=cpu",
        f"--trainer.devices={devices}",
        f"--trainer.default_root_dir={root}",
        "--trainer.max_steps=4",
        "--trainer.val_check_interval=4",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=CSVLogger",
        f"--trainer.logger.save_dir={root}",
        "--seed_everything=0",  # no export_dir: the default <log_dir>/export is found on every rank
    ]
    return args + (["--trainer.strategy=ddp"] if devices > 1 else [])


# Every module's DDP fit runs in one pair of processes: Lightning's launcher starts rank 1 at the first fit
# (re-running this script), and the later fits find LOCAL_RANK set and reuse both processes and the process
# group, as a user's script with several fits does. One start-up (~6 s a process) instead of one per module.
DDP_SCRIPT = """
import json, sys
from kdlight.cli import cli

for args in json.load(open(sys.argv[1])):
    cli(["fit", *args])
"""


def run_ddp(fits: dict[str, list[str]], root: Path) -> None:
    (root / "fits.json").write_text(json.dumps(list(fits.values())))
    (root / "ddp_fits.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(root / "ddp_fits.py"), str(root / "fits.json")],
        capture_output=True,
        text=True,
        timeout=DDP_TIMEOUT_S,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def run_single(args: list[str], root: Path) -> None:
    """The reference run in this process (a subprocess would add its start-up)."""
    with torch.random.fork_rng():
        cli(["fit", *args])


@pytest.fixture(scope="module")
def dropout_free_teacher(assets, tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp_teacher")
    from transformers import AutoTokenizer

    config = tiny_config(len(AutoTokenizer.from_pretrained(assets["tokenizer"])), layers=2)
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


def corpus_args(assets, root: Path) -> list[str]:
    from conftest import wikitext_lines

    corpus = root / "wiki.txt"
    corpus.write_text("\n".join(wikitext_lines(60)) + "\n")
    d = assets["data"]
    return [
        "--data=ZeroShotDataModule",
        "--data.task=TextClassificationDataModule",
        f"--data.task.val_file={d / 'validation.csv'}",
        f"--data.task.test_file={d / 'test.csv'}",
        "--data.task.label_names=[negative, positive]",
        f"--data.corpus.source={corpus}",
        f"--data.corpus.cache_dir={root / 'corpus_cache'}",
        "--data.max_length=32",
    ]


def noisy_args(assets) -> list[str]:
    d = assets["data"]
    return [
        "--data=NoisyLabelDataModule",
        "--data.datamodule=TextClassificationDataModule",
        f"--data.datamodule.train_file={d / 'train.csv'}",
        f"--data.datamodule.val_file={d / 'validation.csv'}",
        f"--data.datamodule.test_file={d / 'test.csv'}",
        "--data.noise_rate=0.3",
        "--data.clean_val_size=32",
        "--data.max_length=32",
    ]


def student(layers: int = 1) -> list[str]:
    return ["--model.student=TruncatedTeacher", f"--model.student.num_layers={layers}"]


# module -> (model + data arguments, what the comparison covers)
MODULES = {
    "teacher": lambda t, assets, root: ["--model=TeacherFineTuning", f"--model.model={t}", *SGD, *data_args(assets)],
    "vanilla_kd": lambda t, assets, root: [
        "--model=VanillaKD",
        f"--model.teacher={t}",
        *student(),
        "--model.temperature=2",
        *SGD,
        *data_args(assets),
    ],
    # two generator steps then two student steps; both optimisers plain SGD (see above)
    "zeroshot": lambda t, assets, root: [
        "--model=ZeroShotAdversarialKD",
        f"--model.teacher={t}",
        "--model.generator=AdversarialGenerator",
        f"--model.generator.network={t}",
        "--model.generator.optimizer=torch.optim.SGD",
        "--model.generator.optimizer.lr=0.5",
        *student(),
        "--model.generator_steps=2",
        "--model.student_steps=2",
        *SGD,
        *corpus_args(assets, root),
    ],
    "alm_kd": lambda t, assets, root: [
        "--model=AdaptiveLossMixingKD",
        f"--model.teacher={t}",
        *student(),
        *SGD,
        *noisy_args(assets),
    ],
    # the centred meta-gradient needs the global batch's mean row on every rank
    "alm_kd_centred": lambda t, assets, root: [
        *MODULES["alm_kd"](t, assets, root),
        "--model.meta=MetaLearner",
        "--model.meta.center_meta_grad=true",
    ],
    # the official meta pass: G summed and dloss/dG averaged across ranks, rows updated per rank then summed
    "alm_official": lambda t, assets, root: [
        *MODULES["alm_kd"](t, assets, root),
        "--model.meta=OfficialMetaLearner",
        "--model.meta.warm_epoch=0",
        "--model.meta.select_every=1",
        "--model.meta.grad_fit=2",
    ],
}


# max_steps counts student updates in every module: 2 of zero-shot's are 4 batches (2 generator + 2 student steps).
# KD between two random tiny models on out-of-domain text has gradients near 1e-5: at lr 0.5 the student moved
# 6e-6, so equal weights proved nothing; at lr 200 it moves by about 1e-3.
OVERRIDES = {"zeroshot": ("--trainer.max_steps=2", "--model.optimizer.lr=200")}


def module_args(module: str, teacher: Path, assets, root: Path, devices: int, batch_size: int) -> list[str]:
    args = [a for a in MODULES[module](teacher, assets, root) if not a.startswith("--data.batch_size")]
    return [*args, *common_args(root / module, devices, batch_size), *OVERRIDES.get(module, ())]


@pytest.fixture(scope="module")
def ddp_roots(assets, dropout_free_teacher, tmp_path_factory) -> dict[str, Path]:
    """Each module fitted under DDP (2 processes x 8 examples), all in one launch; its run folder by module."""
    root = tmp_path_factory.mktemp("ddp")
    run_ddp({m: module_args(m, dropout_free_teacher, assets, root, devices=2, batch_size=8) for m in MODULES}, root)
    return {m: root / m for m in MODULES}


@pytest.mark.slow  # two processes for all cases, then one fit a case in this process
@pytest.mark.parametrize("module", sorted(MODULES))
def test_ddp_matches_single_process(assets, dropout_free_teacher, ddp_roots, tmp_path, module):
    run_single(module_args(module, dropout_free_teacher, assets, tmp_path, devices=1, batch_size=16), tmp_path)
    roots = {"single": tmp_path / module, "ddp": ddp_roots[module]}
    single, ddp = (read_metrics(roots[name]) for name in ("single", "ddp"))
    a, b = (
        BertForSequenceClassification.from_pretrained(next(roots[name].rglob("export/config.json")).parent)
        for name in ("single", "ddp")
    )  # under DDP rank 0 exported
    start = BertForSequenceClassification.from_pretrained(dropout_free_teacher).classifier.weight
    moved = (a.classifier.weight - start).abs().max().item()
    assert moved > 1e-3, f"the fit barely moved the student ({moved:.1e}): equal weights would prove nothing"
    pairs = zip(a.named_parameters(), b.parameters(), strict=True)
    diffs = {name: (p - q).abs().max().item() for (name, p), q in pairs}
    assert single["val/accuracy"] == ddp["val/accuracy"]
    assert abs(single["val/loss"] - ddp["val/loss"]) < 1e-4
    for name, diff in diffs.items():
        assert diff < 1e-4, name
    # what lives outside DDP's buckets and is synchronised by hand: the generator, the lambda table
    one, two = (load_checkpoint(next(roots[name].rglob("last.ckpt"))) for name in ("single", "ddp"))
    if module == "zeroshot":
        assert one["state_dict"]["progress"].tolist() == two["state_dict"]["progress"].tolist() == [4, 2, 2, 0]
        generator = {k: v for k, v in one["state_dict"].items() if k.startswith("generator.")}  # network and step count
        assert generator
        for key, value in generator.items():
            assert (value.float() - two["state_dict"][key].float()).abs().max() < 1e-4, key
    if module.startswith("alm"):
        key = "lam" if module == "alm_official" else "logits"
        table, ddp_table = one["state_dict"][f"meta.mixer.{key}"], two["state_dict"][f"meta.mixer.{key}"]
        assert (table - table[0]).abs().max() > 1e-3  # the meta steps moved some rows ...
        assert (table - ddp_table).abs().max() < 1e-4  # ... exactly as one process does


def test_ddp_reducer_never_owns_the_zero_shot_generator(assets, monkeypatch):
    """keep_out_of_ddp records the names DDP looks up: Lightning's DDPStrategy wraps the LightningModule
    itself, and DDP asks each submodule for its own parameter names, tied ones included (the MLM
    decoder is the word-embedding matrix under a second name)."""
    import socket

    import torch.distributed as dist
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.strategies import DDPStrategy

    from kdlight.models.students import TruncatedTeacher
    from kdlight.modules import ZeroShotAdversarialKD

    module = ZeroShotAdversarialKD(
        teacher=str(assets["teacher"]),
        generator=str(assets["encoder"]),
        student=TruncatedTeacher(1),
        tokenizer=str(assets["tokenizer"]),
        label_names=["negative", "positive"],
    )
    network = module.generator.network
    assert network.get_output_embeddings().weight is network.get_input_embeddings().weight  # the tied case
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        ddp = DDPStrategy(accelerator=CPUAccelerator(), parallel_devices=[torch.device("cpu")])._setup_model(module)
        assert ddp.module is module  # the names are relative to the LightningModule
        reduced = {id(p) for p in ddp._build_params_for_reducer()[0]}
    finally:
        dist.destroy_process_group()
    assert not reduced & {id(p) for p in module.generator.parameters()}
    assert reduced == {id(p) for p in module.student.parameters()}  # the student, all of it (the teacher is frozen)
