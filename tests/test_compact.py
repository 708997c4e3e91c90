"""Compact students: layer-wise losses, LayerwiseKD, GeneralDistillation, compressed embeddings."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import FILLER, NEGATIVE, POSITIVE, data_args, trainer_args
from kdlight.cli import main
from kdlight.components.rewriting import embed_with_replacements
from kdlight.data import TaskSpec
from kdlight.errors import KDLightError
from kdlight.losses.layerwise import (
    AttentionMSE,
    EmbeddingMSE,
    HiddenMSE,
    PatientCLS,
    SelfAttentionRelations,
    resolve_layer_map,
)
from kdlight.models import FreshStudent, PretrainedStudent, TruncatedTeacher, load_classifier
from kdlight.models.compact import (
    CompressedEmbeddingStudent,
    FactorisedEmbedding,
    PrunedVocabularyEmbedding,
    fold_compressed_state,
    stock_export,
)
from kdlight.models.hf import count_parameters
from kdlight.models.layers import forward_internals
from kdlight.modules.layerwise import bind_losses

LOSSES = {
    "hidden": lambda: HiddenMSE(layers="uniform"),
    "embedding": lambda: EmbeddingMSE(),
    "attention": lambda: AttentionMSE(layers="uniform"),
    "relations": lambda: SelfAttentionRelations(num_relation_heads=4),
    "patient": lambda: PatientCLS(layers="uniform"),
}


@pytest.fixture(scope="module")
def teacher(assets):
    return load_classifier(str(assets["teacher"]), 2, require_head=True).eval()


@pytest.fixture(scope="module")
def batch(assets):
    tokenizer = AutoTokenizer.from_pretrained(assets["tokenizer"])
    encoded = tokenizer(
        ["good movie and a very fine plot", "bad film", "the story was dull but funny"],
        padding=True,
        return_tensors="pt",
    )
    return {k: v for k, v in encoded.items()}


def loss_value(loss, student, teacher, batch):
    modules, s_needs, t_needs = bind_losses([loss], student, teacher)
    with torch.no_grad():
        t_out = forward_internals(teacher, batch, t_needs)
    s_out = forward_internals(student, batch, s_needs)
    return modules[0](s_out, t_out, batch["attention_mask"])


# ------------------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("kind", LOSSES)
def test_each_loss_is_zero_for_an_identical_student_and_has_a_gradient_otherwise(kind, teacher, batch):
    twin = copy.deepcopy(teacher).eval()
    assert loss_value(LOSSES[kind](), twin, teacher, batch).item() == pytest.approx(0.0, abs=1e-7)

    student = copy.deepcopy(teacher).train()  # dropout makes its internals differ from the eval-mode teacher's
    torch.manual_seed(0)
    with torch.no_grad():
        for p in student.bert.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    value = loss_value(LOSSES[kind](), student, teacher, batch)
    assert value.item() > 0
    value.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("kind", ["hidden", "embedding", "relations", "patient"])
def test_losses_work_across_widths_and_head_counts(kind, teacher, batch):
    # teacher: 4 blocks, hidden 32, 2 heads; student: 2 blocks, hidden 24, 3 heads
    student = FreshStudent(num_hidden_layers=2, hidden_size=24, num_attention_heads=3, intermediate_size=48).build(
        teacher, 2
    )
    loss = LOSSES[kind]()
    value = loss_value(loss, student, teacher, batch)
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    assert student.bert.encoder.layer[-1].attention.self.query.weight.grad is not None or kind in ("embedding",)
    projections = [p for p in loss.parameters()]
    assert (len(projections) > 0) == (kind != "relations")  # relations need no projection
    assert all(p.grad is not None for p in projections)


def test_relations_ignore_padding(teacher, batch):
    student = (
        FreshStudent(num_hidden_layers=1, hidden_size=24, num_attention_heads=3, intermediate_size=48)
        .build(teacher, 2)
        .eval()
    )
    one = {k: v[1:2, :4] for k, v in batch.items()}  # "bad film": [CLS] bad film [SEP]
    assert one["attention_mask"].all()
    padded = {k: F.pad(v, (0, 5)) for k, v in one.items()}
    padded["attention_mask"][:, 4:] = 0
    alone = loss_value(SelfAttentionRelations(num_relation_heads=4), student, teacher, one)
    with_padding = loss_value(SelfAttentionRelations(num_relation_heads=4), student, teacher, padded)
    assert with_padding.item() == pytest.approx(alone.item(), rel=1e-3)  # tiny KLs: float noise dominates below


def test_mismatches_users_cannot_resolve_are_clear_errors(teacher):
    three_heads = FreshStudent(num_hidden_layers=2, hidden_size=24, num_attention_heads=3).build(teacher, 2)
    with pytest.raises(
        KDLightError, match="student has 3 attention heads and the teacher 2; use SelfAttentionRelations"
    ):
        AttentionMSE().bind(three_heads, teacher)
    with pytest.raises(KDLightError, match=r"layer pair \[3, 1\] is out of range: the student has blocks 0..2"):
        HiddenMSE(layers=[[3, 1]]).bind(three_heads, teacher)
    with pytest.raises(KDLightError, match=r"out of range.*blocks 1..2"):
        AttentionMSE(layers=[[0, 0]]).bind(TruncatedTeacher(2).build(teacher, 2), teacher)
    with pytest.raises(KDLightError, match="not divisible by num_relation_heads=5"):
        SelfAttentionRelations(num_relation_heads=5).bind(three_heads, teacher)
    assert resolve_layer_map("uniform", 2, 4) == [(1, 2), (2, 4)]
    assert resolve_layer_map("uniform", 4, 6) == [(1, 2), (2, 3), (3, 5), (4, 6)]
    assert resolve_layer_map("last", 2, 4) == [(2, 4)]


# -------------------------------------------------------------------------------- compressed embeddings
@pytest.fixture(scope="module")
def vocabulary_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "texts.txt"
    path.write_text("good movie\nbad plot and a dull story\nthe film was fine\n")
    return path


def test_factorised_student_starts_from_the_teachers_best_low_rank_embeddings(teacher):
    student = CompressedEmbeddingStudent(TruncatedTeacher(2), embedding_rank=8).build(teacher, 2)
    embedding = student.get_input_embeddings()
    assert isinstance(embedding, FactorisedEmbedding) and embedding.rank == 8
    source = teacher.get_input_embeddings().weight.detach().double()
    u, s, vh = torch.linalg.svd(source, full_matrices=False)
    best = (u[:, :8] * s[:8]) @ vh[:8]
    assert torch.allclose(embedding.weight.double(), best, atol=1e-5)
    vocab, hidden = source.shape
    assert count_parameters(student) == count_parameters(TruncatedTeacher(2).build(teacher, 2)) - vocab * hidden + 8 * (
        vocab + hidden
    )
    narrow = CompressedEmbeddingStudent(
        FreshStudent(num_hidden_layers=1, hidden_size=16, num_attention_heads=2), embedding_rank=4
    ).build(teacher, 2)
    assert narrow.get_input_embeddings().weight.shape == (vocab, 16)
    torch.testing.assert_close(
        narrow.get_input_embeddings().token_factors.double(), u[:, :4] * s[:4], atol=1e-5, rtol=1e-4
    )
    with pytest.raises(KDLightError, match="embedding_rank=32 must be below the student's hidden size 32"):
        CompressedEmbeddingStudent(TruncatedTeacher(2), embedding_rank=32).build(teacher, 2)


def test_factorised_students_one_hot_path_equals_its_id_path(teacher, batch):
    student = CompressedEmbeddingStudent(TruncatedTeacher(2), embedding_rank=8).build(teacher, 2).eval()
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    one_hot = F.one_hot(ids[mask], student.config.vocab_size).float()
    inputs_embeds = embed_with_replacements(student, ids, mask, one_hot)
    by_ids = student(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    by_one_hot = student(inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(by_one_hot, by_ids, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prune", [False, True], ids=["factorised", "factorised+pruned"])
def test_export_loads_without_kdlight_and_predicts_identically(prune, teacher, assets, vocabulary_file, tmp_path):
    spec = CompressedEmbeddingStudent(
        TruncatedTeacher(2), embedding_rank=8, vocabulary_files=[str(vocabulary_file)] if prune else None
    )
    student = spec.build(teacher, 2).eval()
    model, tokenizer = stock_export(student, str(assets["tokenizer"]))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded.get_input_embeddings()) is torch.nn.Embedding
    texts = vocabulary_file.read_text().splitlines()
    original = AutoTokenizer.from_pretrained(assets["tokenizer"])
    exported = AutoTokenizer.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = student(**original(texts, padding=True, return_tensors="pt")).logits
        got = reloaded(**exported(texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    if prune:
        embedding = student.get_input_embeddings()
        assert isinstance(embedding, PrunedVocabularyEmbedding)
        assert (
            len(exported)
            == len(embedding.kept_token_ids)
            < len(original)
            == reloaded.config.vocab_size + len(original) - len(exported)
        )
        assert exported.convert_ids_to_tokens(exported("awful")["input_ids"])[1] == "[UNK]"  # not in the text files
    # a kdlight checkpoint of the compressed student rebuilds as a stock model (load_from_checkpoint's path)
    stock = AutoModelForSequenceClassification.from_config(teacher.config.__class__(**student.config.to_dict()))
    stock.bert.encoder.layer = stock.bert.encoder.layer[:2]
    missing, unexpected = stock.load_state_dict(fold_compressed_state(student.state_dict()), strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith("position_ids")]
    with torch.no_grad():
        folded = stock.eval()(**original(texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prune", [False, True], ids=["albert", "albert+pruned"])
def test_albert_layout_exports_a_stock_model_as_small_as_the_student(prune, teacher, assets, vocabulary_file, tmp_path):
    spec = CompressedEmbeddingStudent(
        TruncatedTeacher(2),
        embedding_rank=8,
        layout="albert",
        vocabulary_files=[str(vocabulary_file)] if prune else None,
    )
    student = spec.build(teacher, 2).eval()
    assert student.config.model_type == "albert" and student.config.embedding_size == 8
    truncated = TruncatedTeacher(2).build(teacher, 2)
    vocab, hidden = teacher.get_input_embeddings().weight.shape
    kept = len(student.get_input_embeddings().kept_token_ids) if prune else vocab
    # word, position and token-type embeddings live in the rank-8 space; the blocks are the teacher's
    positions, types = teacher.config.max_position_embeddings, teacher.config.type_vocab_size
    expected = count_parameters(truncated) - (vocab + positions + types) * hidden + (kept + positions + types) * 8
    expected += 8 * hidden + hidden  # embedding_hidden_mapping_in
    expected += 2 * 8 - 2 * hidden  # the embedding LayerNorm is in the small space
    assert count_parameters(student) == expected
    for mine, theirs in zip(student.albert.encoder.albert_layer_groups, truncated.bert.encoder.layer, strict=True):
        torch.testing.assert_close(mine.albert_layers[0].ffn.weight, theirs.intermediate.dense.weight)
    model, tokenizer = stock_export(student, str(assets["tokenizer"]))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded).__name__ == "AlbertForSequenceClassification"
    assert count_parameters(reloaded) == count_parameters(student)  # the file is as small as the student
    texts = vocabulary_file.read_text().splitlines()
    original = AutoTokenizer.from_pretrained(assets["tokenizer"])
    exported = AutoTokenizer.from_pretrained(tmp_path)
    with torch.no_grad():
        expected_logits = student(**original(texts, padding=True, return_tensors="pt")).logits
        got = reloaded(**exported(texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(got, expected_logits, atol=1e-5, rtol=0)
    if not prune:  # zero-shot KD's one-hot rows go through ALBERT's small embedding space as well
        encoded = original(texts, padding=True, return_tensors="pt")
        ids, mask = encoded["input_ids"], encoded["attention_mask"].bool()
        one_hot = F.one_hot(ids[mask], student.config.vocab_size).float()
        inputs_embeds = embed_with_replacements(student, ids, mask, one_hot)
        with torch.no_grad():
            by_one_hot = student(inputs_embeds=inputs_embeds, attention_mask=encoded["attention_mask"]).logits
        torch.testing.assert_close(by_one_hot, expected_logits, atol=1e-5, rtol=0)


def test_albert_layout_needs_a_rank_and_a_bert_student(teacher, assets):
    with pytest.raises(KDLightError, match="layout: albert needs embedding_rank"):
        CompressedEmbeddingStudent(TruncatedTeacher(2), embedding_rank=None, layout="albert", vocabulary_files=["x"])
    student = CompressedEmbeddingStudent(TruncatedTeacher(1), embedding_rank=8, layout="albert").build(teacher, 2)
    from kdlight.models.compact import bert_as_albert

    with pytest.raises(KDLightError, match="layout: albert rewrites BERT students; .* use layout: factorised"):
        bert_as_albert(student, torch.eye(8, 32))


def test_zero_shot_refuses_a_pruned_student(assets, vocabulary_file):
    from kdlight.modules import ZeroShotAdversarialKD

    student = CompressedEmbeddingStudent(
        TruncatedTeacher(1), embedding_rank=None, vocabulary_files=[str(vocabulary_file)]
    )
    with pytest.raises(KDLightError, match="vocabulary is pruned; remove vocabulary_files"):
        ZeroShotAdversarialKD(
            teacher=str(assets["teacher"]),
            generator=str(assets["encoder"]),
            student=student,
            task=TaskSpec(label_names=["negative", "positive"], tokenizer=str(assets["tokenizer"])),
        )
    factorised = CompressedEmbeddingStudent(TruncatedTeacher(1), embedding_rank=8)
    ZeroShotAdversarialKD(
        teacher=str(assets["teacher"]),
        generator=str(assets["encoder"]),
        student=factorised,
        task=TaskSpec(label_names=["negative", "positive"], tokenizer=str(assets["tokenizer"])),
    )


# ----------------------------------------------------------------------------------------- CLI runs
def write_config(path: Path, model: dict, data: dict | None = None) -> Path:
    config = {"model": model}
    if data is not None:
        config["data"] = data
    path.write_text(yaml.safe_dump(config))
    return path


STUDENTS = {
    "hidden": {
        "class_path": "FreshStudent",
        "init_args": {"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32},
    },
    "attention": {"class_path": "TruncatedTeacher", "init_args": {"num_layers": 2}},
}


@pytest.mark.parametrize("kind", ["hidden", "embedding", "attention", "relations", "patient", "all"])
def test_layerwise_kd_fits_and_tests_through_the_cli(kind, assets, tmp_path, capsys):
    losses = [
        {"class_path": name, "init_args": args}
        for name, args in {
            "hidden": ("HiddenMSE", {"layers": "uniform"}),
            "embedding": ("EmbeddingMSE", {}),
            "attention": ("AttentionMSE", {"layers": [[1, 1], [2, 4]], "weight": 2.0}),
            "relations": ("SelfAttentionRelations", {"num_relation_heads": 4}),
            "patient": ("PatientCLS", {"layers": "last", "weight": 10.0}),
        }.values()
    ]
    if kind != "all":
        losses = [loss for loss in losses if loss["class_path"].lower().startswith(kind[:4])]
    student = STUDENTS["attention" if kind in ("attention", "all") else "hidden"]
    config = write_config(
        tmp_path / "layerwise.yaml",
        {
            "class_path": "LayerwiseKD",
            "init_args": {"teacher": str(assets["teacher"]), "student": student, "losses": losses, "alpha": 0.5},
        },
    )
    args = [
        "--config",
        config,
        *data_args(assets),
        *trainer_args(tmp_path, **{"--trainer.max_steps": 3, "--trainer.limit_val_batches": 1}),
        f"--model.init_args.export_dir={tmp_path / 'export'}",
    ]
    main(["fit", *map(str, args)])
    last = max(tmp_path.rglob("last.ckpt"))
    state = torch.load(last, weights_only=True)["state_dict"]
    assert not any(k.startswith("teacher.") for k in state)
    has_projection = kind in ("hidden", "embedding", "patient")
    assert any(k.startswith("layer_losses.") for k in state) == has_projection
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export")
    assert not any("projection" in k for k in exported.state_dict())
    capsys.readouterr()
    main(["test", *map(str, args), f"--ckpt_path={last}"])
    assert "test/pct_of_teacher" in capsys.readouterr().out


def test_layerwise_projections_are_trained(assets):
    from kdlight.modules import LayerwiseKD

    module = LayerwiseKD(
        teacher=str(assets["teacher"]),
        student=FreshStudent(num_hidden_layers=2, hidden_size=16, num_attention_heads=2),
        losses=[HiddenMSE()],
        task=TaskSpec(label_names=["negative", "positive"], tokenizer=str(assets["tokenizer"])),
    )
    trainable = {id(p) for p in module.trainable_parameters()}
    assert all(id(p) in trainable for p in module.layer_losses.parameters())
    assert all(id(p) not in trainable for p in module.teacher.parameters())
    assert module.hparams["losses"] == ["HiddenMSE"]
    with pytest.raises(KDLightError, match="cache_teacher_logits saves nothing"):
        LayerwiseKD(teacher=str(assets["teacher"]), losses=[HiddenMSE()], cache_teacher_logits=True)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    import random

    rng = random.Random(0)
    lines = []
    for _ in range(80):
        sentences = [
            " ".join(rng.choice(POSITIVE + NEGATIVE + FILLER) for _ in range(rng.randint(4, 9))).capitalize() + "."
            for _ in range(rng.randint(1, 3))
        ]
        lines.append(" ".join(sentences))
    path = tmp_path_factory.mktemp("general") / "text.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_general_distillation_exports_an_encoder_that_task_distillers_start_from(assets, text_file, tmp_path, capsys):
    export = tmp_path / "general" / "export"
    config = write_config(
        tmp_path / "general.yaml",
        {
            "class_path": "GeneralDistillation",
            "init_args": {
                "teacher": str(assets["teacher"]),  # a classifier: its encoder is distilled, the head dropped
                "student": {
                    "class_path": "CompressedEmbeddingStudent",
                    "init_args": {
                        "base": {
                            "class_path": "FreshStudent",
                            "init_args": {
                                "num_hidden_layers": 2,
                                "hidden_size": 24,
                                "num_attention_heads": 3,
                                "intermediate_size": 48,
                            },
                        },
                        "embedding_rank": 8,
                    },
                },
                "num_relation_heads": 4,
                "export_dir": str(export),
            },
        },
        {
            "class_path": "CorpusDataModule",
            "init_args": {
                "source": str(text_file),
                "cache_dir": str(tmp_path / "corpus"),
                "val_examples": 8,
                "batch_size": 8,
                "max_length": 32,
            },
        },
    )
    args = [
        "--config",
        config,
        *trainer_args(tmp_path / "general", **{"--trainer.max_steps": 4, "--trainer.val_check_interval": 2}),
    ]
    main(["fit", *map(str, args)])
    out = capsys.readouterr()
    assert (export / "config.json").is_file() and (export / "tokenizer.json").is_file()
    checkpoint = torch.load(max((tmp_path / "general").rglob("last.ckpt")), weights_only=True)
    assert "val/score" in str(checkpoint["callbacks"]) and not any(
        k.startswith("teacher.") for k in checkpoint["state_dict"]
    )
    assert any(
        k.endswith("token_factors") for k in checkpoint["state_dict"]
    )  # the checkpoint keeps the factorised form
    encoder = PretrainedStudent(str(export)).build(None, 2, ["negative", "positive"])
    assert encoder.config.hidden_size == 24 and encoder.classifier.out_features == 2
    assert type(encoder.get_input_embeddings()) is torch.nn.Embedding, out.err[-2000:]
    # the exported matrix has rank 8, so refactorising it at rank 8 is exact
    refactorised = CompressedEmbeddingStudent(PretrainedStudent(str(export)), embedding_rank=8).build(None, 2)
    torch.testing.assert_close(
        refactorised.get_input_embeddings().weight, encoder.get_input_embeddings().weight, atol=1e-5, rtol=0
    )

    for model in ("VanillaKD", "LayerwiseKD"):
        init = {
            "teacher": str(assets["teacher"]),
            "student": {"class_path": "PretrainedStudent", "init_args": {"name_or_path": str(export)}},
        }
        if model == "LayerwiseKD":
            init["losses"] = [{"class_path": "SelfAttentionRelations", "init_args": {"num_relation_heads": 4}}]
        task_config = write_config(tmp_path / f"{model}.yaml", {"class_path": model, "init_args": init})
        main(
            [
                "fit",
                "--config",
                str(task_config),
                *data_args(assets),
                *trainer_args(tmp_path / model, **{"--trainer.fast_dev_run": "true"}),
            ]
        )


def test_corpus_datamodule_holds_out_validation_text(assets, text_file, tmp_path):
    from kdlight.data import CorpusDataModule

    data = CorpusDataModule(
        source=str(text_file),
        tokenizer=str(assets["tokenizer"]),
        cache_dir=str(tmp_path),
        val_examples=10,
        batch_size=4,
    )
    data.setup("fit")
    assert len(data.val_dataset) == 10 and len(data.dataset) > 10
    assert not set(data.dataset["idx"]) & set(data.val_dataset["idx"])
    batch = next(iter(data.val_dataloader()))
    assert "labels" not in batch and batch["input_ids"].shape[0] == 4
    with pytest.raises(KDLightError, match="not more than val_examples"):
        CorpusDataModule(
            source=str(text_file), tokenizer=str(assets["tokenizer"]), cache_dir=str(tmp_path), val_examples=10_000
        ).setup()


def test_pruned_student_exports_a_matching_tokenizer_through_the_cli(assets, tmp_path):
    from kdlight.models.hf import load_from_checkpoint

    student = {
        "class_path": "CompressedEmbeddingStudent",
        "init_args": {
            "base": {"class_path": "TruncatedTeacher", "init_args": {"num_layers": 2}},
            "embedding_rank": 8,
            "vocabulary_files": [str(assets["data"] / "train.csv")],
        },
    }
    config = write_config(
        tmp_path / "pruned.yaml",
        {"class_path": "VanillaKD", "init_args": {"teacher": str(assets["teacher"]), "student": student}},
    )
    main(
        [
            "fit",
            "--config",
            str(config),
            *data_args(assets),
            *trainer_args(tmp_path, **{"--trainer.max_steps": 2, "--trainer.limit_val_batches": 1}),
            f"--model.init_args.export_dir={tmp_path / 'export'}",
        ]
    )
    exported_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    original = AutoTokenizer.from_pretrained(assets["tokenizer"])
    assert len(exported_tokenizer) < len(original)
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    assert exported.config.vocab_size == len(exported_tokenizer)
    # the checkpoint rebuilds as a full-vocabulary stock model (kdlight's loader folds the factors and the id map)
    folded = load_from_checkpoint(str(max(tmp_path.rglob("last.ckpt"))))  # no validation ran: export = last
    texts = [line.split(",")[0] for line in (assets["data"] / "test.csv").read_text().splitlines()[1:6]]
    with torch.no_grad():
        got = exported(**exported_tokenizer(texts, padding=True, return_tensors="pt")).logits
        expected = folded(**original(texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_parameters_the_losses_never_reach_are_frozen_so_ddp_needs_no_unused_parameter_search(assets):
    from kdlight.modules import GeneralDistillation, LayerwiseKD

    general = GeneralDistillation(
        teacher=str(assets["encoder"]),
        student=FreshStudent(num_hidden_layers=2, hidden_size=24, num_attention_heads=3, intermediate_size=48),
        num_relation_heads=4,
        tokenizer=str(assets["tokenizer"]),
    )
    frozen = {name for name, p in general.student.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith(("pooler.", "encoder.layer.1.")) for name in frozen)
    assert {"encoder.layer.1.intermediate.dense.weight", "pooler.dense.weight"} <= frozen
    assert general.student.encoder.layer[1].attention.self.query.weight.requires_grad
    assert all(p.requires_grad for p in general.student.encoder.layer[0].parameters())
    stage_one = LayerwiseKD(
        teacher=str(assets["teacher"]),
        student=TruncatedTeacher(2),
        losses=[HiddenMSE()],
        logit_weight=0.0,
        tokenizer=str(assets["tokenizer"]),
    )
    frozen = {name for name, p in stage_one.student.named_parameters() if not p.requires_grad}
    assert frozen == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}


def test_albert_layout_students_take_layer_wise_losses_and_truncation(teacher, batch):
    from kdlight.models.layers import Needs

    student = CompressedEmbeddingStudent(TruncatedTeacher(3), embedding_rank=8, layout="albert").build(teacher, 2)
    needs = Needs(hidden_states=True, attentions=True, qkv_layers=frozenset({3}))
    student.set_attn_implementation("eager")
    out = forward_internals(student, batch, needs)
    assert len(out.hidden_states) == 4 and len(out.attentions) == 3 and out.qkv[3][0].shape[-1] == 32
    cut = TruncatedTeacher(2).build(student, 2).eval()
    assert cut.config.num_hidden_groups == 2
    with torch.no_grad():
        assert cut(**batch).logits.shape == (3, 2)
