"""ALM-KD: convex weights, the look-ahead meta-gradient, checkpoints, multi-teacher, recipes end to end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning import Callback, Trainer, seed_everything
from torch import nn

from kdlight.callbacks import ExactResume
from kdlight.checkpoints import load_checkpoint
from kdlight.cli import cli
from kdlight.components import meta
from kdlight.components.meta import (
    LambdaTable,
    Lookahead,
    MixingNetwork,
    feature_size,
    lookahead_meta_gradients,
    mixed_loss,
)
from kdlight.data import NoisyLabelDataModule, TextClassificationDataModule
from kdlight.errors import KDLightError
from kdlight.modules import AdaptiveLossMixingKD, MultiTeacherALMKD, TeacherDisagreementKD

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "noisy"


def test_table_and_network_weights_are_convex():
    table = LambdaTable(10, 1, init_lambda=0.9)
    w = table(torch.tensor([0, 3, 9]))
    assert w.shape == (3, 2) and torch.allclose(w[:, 1], torch.tensor(0.9)) and torch.allclose(w.sum(-1), torch.ones(3))
    multi = LambdaTable(10, 3, init_lambda=0.9)
    w = multi(torch.arange(4))
    assert w.shape == (4, 4) and torch.allclose(w.sum(-1), torch.ones(4)) and torch.allclose(w[:, 0], torch.tensor(0.1))
    with torch.no_grad():
        multi.logits.normal_(0, 5)
    w = multi(torch.arange(10))
    assert (w > 0).all() and torch.allclose(w.sum(-1), torch.ones(10))
    net = MixingNetwork(2, hidden=8, init_lambda=0.9)
    w = net(torch.arange(5), torch.randn(5, feature_size(2)))
    assert torch.allclose(w.sum(-1), torch.ones(5)) and torch.allclose(w[:, 0], torch.tensor(0.1), atol=0.02)
    with pytest.raises(IndexError):
        table(torch.tensor([10]))


def reference_lookahead_loss(head, params, x, xv, yv, inner, lr):
    """CE on a clean batch after one differentiable SGD step of ``inner`` on ``params``, in plain autograd."""
    loss = inner(torch.func.functional_call(head, params, (x,)))
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    updated = {name: p - lr * g for (name, p), g in zip(params.items(), grads, strict=True)}
    return nn.functional.cross_entropy(torch.func.functional_call(head, updated, (xv,)), yv)


def test_lookahead_meta_gradient_reaches_only_the_batch_rows(monkeypatch):
    torch.manual_seed(0)
    head = nn.Linear(6, 2)
    table = LambdaTable(20, 1)
    idx = torch.tensor([1, 4, 7, 8])
    x, labels, teacher = torch.randn(4, 6), torch.tensor([0, 1, 1, 0]), torch.randn(4, 2)
    xv, yv = torch.randn(8, 6), torch.randint(0, 2, (8,))

    def inner_of(sel):
        def inner_half(logits):
            ce = nn.functional.cross_entropy(logits, labels[sel], reduction="none")
            kd = nn.functional.kl_div(logits.log_softmax(-1), teacher[sel].softmax(-1), reduction="none").sum(-1)
            return mixed_loss(table(idx[sel]), ce, [kd])

        return inner_half

    params = dict(head.named_parameters())

    def step(sel=slice(0, 4), lr=0.5):
        return Lookahead(head, params, {"input": x[sel]}, {"input": xv}, yv, lr)

    score, (grad,) = lookahead_meta_gradients(step(), inner_of(slice(0, 4)), [table.logits])
    assert grad[idx].abs().sum() > 0
    others = torch.ones(20, dtype=torch.bool)
    others[idx] = False
    assert grad[others].abs().sum() == 0
    assert head.weight.grad is None  # the look-ahead never writes the head's gradients
    # with step size 0 the look-ahead does not depend on the weights
    _, (g0,) = lookahead_meta_gradients(step(lr=0.0), inner_of(slice(0, 4)), [table.logits])
    assert g0.abs().sum() == 0
    # the data-parallel implementation gives plain autograd's gradient of the clean score on one process ...
    reference = reference_lookahead_loss(head, params, x, xv, yv, inner_of(slice(0, 4)), 0.5)
    (expected,) = torch.autograd.grad(reference, [table.logits])
    assert torch.allclose(score, reference) and torch.allclose(grad, expected, atol=1e-7)

    # ... and split over two simulated ranks (each with half the training batch and, for simplicity,
    # the whole clean batch), with the all-reduce of the mean gradient done by hand, the same sum

    halves = [slice(0, 2), slice(2, 4)]
    local = [
        [g.detach() for g in torch.autograd.grad(inner_of(sel)(head(x[sel])), list(params.values()))] for sel in halves
    ]
    mean_grads = [(a + b) / 2 for a, b in zip(*local, strict=True)]
    total = torch.zeros_like(grad)
    monkeypatch.setattr(meta, "world_size", lambda: 2)
    for sel in halves:
        first = [True]

        # 1st call: the training gradients (ranks differ); later: clean terms (ranks agree)
        def average(tensors, first=first):
            if first[0]:
                first[0] = False
                return mean_grads
            return tensors

        monkeypatch.setattr(meta, "mean_across_ranks", average)
        _, (meta_r,) = lookahead_meta_gradients(step(sel), inner_of(sel), [table.logits])
        total += meta_r
    assert torch.allclose(total, grad, atol=1e-6)


def noisy_dm(assets, **kw):
    d = assets["data"]
    base = TextClassificationDataModule(
        train_file=str(d / "train.csv"), val_file=str(d / "validation.csv"), test_file=str(d / "test.csv")
    )
    args = dict(noise_rate=0.4, clean_val_size=16, tokenizer=str(assets["teacher"]), max_length=32, batch_size=16)
    args.update(kw)
    return NoisyLabelDataModule(base, **args)


def fit(model, dm, root, epochs=1, ckpt_path=None, **kw):
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        num_sanity_val_steps=0,
        **kw,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("mixer,lookahead", [("table", "last_layer"), ("network", "last_layer"), ("table", "all")])
def test_meta_step_changes_only_the_mixer(assets, tmp_path, mixer, lookahead):
    """Student lr 0: the student must not move; the weights must (meta step with lookahead_lr=1)."""
    seed_everything(0)
    dm = noisy_dm(assets)
    model = AdaptiveLossMixingKD(
        teacher=str(assets["teacher"]),
        mixer=mixer,
        lookahead=lookahead,
        learning_rate=0.0,
        weight_decay=0.0,
        lookahead_lr=1.0,
        meta_learning_rate=0.05 if mixer == "network" else 1.0,
        task=dm.task,
    )
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    fit(model, dm, tmp_path, enable_checkpointing=False, limit_val_batches=0)
    assert all(torch.equal(before[k], v) for k, v in model.student.state_dict().items())
    assert all(torch.equal(teacher_before[k], v) for k, v in model.teacher.state_dict().items())
    if mixer == "table":
        lam = model.table_lambdas()
        train_idx = torch.tensor(dm.splits["train"]["idx"])
        clean_idx = torch.tensor(dm.splits["clean_validation"]["idx"])
        assert (lam[train_idx] - 0.9).abs().max() > 1e-3  # every visited row can move ...
        assert ((lam[train_idx] - 0.9).abs() > 1e-6).float().mean() > 0.5
        assert torch.allclose(lam[clean_idx], torch.tensor(0.9))  # ... rows never trained on cannot
        assert (lam > 0).all() and (lam < 1).all()
    else:
        fresh = MixingNetwork(1, 32, 0.9)
        pairs = zip(model.mixer.state_dict().values(), fresh.state_dict().values(), strict=True)
        assert any(not torch.equal(a, b) for a, b in pairs)
    assert "lambda_flipped" in model.last_flip_stats and "lambda_clean" in model.last_flip_stats


def test_centred_meta_gradient_moves_weights_but_keeps_their_mean(assets, tmp_path):
    """center_meta_grad: every meta step keeps its batch's mean logit, so after one epoch (each
    training example seen once) the table's mean logit over the training rows is still the initial
    one while the rows themselves have spread out; without centring the mean moves."""
    import math

    means = {}
    for center in (True, False):
        seed_everything(0)
        dm = noisy_dm(assets)
        model = AdaptiveLossMixingKD(
            teacher=str(assets["teacher"]),
            center_meta_grad=center,
            learning_rate=1e-3,
            lookahead_lr=1.0,
            meta_learning_rate=1.0,
            task=dm.task,
        )
        fit(model, dm, tmp_path / str(center), enable_checkpointing=False, limit_val_batches=0)
        rows = model.mixer.logits.detach()[torch.tensor(dm.splits["train"]["idx"])].squeeze(-1)
        assert rows.std() > 0.1  # the per-example signal is kept
        means[center] = float(rows.mean())
    assert means[True] == pytest.approx(math.log(0.9 / 0.1), abs=1e-4)
    assert abs(means[False] - math.log(0.9 / 0.1)) > 1e-2


def test_meta_warmup_in_epochs(assets, tmp_path):
    """meta_interval=epoch, meta_warmup=1: no meta step in epoch 0, meta steps from epoch 1 on."""
    seed_everything(0)
    dm = noisy_dm(assets)
    model = AdaptiveLossMixingKD(
        teacher=str(assets["teacher"]), meta_interval="epoch", meta_warmup=1, lookahead_lr=1.0, task=dm.task
    )
    fit(model, dm, tmp_path / "one", epochs=1, enable_checkpointing=False, limit_val_batches=0)
    assert torch.allclose(model.table_lambdas(), torch.tensor(0.9))
    fit(model, dm, tmp_path / "two", epochs=2, enable_checkpointing=False, limit_val_batches=0)
    assert (model.table_lambdas() - 0.9).abs().max() > 1e-3


def test_no_meta_steps_keeps_weights_and_checkpoint_round_trip(assets, tmp_path):
    seed_everything(0)
    dm = noisy_dm(assets)
    model = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), meta_steps=0, task=dm.task)
    fit(model, dm, tmp_path / "a", enable_checkpointing=False, limit_val_batches=0)
    assert torch.allclose(model.table_lambdas(), torch.tensor(0.9))

    model = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), lookahead_lr=1.0, task=dm.task)
    trainer = fit(model, dm, tmp_path / "b", limit_val_batches=1)
    path = tmp_path / "alm.ckpt"
    trainer.save_checkpoint(path)
    ckpt = load_checkpoint(path)  # the safe loader reads what kdlight writes
    assert "meta.mixer.logits" in ckpt["state_dict"] and not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    # the meta-learner's weights and counter are in the state dict, and all of them kept out of DDP's buckets
    assert set(model._ddp_params_and_buffers_to_ignore) == {k for k in model.state_dict() if k.startswith("meta.")}
    restored = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), task=dm.task)
    restored.on_load_checkpoint(ckpt)
    restored.load_state_dict(ckpt["state_dict"])  # what Lightning does with a checkpoint
    assert torch.equal(restored.table_lambdas(), model.table_lambdas())
    # resuming through the trainer restores the table as well
    resumed = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), meta_steps=0, task=dm.task)
    fit(resumed, dm, tmp_path / "c", epochs=2, ckpt_path=str(path), limit_val_batches=1, enable_checkpointing=False)
    assert torch.equal(resumed.table_lambdas(), model.table_lambdas())


def test_without_meta_steps_alm_is_vanilla_kd_at_init_lambda(assets, tmp_path):
    """With the weights frozen at init_lambda, ALM-KD's manual step must train the student exactly
    as VanillaKD(alpha=init_lambda) does: same loss, optimiser, schedule and dropout draws."""
    from kdlight.modules import VanillaKD

    students = []
    for cls, extra in ((AdaptiveLossMixingKD, {"meta_steps": 0, "init_lambda": 0.7}), (VanillaKD, {"alpha": 0.7})):
        seed_everything(0)
        dm = noisy_dm(assets)
        model = cls(teacher=str(assets["teacher"]), temperature=4.0, learning_rate=1e-3, **extra, task=dm.task)
        fit(model, dm, tmp_path / cls.__name__, epochs=2, enable_checkpointing=False, limit_val_batches=0)
        students.append(model.student.state_dict())
    alm, vanilla = students
    moved = [k for k in alm if not torch.allclose(alm[k], vanilla[k], atol=1e-5)]
    assert not moved, f"ALM-KD without meta steps diverged from VanillaKD in {moved[:3]}"


def test_needs_the_noisy_datamodule_and_valid_args(assets, tmp_path):
    d = assets["data"]
    plain = TextClassificationDataModule(
        train_file=str(d / "train.csv"), val_file=str(d / "validation.csv"), tokenizer=str(assets["teacher"])
    )
    model = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), task=plain.task)
    with pytest.raises(KDLightError, match="NoisyLabelDataModule"):
        fit(model, plain, tmp_path)
    with pytest.raises(KDLightError, match="mixer"):
        AdaptiveLossMixingKD(teacher=str(assets["teacher"]), mixer="mlp")
    with pytest.raises(KDLightError, match="init_lambda"):
        AdaptiveLossMixingKD(teacher=str(assets["teacher"]), init_lambda=1.0)


def test_multi_teacher_softmax_over_ce_and_k_kd_terms(assets, tmp_path):
    seed_everything(0)
    dm = noisy_dm(assets)
    teacher = str(assets["teacher"])
    model = MultiTeacherALMKD(teachers=[teacher, teacher], lookahead_lr=1.0, task=dm.task)
    fit(model, dm, tmp_path, enable_checkpointing=False, limit_val_batches=0)
    w = model.mixer(torch.tensor(dm.splits["train"]["idx"]))
    assert w.shape[1] == 3 and torch.allclose(w.sum(-1), torch.ones(len(w)))
    assert (w[:, 0] - 0.1).abs().max() > 1e-4
    ckpt = {"state_dict": {"student.x": torch.zeros(1)}}
    model.on_save_checkpoint(ckpt)
    assert not any(k.startswith(("teacher.", "extra_teachers.")) for k in ckpt["state_dict"])
    with pytest.raises(KDLightError, match="two or more"):
        MultiTeacherALMKD(teachers=[teacher])


def recipe(name: str, assets, tmp_path) -> Path:
    """A configs/noisy recipe pointed at the tiny assets (teachers, encoder, local files)."""
    config = yaml.safe_load((CONFIGS / name).read_text())
    init = config["model"]["init_args"]
    teacher = str(assets["teacher"])
    for key in ("teacher",):
        if key in init:
            init[key] = teacher
    if "teachers" in init:
        init["teachers"] = [teacher, teacher]
    if "model" in init:
        init["model"] = str(assets["encoder"])
    if init.get("student", {}).get("class_path") == "PretrainedStudent":
        init["student"]["init_args"]["name_or_path"] = teacher
    init.pop("export_dir", None)
    data = config["data"]["init_args"]
    d = assets["data"]
    data["datamodule"] = {
        "class_path": "TextClassificationDataModule",
        "init_args": {
            "train_file": str(d / "train.csv"),
            "val_file": str(d / "validation.csv"),
            "test_file": str(d / "test.csv"),
        },
    }
    if "tokenizer" in data:
        data["tokenizer"] = teacher
    data.update(max_length=32, batch_size=16)
    config["trainer"].update(
        default_root_dir=str(tmp_path),
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision="32-true",
        accelerator="cpu",
        devices=1,
    )
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml"))


def test_recipes_exist():
    assert {
        "teacher.yaml",
        "alm.yaml",
        "alm_mixer.yaml",
        "disagreement.yaml",
        "multi_teacher.yaml",
        "self_distill.yaml",
        "sst2_teacher.yaml",
        "sst2_alm.yaml",
        "mnli_teacher.yaml",
        "mnli_alm.yaml",
    } <= set(RECIPES)


@pytest.mark.parametrize("name", [n for n in RECIPES if not n.startswith(("sst2", "mnli"))])
def test_recipe_fits_end_to_end(assets, tmp_path, name):
    runner = cli(["fit", "--config", str(recipe(name, assets, tmp_path))])
    assert runner.trainer.state.finished
    noise = tmp_path / "noise.json"
    assert noise.is_file() and '"realised_rate"' in noise.read_text()
    assert runner.datamodule.tokenizer_name == str(assets["teacher"]) or name.endswith("teacher.yaml")
    if isinstance(runner.model, AdaptiveLossMixingKD):
        assert "train/lambda_mean" in runner.trainer.callback_metrics
    if isinstance(runner.model, TeacherDisagreementKD):  # its flag's mechanism, as ALM's weights'
        assert {"lambda/flipped", "lambda/clean", "lambda/flipped_auc"} <= set(runner.trainer.callback_metrics)
    written = sorted(tmp_path.rglob("*.ckpt"))
    assert written
    for path in written:  # every module's own checkpoints are plain data: torch's weights-only loader reads them as is
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == [], path
        assert "state_dict" in load_checkpoint(path)


def meta_batches(model) -> list[int]:
    """Spy: the training batches (0-based, across runs) at which a meta step ran."""
    seen: list[int] = []
    original = model.meta.meta_gradients

    def spy(*args, **kwargs):
        seen.append(int(model.meta.batches_seen[0]))
        return original(*args, **kwargs)

    model.meta.meta_gradients = spy
    return seen


@pytest.mark.parametrize("every, warmup, expected", [(3, 0, [0, 3, 6, 9]), (2, 2, [2, 4, 6, 8]), (1, 7, [7, 8, 9])])
def test_meta_schedule_counts_training_batches(assets, tmp_path, every, warmup, expected):
    """meta_every/meta_warmup count this module's training batches, not global_step (which also counts
    the meta optimiser's steps: meta_every=3 used to run at batches 0, 2, 4, 6, 8)."""
    seed_everything(0)
    dm = noisy_dm(assets)  # 80 training examples, batches of 16: 5 batches an epoch
    model = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), meta_every=every, meta_warmup=warmup, task=dm.task)
    seen = meta_batches(model)
    fit(model, dm, tmp_path, epochs=2, enable_checkpointing=False, limit_val_batches=0)
    assert seen == expected and int(model.meta.batches_seen[0]) == 10


def test_meta_schedule_continues_after_resume(assets, tmp_path):
    seed_everything(0)
    dm = noisy_dm(assets)
    first = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), meta_every=3, task=dm.task)
    seen_first = meta_batches(first)
    trainer = fit(first, dm, tmp_path / "a", epochs=1, enable_checkpointing=False, limit_val_batches=0)
    path = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(path)
    assert load_checkpoint(path)["state_dict"]["meta.batches_seen"].tolist() == [5]
    resumed = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), meta_every=3, task=dm.task)
    seen_resumed = meta_batches(resumed)
    fit(resumed, dm, tmp_path / "b", epochs=2, ckpt_path=str(path), enable_checkpointing=False, limit_val_batches=0)
    assert (seen_first, seen_resumed) == ([0, 3], [6, 9])
    # a checkpoint written before the counter existed resumes from Lightning's own batch count
    old = load_checkpoint(path)
    del old["state_dict"]["meta.batches_seen"]
    torch.save(old, tmp_path / "old.ckpt")
    again = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), meta_every=3, task=dm.task)
    seen_again = meta_batches(again)
    fit(
        again,
        dm,
        tmp_path / "c",
        epochs=2,
        ckpt_path=str(tmp_path / "old.ckpt"),
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    assert seen_again == [6, 9]


def test_checkpoints_from_before_the_meta_learner_still_load(assets, tmp_path):
    """Older checkpoints kept the weights beside the state dict (``kdlight_alm_mixer``) and the batch
    counter as ``meta_progress``: they load into the meta-learner and resume its schedule."""
    seed_everything(0)
    dm = noisy_dm(assets)
    model = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), meta_every=3, lookahead_lr=1.0, task=dm.task)
    trainer = fit(model, dm, tmp_path / "a", epochs=1, enable_checkpointing=False, limit_val_batches=0)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    old = load_checkpoint(tmp_path / "new.ckpt")
    state = old["state_dict"]
    old["kdlight_alm_mixer"] = {"state_dict": {"logits": state.pop("meta.mixer.logits")}}
    state["meta_progress"] = state.pop("meta.batches_seen")
    torch.save(old, tmp_path / "old.ckpt")
    loaded = AdaptiveLossMixingKD.load_from_checkpoint(tmp_path / "old.ckpt")
    assert torch.equal(loaded.table_lambdas(), model.table_lambdas()) and loaded.meta.batches_seen.tolist() == [5]
    resumed = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), meta_every=3, lookahead_lr=1.0, task=dm.task)
    seen = meta_batches(resumed)
    fit(
        resumed,
        dm,
        tmp_path / "b",
        epochs=2,
        ckpt_path=str(tmp_path / "old.ckpt"),
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    assert seen == [6, 9]


# ------------------------------------------------------------------------------- official mode
def reference_official_meta_gradients(
    batches, head_w, head_b, teacher_logits, clean_x, clean_y, lam, eta, temp, batch_ind
):
    """durgas16/AMAL KD/LearnMultiLambdaMeta.py (get_lambdas, lines 61-67, 87-101, 121-149) restated:
    autograd through ``lambdas`` with the code's repeat_interleave/repeat layout, one teacher."""
    num_classes = head_w.shape[0]
    sl_rows, kd_rows = [], []
    for (x, y), t in zip(batches, teacher_logits, strict=True):
        outputs = (x @ head_w.T + head_b).requires_grad_(True)
        l1 = x
        loss_sl = nn.functional.cross_entropy(outputs, y)  # criterion_red: CrossEntropyLoss(), mean
        l0 = torch.autograd.grad(loss_sl, outputs)[0]
        l1_grads = torch.repeat_interleave(l0, l1.shape[1], dim=1) * l1.repeat(1, num_classes)
        sl_rows.append(torch.cat((l0, l1_grads), dim=1))
        loss_kd = (
            temp
            * temp
            * nn.KLDivLoss(reduction="batchmean")(
                nn.functional.log_softmax(outputs / temp, dim=1), nn.functional.softmax(t / temp, dim=1)
            )
        )
        l0 = torch.autograd.grad(loss_kd, outputs)[0]
        l1_grads = torch.repeat_interleave(l0, l1.shape[1], dim=1) * l1.repeat(1, num_classes)
        kd_rows.append(torch.cat((l0, l1_grads), dim=1))
    sl_grads, kd_grads = torch.cat(sl_rows), torch.cat(kd_rows)
    init_out, init_l1 = clean_x @ head_w.T + head_b, clean_x
    lambdas = lam.clone().requires_grad_(True)
    lambdas1 = lambdas[batch_ind, 0][:, None]
    lambdas2 = lambdas[batch_ind, 1][:, None]
    comb_grad = (lambdas1 * sl_grads + lambdas2 * kd_grads).sum(0)
    out_vec_val = init_out - eta * comb_grad[:num_classes].view(1, -1).expand(init_out.shape[0], -1)
    out_vec_val = out_vec_val - eta * torch.matmul(
        init_l1, comb_grad[num_classes:].view(num_classes, -1).transpose(0, 1)
    )
    loss_val = nn.functional.cross_entropy(out_vec_val, clean_y)
    g1 = torch.autograd.grad(loss_val, lambdas1, retain_graph=True)[0].view(-1)
    g2 = torch.autograd.grad(loss_val, lambdas2)[0].view(-1)
    return torch.stack([g1, g2], dim=1), loss_val.detach()


def test_official_last_layer_meta_gradient_equals_the_codes_closed_form():
    from kdlight.components.meta_official import (
        HeadView,
        last_layer_grads,
        lookahead_lambda_grads,
        official_lambda_update,
    )
    from kdlight.losses import KLDivergence

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    try:
        num_classes, width, temp, eta = 3, 5, 4.0, 0.1
        head_w, head_b = torch.randn(num_classes, width), torch.randn(num_classes)
        batches = [(torch.randn(4, width), torch.randint(0, num_classes, (4,))) for _ in range(2)]  # grad_fit = 2
        teachers = [torch.randn(4, num_classes) * 3 for _ in range(2)]
        clean_x, clean_y = torch.randn(6, width), torch.randint(0, num_classes, (6,))
        lam = torch.rand(20, 2) * 1.5
        batch_ind = [3, 7, 1, 12, 0, 19, 5, 8]
        expected, expected_score = reference_official_meta_gradients(
            batches, head_w, head_b, teachers, clean_x, clean_y, lam, eta, temp, batch_ind
        )
        kd = KLDivergence(temp, reduction="none")
        ce_rows, kd_rows = [], []
        for (x, y), t in zip(batches, teachers, strict=True):
            logits = x @ head_w.T + head_b
            ce_rows.append(last_layer_grads(logits, x, lambda z, y=y: nn.functional.cross_entropy(z, y)))
            kd_rows.append(last_layer_grads(logits, x, lambda z, t=t: kd(z, t).mean()))
        grads = [torch.cat(ce_rows), torch.cat(kd_rows)]
        clean = HeadView(clean_x @ head_w.T + head_b, clean_x, clean_y)
        score, got = lookahead_lambda_grads(lam[batch_ind], grads, clean, eta)
        assert got.abs().max() > 1e-4
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(score, expected_score, atol=1e-6, rtol=0)
        # 5 plain steps of lr 1500, clamped to [1e-7, 2 - 1e-7] after each (lines 119-154)
        ref = lam.clone()
        for _ in range(5):
            g, _ = reference_official_meta_gradients(
                batches, head_w, head_b, teachers, clean_x, clean_y, ref, eta, temp, batch_ind
            )
            ref[batch_ind] = ref[batch_ind] - 1500 * g
            ref.clamp_(min=1e-7, max=2 - 1e-7)
        new, _ = official_lambda_update(lam[batch_ind], grads, clean, eta, 1500.0, 5)
        torch.testing.assert_close(new, ref[batch_ind], atol=1e-6, rtol=0)
        assert (new <= 2 - 1e-7).all() and (new >= 1e-7).all() and not torch.allclose(new, lam[batch_ind])
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize(
    "warm, every, expected", [(10, 10, [10, 20, 30]), (1, 2, [1, 3, 5, 7, 9]), (0, 1, list(range(10))), (3, 0, [])]
)
def test_official_schedule_epochs(warm, every, expected):
    from kdlight.components.meta_official import official_meta_due

    assert [e for e in range(31 if warm == 10 else 10) if official_meta_due(e, warm, every)] == expected


def test_official_mode_meta_passes_with_grad_fit_groups(assets, tmp_path, monkeypatch):
    """warm_epoch 1, select_every 2 over 4 epochs: meta passes at the start of epochs 1 and 3, each over
    the whole training split (80 examples, batches of 16) in groups of grad_fit = 2 batches (32, 32, 16
    rows), 5 iterations each; the student (lr 0) does not move, the trained rows do, within [1e-7, 2)."""
    from kdlight.components import meta_official

    calls = []
    original = meta_official.official_lambda_update

    def spy(lam, grads, *args, **kwargs):
        calls.append((epoch_of[0], lam.shape[0], args[-3] if len(args) >= 6 else kwargs))
        return original(lam, grads, *args, **kwargs)

    monkeypatch.setattr(meta_official, "official_lambda_update", spy)
    seed_everything(0)
    dm = noisy_dm(assets, noise_type="uniform")
    model = AdaptiveLossMixingKD(
        teacher=str(assets["teacher"]),
        algorithm="official",
        grad_fit=2,
        warm_epoch=1,
        select_every=2,
        learning_rate=0.0,
        weight_decay=0.0,
        lookahead_lr=1.0,
        task=dm.task,
    )
    meta_args = model.hparams.meta["init_args"]  # the flat keys, translated into the meta-learner's config
    assert model.hparams.meta["class_path"].endswith("OfficialMetaLearner") and "algorithm" not in model.hparams
    assert meta_args["meta_learning_rate"] == 1500.0 and meta_args["meta_iterations"] == 5
    epoch_of = [0]
    original_pass = model.official_meta_pass

    def pass_spy():
        epoch_of[0] = model.current_epoch
        time.sleep(0.05)  # the passes' wall time is counted (meta_pass_seconds): at least this
        return original_pass()

    model.official_meta_pass = pass_spy
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    fit(model, dm, tmp_path, epochs=4, enable_checkpointing=False, limit_val_batches=0)
    assert [(e, n) for e, n, _ in calls] == [(1, 32), (1, 32), (1, 16), (3, 32), (3, 32), (3, 16)]
    assert model.meta_pass_seconds >= 2 * 0.05
    assert all(torch.equal(before[k], v) for k, v in model.student.state_dict().items())
    lam = model.mixer.lam
    train_idx = torch.tensor(dm.splits["train"]["idx"])
    clean_idx = torch.tensor(dm.splits["clean_validation"]["idx"])
    assert (lam[train_idx] - torch.tensor([0.1, 0.9])).abs().max() > 1e-3
    assert torch.allclose(lam[clean_idx], torch.tensor([0.1, 0.9]))
    assert (lam >= 1e-7).all() and (lam < 2).all()
    assert "lambda_flipped" in model.last_flip_stats
    # the table travels in checkpoints
    path = tmp_path / "official.ckpt"
    model.trainer.save_checkpoint(path)
    again = AdaptiveLossMixingKD.load_from_checkpoint(path)
    assert torch.equal(again.mixer.lam, lam.cpu())
    assert (tmp_path / "lambda.png").is_file()


def test_official_mode_needs_the_table():
    with pytest.raises(KDLightError, match="mixer: table"):
        AdaptiveLossMixingKD(teacher="x", algorithm="official", mixer="network")
    with pytest.raises(KDLightError, match="algorithm"):
        AdaptiveLossMixingKD(teacher="x", algorithm="paper")


@pytest.mark.parametrize("mixer", ["table", "network"])
def test_lambda_png_written_at_fit_end(assets, tmp_path, mixer, caplog):
    from lightning.pytorch.loggers import CSVLogger

    seed_everything(0)
    dm = noisy_dm(assets)
    model = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), mixer=mixer, lookahead_lr=1.0, task=dm.task)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=CSVLogger(str(tmp_path)),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    path = Path(trainer.log_dir) / "lambda.png"
    assert path.is_file() and path.stat().st_size > 1000


def test_official_recipe_trains_the_student_as_the_authors_code():
    """configs/noisy/alm_official.yaml against durgas16/AMAL (commit 6c4764b): the student's optimiser is
    ``optim.SGD(lr, momentum, weight_decay, nesterov=True)`` (KD/train_distill_noise.py 165-167) with
    momentum 0.9 and weight decay 5e-4 (KD/config/cifar100/config_amal_cifar100.py 33-36); the lr is cut
    x0.1 by MultiStepLR (train_distill_noise.py 180, at epochs 150 and 180 of 200 = 75 % and 90 %: here in
    steps); T = 4 (line 34), KD weight 0.9 (line 32, table 418-421), grad_fit 3 (config line 8), 5 plain
    steps of 1500 per clean batch (LearnMultiLambdaMeta.py 119, 145, 150), uniform noise (custom_dataset.py
    90-94)."""
    import math

    config = yaml.safe_load((CONFIGS / "alm_official.yaml").read_text())
    init = config["model"]["init_args"]
    optimizer = init["optimizer"]
    assert optimizer["class_path"] == "torch.optim.SGD"
    assert optimizer["init_args"]["momentum"] == 0.9 and optimizer["init_args"]["nesterov"] is True
    assert optimizer["init_args"]["weight_decay"] == 5e-4
    schedule = init["lr_scheduler"]
    data = config["data"]["init_args"]
    steps = config["trainer"]["max_epochs"] * math.ceil(data["max_train_examples"] * 0.9 / data["batch_size"])
    assert schedule["class_path"] == "torch.optim.lr_scheduler.MultiStepLR" and schedule["init_args"]["gamma"] == 0.1
    assert schedule["init_args"]["milestones"] == [int(0.75 * steps), int(0.9 * steps)]
    meta = init["meta"]["init_args"]
    assert init["meta"]["class_path"] == "OfficialMetaLearner" and init["temperature"] == 4.0
    assert meta["init_lambda"] == 0.9 and meta["grad_fit"] == 3 and meta["meta_iterations"] == 5
    assert meta["meta_learning_rate"] == 1500.0
    # a meta pass every select_every epochs from warm_epoch, many of them over the fit (the code: 19 over 200)
    passes = [e for e in range(config["trainer"]["max_epochs"]) if meta_official_due(e, meta)]
    assert len(passes) >= 5
    assert data["noise_type"] == "uniform" and data["meta_batch_size"] >= 128


def meta_official_due(epoch: int, init: dict) -> bool:
    from kdlight.components.meta_official import official_meta_due

    return official_meta_due(epoch, init["warm_epoch"], init["select_every"])


def test_the_log_says_which_update_the_lookahead_models():
    from kdlight.modules.alm import lookahead_assumption

    params = [nn.Parameter(torch.zeros(2))]
    adamw = lookahead_assumption(torch.optim.AdamW(params), {})
    assert "AdamW" in adamw and "does not model" in adamw
    sgd = lookahead_assumption(torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4), {})
    assert "momentum 0.9" in sgd and "leaves out" in sgd
    assert "models its update" in lookahead_assumption(torch.optim.SGD(params, lr=0.1), {})


def test_expected_error_clean_score_is_residual_times_p_label_in_both_modes():
    """clean_score='expected_error': the score 1 - p(label), whose logit gradient is p(label) times CE's
    residual; the default mode's autograd look-ahead and the official closed form agree on it."""
    from kdlight.components.meta import clean_score
    from kdlight.components.meta_official import HeadView, last_layer_grads, lookahead_lambda_grads

    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3, requires_grad=True), torch.randint(0, 3, (6,))
    (grad,) = torch.autograd.grad(clean_score(logits, labels, "expected_error"), logits)
    p = logits.detach().softmax(-1)
    residual = p - nn.functional.one_hot(labels, 3)
    torch.testing.assert_close(grad, p.gather(1, labels.view(-1, 1)) * residual / 6)
    # one head, two training examples with free CE weights (the official table's layout) ...
    head = nn.Linear(4, 3)
    x, y, xv, yv = torch.randn(2, 4), torch.tensor([0, 2]), torch.randn(5, 4), torch.randint(0, 3, (5,))
    lam = torch.tensor([[0.3], [0.8]])
    rows = last_layer_grads(head(x), x, lambda z: nn.functional.cross_entropy(z, y))
    view = HeadView(head(xv).detach(), xv, yv)
    _, official = lookahead_lambda_grads(lam, [rows], view, 0.5, "expected_error")
    # ... and the same look-ahead by autograd through the head's parameters
    w = lam.clone().requires_grad_(True)
    step = Lookahead(head, dict(head.named_parameters()), {"input": x}, {"input": xv}, yv, 0.5, score="expected_error")

    def inner(z):
        return (w[:, 0] * nn.functional.cross_entropy(z, y, reduction="none")).mean()

    _, (expected,) = lookahead_meta_gradients(step, inner, [w])
    torch.testing.assert_close(official, expected, atol=1e-6, rtol=1e-4)


def test_max_steps_counts_student_updates(assets, tmp_path):
    """``max_steps`` counts student updates in ALM as in every module: the meta optimiser's steps used to count
    too, so ``max_steps: 6`` ran 3 batches and the linear schedule stopped at half its peak."""
    seed_everything(0)
    dm = noisy_dm(assets)  # 5 training batches an epoch
    model = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), task=dm.task, warmup_ratio=0.0)
    trainer = fit(model, dm, tmp_path, epochs=5, max_steps=6, enable_checkpointing=False, limit_val_batches=0)
    assert int(model.meta.batches_seen[0]) == 6
    assert trainer.global_step == 6
    assert model.lr_schedulers().get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # the decay ran to its end


def test_clean_batches_continue_after_a_resume(assets, tmp_path):
    """A resumed run draws the clean batches an uninterrupted run would draw next (the clean-batch iterator
    used to restart from the first batch, one cause of a lambda table that differed after a resume)."""

    class StopAfterFirstEpoch(Callback):  # the same 2-epoch run (same LR schedule), stopped as a kill would
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    def run(root, ckpt_path=None, stop=False) -> list[list[int]]:
        seed_everything(0)
        dm = noisy_dm(assets, meta_batch_size=4)  # 16 clean examples: 4 clean batches for 5 training batches
        model = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), task=dm.task)
        drawn, draw = [], model.next_clean_batch

        def spy():
            batch = draw()
            drawn.append(batch.idx.tolist())
            return batch

        model.next_clean_batch = spy
        callbacks = [ExactResume(), *([StopAfterFirstEpoch()] if stop else [])]
        fit(model, dm, root, epochs=2, ckpt_path=ckpt_path, callbacks=callbacks, limit_val_batches=0)
        return drawn

    straight = run(tmp_path / "straight")
    first = run(tmp_path / "first", stop=True)
    written = next((tmp_path / "first").rglob("*.ckpt"))  # the epoch-end checkpoint the run wrote itself
    resumed = run(tmp_path / "resumed", ckpt_path=str(written))
    assert len(straight) == 10 and first == straight[:5]
    assert resumed == straight[5:]


@pytest.mark.parametrize(
    "flat, learner, init_args",
    [
        (
            {"lookahead_lr": 1.0, "meta_learning_rate": 1.0},
            "MetaLearner",
            {"lookahead_lr": 1.0, "meta_learning_rate": 1.0},
        ),
        ({"mixer": "network", "meta_learning_rate": 0.05}, "NetworkMetaLearner", {"meta_learning_rate": 0.05}),
        (
            {"algorithm": "official", "select_every": 1, "warm_epoch": 1, "grad_fit": 2, "meta_steps": 1},
            "OfficialMetaLearner",
            {"select_every": 1, "warm_epoch": 1, "grad_fit": 2},
        ),
    ],
)
def test_the_deprecated_flat_keys_train_exactly_as_the_meta_argument(
    assets, tmp_path, caplog, flat, learner, init_args
):
    """Old YAMLs, scripts and checkpoints (flat keys in their hyper-parameters) keep working: the same run, the same
    weights and the same hyper-parameters as the ``meta:`` form, and a one-line notice naming the new key."""
    import logging

    from kdlight.components.meta import MetaLearner

    caplog.set_level(logging.INFO)
    runs = []
    for kwargs in (flat, {"meta": {"class_path": learner, "init_args": init_args}}):
        seed_everything(0)
        dm = noisy_dm(assets)
        model = AdaptiveLossMixingKD(teacher=str(assets["teacher"]), learning_rate=1e-3, task=dm.task, **kwargs)
        fit(model, dm, tmp_path / str(len(runs)), epochs=2, enable_checkpointing=False, limit_val_batches=0)
        runs.append(
            (dict(model.hparams), {k: v for k, v in model.state_dict().items() if not k.startswith("teacher.")})
        )
    (flat_hparams, flat_state), (meta_hparams, meta_state) = runs
    assert type(model.meta) is MetaLearner.registry[learner]
    assert flat_hparams == meta_hparams and "algorithm" not in meta_hparams and "mixer" not in meta_hparams
    assert flat_state.keys() == meta_state.keys() and all(torch.equal(flat_state[k], meta_state[k]) for k in flat_state)
    assert any(k.startswith("meta.mixer.") for k in meta_state)
    notices = [r.getMessage() for r in caplog.records if "flat keys" in r.getMessage()]
    assert len(notices) == 1 and "meta:" in notices[0] and sorted(flat)[0] in notices[0]
    rebuilt = AdaptiveLossMixingKD(**meta_hparams)  # what load_from_checkpoint does with the saved hparams
    assert rebuilt.meta.to_config() == model.meta.to_config()


def test_meta_learners_check_their_own_settings():
    from kdlight.components.meta import NetworkMetaLearner
    from kdlight.components.meta_official import OfficialMetaLearner

    with pytest.raises(KDLightError, match="meta_every does not apply to OfficialMetaLearner"):
        OfficialMetaLearner(meta_every=2)
    with pytest.raises(KDLightError, match="center_meta_grad does not apply to NetworkMetaLearner"):
        NetworkMetaLearner(center_meta_grad=True)
    with pytest.raises(KDLightError, match="not a meta-learner"):
        AdaptiveLossMixingKD(teacher="x", meta={"class_path": "MetaLerner"})
    with pytest.raises(KDLightError, match="give init_lambda in meta.init_args, not beside meta"):
        AdaptiveLossMixingKD(teacher="x", meta={"class_path": "MetaLearner"}, init_lambda=0.5)
    with pytest.raises(KDLightError, match="set model.temperature only"):
        AdaptiveLossMixingKD(
            teacher="x", temperature=2.0, meta={"class_path": "MetaLearner", "init_args": {"temperature": 4.0}}
        )


@pytest.mark.parametrize("name", ["alm.yaml", "alm_mixer.yaml", "alm_official.yaml"])
def test_a_recipe_in_the_old_flat_form_is_one_line_naming_the_meta_key(assets, tmp_path, capsys, name):
    """The shipped recipes before ``meta:`` wrote the learner's settings flat under init_args (``algorithm:
    official``, ``mixer: network``, ``meta_learning_rate`` ...): the parser no longer takes them (they made
    ALM's options 23, most of them ignored by the chosen learner); such a YAML is one line naming the new key,
    and nothing is built."""
    from conftest import expect_user_error

    path = recipe(name, assets, tmp_path)
    config = yaml.safe_load(path.read_text())
    init = config["model"]["init_args"]
    meta = init.pop("meta")
    settings = meta.get("init_args", {})
    init.update(settings)
    if meta["class_path"] == "OfficialMetaLearner":
        init["algorithm"] = "official"
    if meta["class_path"] == "NetworkMetaLearner":
        init["mixer"] = "network"
    config["trainer"]["default_root_dir"] = str(tmp_path / "flat")
    flat = tmp_path / f"flat_{name}"
    flat.write_text(yaml.safe_dump(config))
    line = expect_user_error(["fit", "--config", str(flat)], capsys, r"--model\.\w+ moved: write it as model\.meta\.")
    moved = line.split("--model.")[1].split(" ")[0]
    assert moved in init and moved in (*settings, "algorithm", "mixer")
    assert not (tmp_path / "flat").exists()
