"""Bad input on the model side: one clear line, exit 2, nothing exported, and no checkpoint ever runs code.

The table runs ``kdlight`` in-process through :func:`conftest.expect_user_error`. Runs that should have
failed would train one step and export, so "nothing in the export folder" is a real check here.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification, BertTokenizerFast

import kdlight.cli  # noqa: F401  (imported before any capsys test: Lightning's log handler binds the stderr it finds)
from conftest import WORDS, data_args, expect_user_error, trainer_args
from kdlight.errors import KDLightError
from kdlight.models.hf import HF_CONFIGS_KEY, load_classifier

KDLIGHT = Path(__file__).resolve().parents[1] / "kdlight"


class Payload:
    """Unpickling this creates ``marker``: the stand-in for code a crafted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def save_named_teacher(source: Path, folder: Path, names: list[str]) -> Path:
    """The tiny teacher's weights with ``id2label`` set to ``names`` (tokenizer copied along)."""
    model = BertForSequenceClassification.from_pretrained(source)
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    model.save_pretrained(folder)
    BertTokenizerFast.from_pretrained(source).save_pretrained(folder)
    return folder


def save_kdlight_checkpoint(model, path: Path, tokenizer: str, prefix: str = "model") -> Path:
    """A checkpoint shaped like the ones kdlight writes (what load_from_checkpoint reads)."""
    torch.save(
        {
            "state_dict": {f"{prefix}.{k}": v for k, v in model.state_dict().items()},
            HF_CONFIGS_KEY: {prefix: model.config.to_dict()},
            "kdlight_export_prefix": prefix,
            "hyper_parameters": {"tokenizer": tokenizer},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def files(assets, tmp_path_factory):
    """Teachers with real label names, a shuffled tokenizer, and checkpoints that are not kdlight's."""
    root = tmp_path_factory.mktemp("model_errors")
    teacher = assets["teacher"]
    out = {"teacher": teacher, "root": root, "missing_abs": root / "nowhere" / "export"}
    out["reversed"] = save_named_teacher(teacher, root / "reversed", ["positive", "negative"])
    out["other_names"] = save_named_teacher(teacher, root / "other_names", ["good", "bad"])
    # same size as the teacher's vocabulary, the words in another order: only token ids tell them apart
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *reversed(WORDS), *"abcdefghijklmnopqrstuvwxyz.,!"]
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True).save_pretrained(root / "shuffled")
    out["shuffled"] = root / "shuffled"
    out["teacher_ckpt"] = save_kdlight_checkpoint(
        BertForSequenceClassification.from_pretrained(teacher), root / "teacher.ckpt", str(teacher)
    )
    torch.save({"weights": torch.zeros(2)}, root / "foreign.ckpt")
    out["foreign"] = root / "foreign.ckpt"
    return out


def evil_checkpoints(folder: Path) -> tuple[Path, Path, Path]:
    """A zip-format torch checkpoint and a raw pickle, both creating ``marker`` when unpickled unsafely."""
    marker = folder / "payload_ran"
    zipped, raw = folder / "evil.ckpt", folder / "evil_raw.ckpt"
    torch.save(
        {
            "state_dict": {},
            HF_CONFIGS_KEY: {"model": Payload(marker)},
            "hyper_parameters": {"tokenizer": Payload(marker)},
        },
        zipped,
    )
    raw.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    assert not marker.exists()
    return zipped, raw, marker


def noisy_data(assets, **extra) -> list[str]:
    d = assets["data"]
    args = {
        "--data": "NoisyLabelDataModule",
        "--data.datamodule": "TextClassificationDataModule",
        "--data.datamodule.train_file": d / "train.csv",
        "--data.datamodule.val_file": d / "validation.csv",
        "--data.datamodule.test_file": d / "test.csv",
        "--data.noise_rate": 0.2,
        "--data.clean_val_size": 16,
        "--data.max_length": 32,
        "--data.batch_size": 16,
        **extra,
    }
    return [f"{k}={v}" for k, v in args.items()]


CODE = "contains objects kdlight does not write \\(.*open.*\\); it may run code, refusing to load"

# (id, subcommand, model class, model arguments, other arguments, expected error)
CASES = [
    # defect 6: checkpoints that would run code, wherever a checkpoint is read
    ("teacher-ckpt-runs-code", "fit", "VanillaKD", {"teacher": "{evil}"}, [], CODE),
    (
        "teacher-raw-pickle-runs-code",
        "fit",
        "VanillaKD",
        {"teacher": "{evil_raw}"},
        [],
        "evil_raw.ckpt.*may run code, refusing",
    ),
    ("fit-ckpt-path-runs-code", "fit", "VanillaKD", {}, ["--ckpt_path={evil}"], CODE),
    ("test-ckpt-path-runs-code", "test", "VanillaKD", {}, ["--ckpt_path={evil}"], CODE),
    (
        "student-ckpt-runs-code",
        "fit",
        "VanillaKD",
        {"student": "PretrainedStudent", "student.name_or_path": "{evil}"},
        [],
        CODE,
    ),
    ("finetune-ckpt-runs-code", "fit", "TeacherFineTuning", {"model": "{evil}"}, [], CODE),
    (
        "reference-model-runs-code",
        "fit",
        "VanillaKD",
        {},
        ["noisy", "--data.noise_type=instance", "--data.reference_model={evil}"],
        CODE,
    ),
    ("weights-only-false", "fit", "VanillaKD", {}, ["--weights_only=false"], "weights_only=false is not supported"),
    (
        "teacher-ckpt-missing",
        "fit",
        "VanillaKD",
        {"teacher": "{root}/nowhere/teacher.ckpt"},
        [],
        "checkpoint not found: '.*nowhere/teacher.ckpt'",
    ),
    (
        "test-ckpt-path-missing",
        "test",
        "VanillaKD",
        {},
        ["--ckpt_path={root}/nowhere/last.ckpt"],
        "checkpoint not found: '.*nowhere/last.ckpt'",
    ),
    ("teacher-not-kdlight-ckpt", "fit", "VanillaKD", {"teacher": "{foreign}"}, [], "is not a kdlight checkpoint"),
    # defect 16: a path that looks local and does not exist fails at once, naming it
    (
        "teacher-folder-missing",
        "fit",
        "VanillaKD",
        {"teacher": "{missing_abs}"},
        [],
        "model folder not found: '.*nowhere/export'",
    ),
    (
        "teacher-relative-folder-missing",
        "fit",
        "VanillaKD",
        {"teacher": "runs/noisy/teacher/export"},
        [],
        "model folder not found: 'runs/noisy/teacher/export'",
    ),
    (
        "student-folder-missing",
        "fit",
        "VanillaKD",
        {"student": "PretrainedStudent", "student.name_or_path": "./no_student"},
        [],
        "model folder not found: './no_student'",
    ),
    # defect 7: label names that cannot be matched
    (
        "teacher-label-names-differ",
        "fit",
        "VanillaKD",
        {"teacher": "{other_names}"},
        [],
        "teacher .*other_names.* labels \\['good', 'bad'\\] but the data's are \\['negative', 'positive'\\]",
    ),
    (
        "student-label-names-differ",
        "fit",
        "VanillaKD",
        {"student": "PretrainedStudent", "student.name_or_path": "{other_names}"},
        [],
        "labels \\['good', 'bad'\\] but the data's are \\['negative', 'positive'\\]",
    ),
    # defect 8: a tokenizer of the same size with other token ids
    (
        "tokenizer-differs",
        "fit",
        "VanillaKD",
        {},
        ["--data.tokenizer={shuffled}"],
        "tokenizer mismatch: .*shuffled.*set data.init_args.tokenizer",
    ),
    (
        "teacher-ckpt-tokenizer-differs",
        "fit",
        "VanillaKD",
        {"teacher": "{teacher_ckpt}"},
        ["--data.tokenizer={shuffled}"],
        "tokenizer mismatch: .*the teacher .*teacher.ckpt' was saved with \\(\\d+ of \\d+ token ids differ\\)",
    ),
    (
        "finetune-tokenizer-differs",
        "fit",
        "TeacherFineTuning",
        {"model": "{teacher}"},
        ["--data.tokenizer={shuffled}"],
        "tokenizer mismatch",
    ),
    # defect 13: arguments out of range
    ("temperature-zero", "fit", "VanillaKD", {"temperature": 0}, [], "temperature must be > 0, got 0"),
    (
        "temperature-negative-alm",
        "fit",
        "AdaptiveLossMixingKD",
        {"temperature": -1},
        ["noisy"],
        "temperature must be > 0, got -1",
    ),
    ("alpha-above-one", "fit", "VanillaKD", {"alpha": 1.5}, [], "alpha must be in \\[0, 1\\], got 1.5"),
    (
        "learning-rate-negative",
        "fit",
        "VanillaKD",
        {"learning_rate": -1e-3},
        [],
        "learning_rate must be >= 0, got -0.001",
    ),
    (
        "weight-decay-negative",
        "fit",
        "TeacherFineTuning",
        {"model": "{teacher}", "weight_decay": -0.1},
        [],
        "weight_decay must be >= 0",
    ),
    (
        "init-lambda-one",
        "fit",
        "AdaptiveLossMixingKD",
        {"meta": "MetaLearner", "meta.init_lambda": 1.0},
        ["noisy"],
        "init_lambda must be in \\(0, 1\\)",
    ),
    (
        "meta-learning-rate-negative",
        "fit",
        "AdaptiveLossMixingKD",
        {"meta": "MetaLearner", "meta.meta_learning_rate": -0.5},
        ["noisy"],
        "meta_learning_rate must be >= 0",
    ),
    (
        "lookahead-lr-negative",
        "fit",
        "AdaptiveLossMixingKD",
        {"meta": "MetaLearner", "meta.lookahead_lr": -1.0},
        ["noisy"],
        "lookahead_lr must be >= 0",
    ),
    (
        "generator-learning-rate-negative",
        "fit",
        "ZeroShotAdversarialKD",
        {"generator.learning_rate": -1e-6},
        [],
        "generator learning_rate must be >= 0",
    ),
    (
        "max-length-above-positions",
        "fit",
        "VanillaKD",
        {},
        ["--data.max_length=100"],
        "max_length=100 is above the 64 position embeddings of the teacher .*; "
        "set data.init_args.max_length to 64 or less",
    ),
    (
        "finetune-max-length-above-positions",
        "fit",
        "TeacherFineTuning",
        {"model": "{teacher}"},
        ["--data.max_length=65"],
        "max_length=65 is above the 64 position embeddings of the model",
    ),
    (
        "student-deeper-than-teacher",
        "fit",
        "VanillaKD",
        {"student": "TruncatedTeacher", "student.num_layers": 5},
        [],
        "cannot keep 5 layers of a 4-layer teacher",
    ),
    (
        "fresh-student-heads",
        "fit",
        "VanillaKD",
        {"student": "FreshStudent", "student.hidden_size": 30, "student.num_attention_heads": 4},
        [],
        "hidden_size=30 must be divisible by num_attention_heads=4",
    ),
    (
        "fresh-student-no-layers",
        "fit",
        "VanillaKD",
        {"student": "FreshStudent", "student.num_hidden_layers": 0},
        [],
        "num_hidden_layers must be >= 1",
    ),
]


@pytest.mark.parametrize("subcommand, model, model_args, extra, match", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_model_input_is_one_clear_line(
    assets, files, tmp_path, capsys, subcommand, model, model_args, extra, match
):
    evil, evil_raw, marker = evil_checkpoints(tmp_path)
    paths = {k: str(v) for k, v in files.items()} | {"evil": str(evil), "evil_raw": str(evil_raw)}
    base_model = (
        {"model": str(files["teacher"])} if model == "TeacherFineTuning" else {"teacher": str(files["teacher"])}
    )
    if model == "ZeroShotAdversarialKD":
        # the tiny encoder as the generator's network: nothing here may reach for a hub model
        base_model |= {"generator": "AdversarialGenerator", "generator.network": str(assets["encoder"])}
    arguments = {**base_model, **model_args}
    export = tmp_path / "export"
    data = noisy_data(assets) if "noisy" in extra else data_args(assets)
    args = [
        subcommand,
        f"--model={model}",
        *(f"--model.{k}={v}" for k, v in arguments.items()),
        *data,
        *(a for a in extra if a != "noisy"),
        f"--model.export_dir={export}",
        *trainer_args(
            tmp_path, **{"--trainer.max_steps": 1, "--trainer.limit_val_batches": 1, "--trainer.limit_test_batches": 1}
        ),
    ]
    expect_user_error([a.format(**paths) for a in args], capsys, match, export)
    assert not marker.exists(), "a checkpoint ran code"


def test_at_least_twelve_kinds_of_bad_model_input():
    assert len({c[0] for c in CASES}) == len(CASES) >= 12


def test_trust_remote_code_is_never_enabled():
    for path in KDLIGHT.rglob("*.py"):
        assert not re.search(r"trust_remote_code\s*=\s*True", path.read_text()), path


# ------------------------------------------------------------------------ safe loading, unit level
def test_load_checkpoint_refuses_code_and_reads_kdlight_checkpoints(assets, tmp_path):
    from kdlight.checkpoints import load_checkpoint

    evil, evil_raw, marker = evil_checkpoints(tmp_path)
    for path in (evil, evil_raw):
        with pytest.raises(KDLightError, match="may run code, refusing to load"):
            load_checkpoint(path)
    assert not marker.exists()
    model = BertForSequenceClassification.from_pretrained(assets["teacher"])
    checkpoint = load_checkpoint(save_kdlight_checkpoint(model, tmp_path / "ok.ckpt", str(assets["teacher"])))
    assert torch.equal(checkpoint["state_dict"]["model.classifier.weight"], model.classifier.weight)
    (tmp_path / "garbage.ckpt").write_bytes(b"garbage")
    with pytest.raises(KDLightError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / "garbage.ckpt")


def test_kdlight_writes_only_plain_hyper_parameters(assets, tmp_path):
    """A module built from Python with a StudentSpec object and a Path checkpoints as plain types,
    loadable by torch's own weights_only loader with no allow-list at all."""
    from lightning import Trainer

    from kdlight.data import TextClassificationDataModule
    from kdlight.models import TruncatedTeacher
    from kdlight.modules import VanillaKD

    d = assets["data"]
    dm = TextClassificationDataModule(
        train_file=str(d / "train.csv"),
        val_file=str(d / "validation.csv"),
        tokenizer=str(assets["teacher"]),
        max_length=32,
        batch_size=16,
    )
    model = VanillaKD(teacher=assets["teacher"], student=TruncatedTeacher(1), task=dm.task)
    assert model.hparams["student"] == {
        "class_path": "kdlight.models.students.TruncatedTeacher",
        "init_args": {"num_layers": 1, "layers": None},
    }
    assert model.hparams["teacher"] == str(assets["teacher"])
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "plain.ckpt")) == []
    # and a module rebuilt from those hyper-parameters gets the same student spec back
    rebuilt = VanillaKD(
        **{k: v for k, v in torch.load(tmp_path / "plain.ckpt", weights_only=True)["hyper_parameters"].items()}
    )
    assert rebuilt.student.config.num_hidden_layers == 1


# --------------------------------------------------------------------------- label order (defect 7)
def test_teacher_labels_are_matched_by_name(assets, files, tmp_path, caplog):
    """A teacher saved as [positive, negative] used on [negative, positive] data predicts the same
    label names as before loading: its head rows are permuted, and it says so."""
    raw = BertForSequenceClassification.from_pretrained(files["reversed"]).eval()
    inputs = {
        "input_ids": torch.tensor([[2, 5, 30, 3], [2, 15, 31, 3]]),
        "attention_mask": torch.ones(2, 4, dtype=torch.long),
    }
    with torch.no_grad():
        before = raw(**inputs).logits  # column 0 is "positive", column 1 "negative"
    names = ["negative", "positive"]
    sources = {
        "folder": str(files["reversed"]),
        "checkpoint": str(save_kdlight_checkpoint(raw, tmp_path / "reversed.ckpt", str(files["reversed"]))),
    }
    for kind, source in sources.items():
        caplog.clear()
        with caplog.at_level("INFO"):
            loaded = load_classifier(source, 2, names, require_head=True, role="teacher").eval()
        with torch.no_grad():
            after = loaded(**inputs).logits
        assert torch.allclose(after[:, 1], before[:, 0]) and torch.allclose(after[:, 0], before[:, 1]), kind
        assert loaded.config.id2label == {0: "negative", 1: "positive"}
        assert (
            "teacher" in caplog.text and "reordered to the data's label order ['negative', 'positive']" in caplog.text
        ), kind
    # a teacher without names (LABEL_0, LABEL_1) is used by position, untouched
    plain = BertForSequenceClassification.from_pretrained(files["teacher"])
    assert torch.equal(load_classifier(str(files["teacher"]), 2, names).classifier.weight, plain.classifier.weight)
    # names that differ only in case match (hub teachers often say NEGATIVE/POSITIVE)
    upper = save_named_teacher(files["teacher"], tmp_path / "upper", ["POSITIVE", "NEGATIVE"])
    assert torch.equal(load_classifier(str(upper), 2, names).classifier.weight, raw.classifier.weight.flip(0))
    with pytest.raises(
        KDLightError, match="labels \\['good', 'bad'\\] but the data's are \\['negative', 'positive'\\]"
    ):
        load_classifier(str(files["other_names"]), 2, names)


def test_fine_tuning_continues_a_named_model_in_the_data_order(assets, files, tmp_path):
    from conftest import data_args as d_args
    from kdlight.cli import cli

    runner = cli(
        ["--model=TeacherFineTuning", f"--model.model={files['reversed']}", *d_args(assets), *trainer_args(tmp_path)],
        run=False,
    )
    raw = BertForSequenceClassification.from_pretrained(files["reversed"])
    assert torch.equal(runner.model.model.classifier.weight, raw.classifier.weight.flip(0))
    assert runner.model.model.config.id2label == {0: "negative", 1: "positive"}


# ----------------------------------------------------------------------------- tokenizer (defect 8)
def test_same_tokenizer_compares_vocabulary_and_special_ids(assets, files):
    from kdlight.models.hf import tokenizer_difference

    ours = BertTokenizerFast.from_pretrained(assets["tokenizer"])
    assert tokenizer_difference(ours, BertTokenizerFast.from_pretrained(assets["teacher"])) is None
    shuffled = BertTokenizerFast.from_pretrained(files["shuffled"])
    assert len(shuffled) == len(ours)
    assert "token ids differ" in tokenizer_difference(shuffled, ours)
    other_pad = BertTokenizerFast.from_pretrained(assets["tokenizer"], pad_token="[MASK]")
    assert "pad" in tokenizer_difference(other_pad, ours)


# -------------------------------------------------------------------------- no hub waits (defect 16)
LOCAL_LOOKING = ["/abs/missing/model", "./missing", "../missing", "~/missing_model", "runs/a/b/export", "teacher.ckpt"]


@pytest.mark.parametrize("name", [*LOCAL_LOOKING, "org/name", "bert-base-uncased"])
def test_missing_models_fail_without_any_hub_call(name, monkeypatch):
    """Local-looking paths never reach the hub; hub names do not either while the hub is unreachable
    (the case that used to wait ~30 s on retries) or offline."""
    import socket

    import huggingface_hub
    import huggingface_hub.constants
    import transformers.utils.hub

    from kdlight import assets
    from kdlight.models.hf import load_config

    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the hub was called")

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for module in (huggingface_hub, huggingface_hub.file_download, transformers.utils.hub):
        for name_ in ("hf_hub_download", "snapshot_download"):
            if hasattr(module, name_):
                monkeypatch.setattr(module, name_, forbidden)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    clear_probe = getattr(getattr(assets, "hub_reachable", None), "cache_clear", lambda: None)
    clear_probe()  # the probe's answer is cached per process
    expected = "the hub .* cannot be reached"
    if name in LOCAL_LOOKING:
        expected = "checkpoint not found" if name.endswith(".ckpt") else "model folder not found"
    with pytest.raises(KDLightError) as info:
        load_config(name)
    assert calls == [], f"the hub was asked for {name!r}"
    assert re.search(expected, str(info.value)) and repr(name) in str(info.value), info.value
    # offline (HF_HUB_OFFLINE=1), a hub name not in the local cache fails at once as well
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    if name not in LOCAL_LOOKING:
        with pytest.raises(KDLightError, match="HF_HUB_OFFLINE"):
            load_config(name)
    assert calls == []
    clear_probe()
