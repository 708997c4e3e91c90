"""Fixtures: tiny random BERTs, a tiny tokenizer and small labelled files, all made on the spot."""

from __future__ import annotations

import csv
import logging
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Tests never touch the network: any hub lookup fails at once instead of hanging.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "good great fine superb lovely wonderful brilliant charming moving funny "
    "bad awful dull boring poor terrible weak messy tedious bland "
    "the a movie film plot story actor scene was is and but not very quite it this"
).split()
POSITIVE, NEGATIVE = WORDS[:10], WORDS[10:20]
FILLER = WORDS[20:]


def make_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz.,!"]
    # transformers 5 ignores vocab_file=...; the vocabulary goes in as a dict
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer.convert_tokens_to_ids(["good", "movie"]) == [5, vocab.index("movie")], (
        "the tiny tokenizer lost its vocabulary"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_config(vocab_size: int, num_labels: int = 2, layers: int = 2, hidden: int = 32):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        num_labels=num_labels,
    )


def sentence(label: int, rng: random.Random) -> str:
    cue = rng.choice(POSITIVE if label == 1 else NEGATIVE)
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
    words.insert(rng.randint(0, len(words)), cue)
    return " ".join(words)


def wikitext_lines(documents: int = 40, seed: int = 0) -> list[str]:
    """WikiText-103 raw layout: ' = Title = ' headings, paragraphs on one line, blank lines, @-@ escapes."""
    rng = random.Random(seed)
    lines = []
    for d in range(documents):
        lines += [f" = Document {d} = ", ""]
        for _ in range(rng.randint(1, 3)):
            sentences = [sentence(rng.randint(0, 1), rng).capitalize() + "." for _ in range(rng.randint(1, 6))]
            lines += [" " + " ".join(sentences).replace(" the ", " well @-@ known ", 1) + " ", ""]
        lines += [f" = = Section {d} = = ", ""]
    return lines


def zeroshot_datamodule(assets, tmp_path: Path, batch_size: int = 8):
    """The tiny task's evaluation splits with a WikiText-style out-of-domain corpus as training input."""
    from kdlight.data import OutOfDomainCorpus, TextClassificationDataModule, ZeroShotDataModule

    corpus = tmp_path / "wiki.txt"
    corpus.write_text("\n".join(wikitext_lines(60)) + "\n")
    d = assets["data"]
    task = TextClassificationDataModule(
        val_file=str(d / "validation.csv"), test_file=str(d / "test.csv"), label_names=["negative", "positive"]
    )
    return ZeroShotDataModule(
        task=task,
        corpus=OutOfDomainCorpus(source=str(corpus), cache_dir=str(tmp_path / "cache")),
        tokenizer=str(assets["tokenizer"]),
        max_length=32,
        batch_size=batch_size,
    )


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def sentiment_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    labels = [i % 2 for i in range(n)]
    return [{"text": sentence(y, rng), "label": "positive" if y else "negative"} for y in labels]


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A tiny tokenizer, a bare tiny encoder, a 'fine-tuned' tiny teacher and sentiment CSVs."""
    from transformers import BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("kdlight_assets")
    tokenizer = make_tokenizer(root / "tokenizer")
    encoder_dir, teacher_dir = root / "encoder", root / "teacher"
    BertModel(tiny_config(len(tokenizer), layers=4)).save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    BertForSequenceClassification(tiny_config(len(tokenizer), layers=4)).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    data = root / "data"
    write_csv(data / "train.csv", sentiment_rows(96, seed=1))
    write_csv(data / "validation.csv", sentiment_rows(32, seed=2))
    write_csv(data / "test.csv", sentiment_rows(32, seed=3))
    return {"root": root, "tokenizer": root / "tokenizer", "encoder": encoder_dir, "teacher": teacher_dir, "data": data}


def generator_config(assets, **settings) -> dict:
    """A ``generator:`` argument: the tiny encoder as the masked LM, with ``settings``."""
    return {"class_path": "AdversarialGenerator", "init_args": {"network": str(assets["encoder"]), **settings}}


def generator_step_gains(module, trainer, datamodule) -> list[float]:
    """The change of the soft (Gumbel-softmax) teacher-student divergence that each generator step of
    ``trainer.fit(module, datamodule)`` makes on its own batch and noise: measured before and after the update,
    dropout off (so the update's gradient and the measurement see the same function). Gradient ascent raises it."""
    from lightning import Callback

    from kdlight.callbacks_zeroshot import evaluating
    from kdlight.components.generator import NOISE_KEYS

    class SoftDivergence(Callback):
        def __init__(self):
            self.gains, self.before = [], None

        def measure(self, module, batch) -> float:
            with evaluating(module.generator.network, module.student):
                divergence = module.generator.divergence(module.teacher, module.student, batch, module.kd_loss, False)
            return float(divergence[0])

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if NOISE_KEYS not in batch:
                module.generator.plan(batch, module.batch_count(), module.rewrite_rate())
            self.before = self.measure(module, batch) if module.is_generator_step() else None

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if self.before is not None:
                self.gains.append(self.measure(module, batch) - self.before)

    for network in (module.generator.network, module.student, module.teacher):
        for layer in network.modules():
            if isinstance(layer, torch.nn.Dropout):
                layer.p = 0.0
    probe = SoftDivergence()
    trainer.callbacks.append(probe)
    trainer.fit(module, datamodule=datamodule)
    return probe.gains


def data_args(assets, **overrides) -> list[str]:
    """CLI arguments for the tiny sentiment task (TextClassificationDataModule)."""
    d = assets["data"]
    args = {
        "--data": "TextClassificationDataModule",
        "--data.train_file": d / "train.csv",
        "--data.val_file": d / "validation.csv",
        "--data.test_file": d / "test.csv",
        "--data.batch_size": 16,
        "--data.max_length": 32,
    }
    args.update(overrides)
    return [f"{k}={v}" for k, v in args.items()]


def trainer_args(root, **overrides) -> list[str]:
    args = {
        "--trainer.accelerator": "cpu",
        "--trainer.devices": 1,
        "--trainer.default_root_dir": root,
        "--trainer.enable_progress_bar": "false",
        "--trainer.enable_model_summary": "false",
        "--trainer.logger": "false",
        "--trainer.log_every_n_steps": 1,
        "--seed_everything": 0,
    }
    args.update(overrides)
    return [f"{k}={v}" for k, v in args.items()]


def expect_user_error(args: list[str], capsys, match: str, export_dir: Path | None = None) -> str:
    """Run ``kdlight <args>`` in-process and check it fails the way a user should see it.

    Exit code 2, no traceback, exactly one ``kdlight: error:`` line on stderr matching ``match``
    (a regex), and nothing written to ``export_dir``. Returns that line.
    """
    import re

    from kdlight.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("kdlight: error:")]
    assert len(lines) == 1, err
    assert re.search(match, lines[0]), lines[0]
    if export_dir is not None:
        assert not Path(export_dir).exists() or not any(Path(export_dir).iterdir()), f"{export_dir} was written"
    return lines[0]


# One torch thread per core for each xdist worker: with the default (a thread per core in every worker), two
# workers, or a worker beside a console-script subprocess, oversubscribe the cores and small ops wait on
# descheduled threads.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


# ------------------------------------------------------------ the installed console script, in a subprocess
KDLIGHT = shutil.which("kdlight")
# A callback a user could write: sends a signal to its own process after a given optimiser step, so that a test
# stops a run at a known point instead of racing a timer (``--trainer.callbacks+=signal_at.SignalAt``).
SIGNAL_AT = """
import os, signal
from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    def __init__(self, step: int, sig: str = "SIGINT") -> None:
        self.step, self.sig = step, sig

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.sig))
"""


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def kdlight_script(*args, cwd: Path, check: bool = True, umask: int | None = None) -> subprocess.CompletedProcess:
    """The installed ``kdlight`` console script run with ``args`` from ``cwd``; with ``check``, a non-zero exit
    fails the test with the end of the output."""
    proc = subprocess.run(
        [KDLIGHT, *map(str, args)],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )
    if check and proc.returncode != 0:
        output = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        raise AssertionError(f"kdlight {' '.join(map(str, args))} exited {proc.returncode}:\n{output}")
    return proc


@pytest.fixture
def kdlight_here(monkeypatch, capfd):
    """The console script's entry point called in this process from ``cwd``, returning what
    :func:`kdlight_script` returns (exit code, stdout, stderr), without a process start-up (~6 s of imports).
    For the variants of a case whose first form runs the installed script in a subprocess."""

    def run(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
        from kdlight.cli import main

        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["kdlight"])
        monkeypatch.setattr(sys, "path", list(sys.path))  # main() makes the working directory importable
        # Lightning's log handlers keep the stream that was sys.stderr when they were made (an earlier test's
        # capture, closed by now); a log line would become "--- Logging error ---" and a traceback
        loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        for handler in (h for logger in loggers for h in getattr(logger, "handlers", ())):
            if type(handler) is logging.StreamHandler:
                monkeypatch.setattr(handler, "stream", sys.stderr)
        capfd.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        out, err = capfd.readouterr()
        proc = subprocess.CompletedProcess(["kdlight", *map(str, args)], code, out, err)
        if check and code != 0:
            raise AssertionError(f"kdlight {' '.join(map(str, args))} exited {code}:\n{out[-3000:]}\n{err[-3000:]}")
        return proc

    return run


def tiny_task_data(assets, **overrides) -> dict:
    """A recipe's ``data:`` section for the tiny sentiment task (TextClassificationDataModule)."""
    d = assets["data"]
    files = {f"{key}_file": str(d / f"{split}.csv") for key, split in (("train", "train"), ("val", "validation"))}
    init = {**files, "test_file": str(d / "test.csv"), "batch_size": 16, "max_length": 32, **overrides}
    return {"class_path": "TextClassificationDataModule", "init_args": init}


def write_kd_recipe(folder: Path, assets, **trainer) -> Path:
    """``folder/kd.yaml``: VanillaKD on the tiny task with the user's defaults (loggers, checkpoints, progress bar)
    and ``trainer``'s settings, and ``folder/signal_at.py`` (:data:`SIGNAL_AT`)."""
    import yaml

    recipe = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "log_every_n_steps": 1, **trainer},
        "model": {"class_path": "VanillaKD", "init_args": {"teacher": str(assets["teacher"]), "learning_rate": 1e-3}},
        "data": tiny_task_data(assets),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kd.yaml").write_text(yaml.safe_dump(recipe))
    (folder / "signal_at.py").write_text(SIGNAL_AT)
    return folder
