"""ZeroShotAdversarialKD: the generator's pieces, the alternating updates, ablations, guards, CLI runs."""

from pathlib import Path

import pytest
import torch
from transformers import BertForMaskedLM, BertForSequenceClassification

import kdlight.data.text
from conftest import generator_config, tiny_config, trainer_args, wikitext_lines
from kdlight.checkpoints import load_checkpoint
from kdlight.cli import main
from kdlight.components.rewriting import banned_token_ids, choose_mask, embed_with_replacements, sample_replacements
from kdlight.data import OutOfDomainCorpus, TextClassificationDataModule, ZeroShotDataModule
from kdlight.errors import KDLightError
from kdlight.models.hf import load_generator
from kdlight.models.students import TruncatedTeacher
from kdlight.modules import ZeroShotAdversarialKD
from kdlight.modules.manual import STEP_COUNT_KEY

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "zeroshot" / "offline.yaml"


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "wiki.txt"
    path.write_text("\n".join(wikitext_lines(60)) + "\n")
    return path


def zero_shot_data(assets, corpus_file, cache, **kwargs) -> ZeroShotDataModule:
    d = assets["data"]
    task = TextClassificationDataModule(
        val_file=str(d / "validation.csv"), test_file=str(d / "test.csv"), label_names=["negative", "positive"]
    )
    return ZeroShotDataModule(
        task=task,
        corpus=OutOfDomainCorpus(source=str(corpus_file), cache_dir=str(cache)),
        tokenizer=str(assets["tokenizer"]),
        max_length=32,
        batch_size=8,
        **kwargs,
    )


def make_module(assets, **kwargs) -> ZeroShotAdversarialKD:
    kwargs.setdefault("generator", str(assets["encoder"]))
    kwargs.setdefault("student", TruncatedTeacher(1))
    return ZeroShotAdversarialKD(
        teacher=str(assets["teacher"]),
        tokenizer=str(assets["tokenizer"]),
        label_names=["negative", "positive"],
        **kwargs,
    )


# ----------------------------------------------------------------------------- generator pieces
def test_mask_covers_the_rate_of_real_tokens_and_never_special_ones():
    torch.manual_seed(0)
    ids = torch.randint(5, 60, (64, 40))
    ids[:, 0], ids[:, 30], ids[:, 31:] = 2, 3, 0  # [CLS] ... [SEP] [PAD]...
    attention = (ids != 0).long()
    mask = choose_mask(ids, attention, torch.tensor([0, 2, 3]), 0.3)
    assert not mask[:, 0].any() and not mask[:, 30:].any()
    assert abs(mask.float().sum() / (64 * 29) - 0.3) < 0.03
    one_token = choose_mask(ids[:1, :3], attention[:1, :3], torch.tensor([0, 2, 3]), 0.01)
    assert one_token.sum() == 1  # a row with something to rewrite always gets at least one position


def test_gumbel_rows_are_one_hot_straight_through_and_avoid_banned_tokens():
    torch.manual_seed(0)
    logits = torch.randn(200, 12, requires_grad=True)
    banned = torch.tensor([0, 1, 2])
    one_hot = sample_replacements(logits, banned, tau=1.0)
    assert torch.equal(one_hot.sum(-1), torch.ones(200)) and set(one_hot.unique().tolist()) == {0.0, 1.0}
    assert one_hot[:, :3].sum() == 0
    (one_hot * torch.arange(12.0)).sum().backward()
    assert logits.grad.abs().sum() > 0  # the soft sample's gradient reaches the generator's logits


def test_one_hot_rows_enter_each_model_through_its_own_embeddings(assets):
    torch.manual_seed(0)
    config = tiny_config(70)
    model = BertForSequenceClassification(config)
    ids = torch.randint(5, 70, (2, 6))
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 2] = mask[1, 4] = True
    new_tokens = torch.tensor([7, 9])
    embeds = embed_with_replacements(model, ids, mask, torch.nn.functional.one_hot(new_tokens, 70).float())
    expected = ids.clone()
    expected[mask] = new_tokens
    assert torch.allclose(embeds, model.get_input_embeddings()(expected))
    with pytest.raises(KDLightError, match="vocabulary mismatch"):
        embed_with_replacements(model, ids, mask, torch.zeros(2, 71))


def test_bare_encoder_gets_a_tied_identity_mlm_head(assets):
    generator = load_generator(str(assets["encoder"]))
    assert isinstance(generator, BertForMaskedLM)
    assert generator.get_output_embeddings().weight is generator.get_input_embeddings().weight
    dense = generator.cls.predictions.transform.dense.weight
    assert torch.equal(dense, torch.eye(*dense.shape))
    from transformers import AutoTokenizer

    banned = banned_token_ids(AutoTokenizer.from_pretrained(assets["tokenizer"]))
    assert banned == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------ module
def fitted(module, data, tmp_path, max_steps, **trainer_kwargs):
    from lightning import Trainer, seed_everything

    seed_everything(0)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        **trainer_kwargs,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    return trainer


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, model):
    return any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_generator_and_student_steps_alternate_and_touch_only_their_own_model(assets, corpus_file, tmp_path):
    module = make_module(
        assets,
        generator_steps=2,
        student_steps=3,
        generator=generator_config(assets, learning_rate=1e-3),
        learning_rate=1e-3,
    )
    teacher, student, generator = snapshot(module.teacher), snapshot(module.student), snapshot(module.generator)
    steps = {"generator": [], "student": []}
    for name in steps:  # record which kind each batch was
        original = getattr(module, f"{name}_step")

        def spy(batch, original=original, name=name):
            steps[name].append(int(module.progress[0]))
            return original(batch)

        setattr(module, f"{name}_step", spy)
    # max_steps counts student updates: 6 of them take 10 batches (2 generator + 3 student steps a cycle)
    trainer = fitted(module, zero_shot_data(assets, corpus_file, tmp_path / "cache"), tmp_path, max_steps=6)
    assert steps == {"generator": [0, 1, 5, 6], "student": [2, 3, 4, 7, 8, 9]}
    assert module.progress.tolist() == [10, 6, 4, 0] and trainer.global_step == 6
    assert not changed(teacher, module.teacher)
    assert changed(student, module.student) and changed(generator, module.generator)


def test_generator_step_moves_only_the_generator(assets, corpus_file, tmp_path):
    module = make_module(
        assets, generator_steps=1, student_steps=1, generator=generator_config(assets, learning_rate=1e-2)
    )
    student, generator = snapshot(module.student), snapshot(module.generator)
    data = zero_shot_data(assets, corpus_file, tmp_path / "cache")
    trainer = fitted(module, data, tmp_path, max_steps=-1, max_epochs=1, limit_train_batches=1)
    assert module.progress.tolist() == [1, 0, 1, 0] and trainer.global_step == 0  # generator steps are not counted
    assert not changed(student, module.student) and changed(generator, module.generator)
    assert all(p.grad is None for p in module.student.parameters())  # no student gradient was even computed
    assert module.optimizers()[1].optimizer.param_groups[0]["lr"] == 1e-2


def test_non_finite_losses_are_skipped_counted_and_stop_a_diverged_run(assets, corpus_file, tmp_path):
    module = make_module(assets, generator_steps=1, student_steps=2, max_consecutive_skips=3)
    student, generator = snapshot(module.student), snapshot(module.generator)

    class NaNLoss(torch.nn.Module):
        def forward(self, student_logits, teacher_logits):
            return (student_logits.sum() + teacher_logits.sum()) * float("nan")

    module.kd_loss = NaNLoss()
    data = zero_shot_data(assets, corpus_file, tmp_path / "cache", max_train_examples=24)
    with pytest.raises(KDLightError, match="3 non-finite losses in a row: the run has diverged"):
        fitted(module, data, tmp_path, max_steps=6)  # every step is skipped, so max_steps is never reached
    assert module.progress.tolist() == [2, 0, 0, 3]  # the third batch raised before it was counted
    assert not changed(student, module.student) and not changed(generator, module.generator)


@pytest.mark.parametrize(
    "inputs, perturbation", [("out_of_domain", "generator"), ("adversarial", "random"), ("random_tokens", "generator")]
)
def test_ablations_train_without_a_generator(assets, corpus_file, tmp_path, inputs, perturbation):
    module = make_module(assets, inputs=inputs, generator=generator_config(assets, perturbation=perturbation))
    assert module.generator.network is None and not any(k.startswith("generator.network.") for k in module.state_dict())
    data = zero_shot_data(assets, corpus_file, tmp_path / "cache")
    rewrites = []
    original = module.generator.rewrite

    def spy(batch):
        out = original(batch)
        rewrites.append((batch["input_ids"], out))
        return out

    module.generator.rewrite = spy
    fitted(module, data, tmp_path, max_steps=3)
    assert module.progress.tolist() == [3, 3, 0, 0]  # every batch is a student step
    if inputs == "out_of_domain":
        assert rewrites == []
        return
    before, after = rewrites[0]
    real = before > 4
    share = (before != after)[real].float().mean().item()
    assert (before == after)[~real].all()  # special tokens and padding untouched
    assert (after[real] > 4).all()  # never a special token
    assert share > 0.9 if inputs == "random_tokens" else 0.1 < share < 0.5


def test_mismatched_vocabularies_fail_before_training(assets, tmp_path):
    other = tmp_path / "other_generator"
    BertForMaskedLM(tiny_config(99)).save_pretrained(other)
    with pytest.raises(KDLightError, match="share one vocabulary.*'generator': 99"):
        make_module(assets, generator=str(other))
    with pytest.raises(KDLightError, match="inputs must be one of"):
        make_module(assets, inputs="wikipedia")
    with pytest.raises(KDLightError, match="mask_rate"):
        make_module(assets, generator=generator_config(assets, mask_rate=0))


# ------------------------------------------------------------------------------------- CLI
def recipe_args(assets, corpus_file, root) -> list[str]:
    d = assets["data"]
    return [
        "--config",
        str(CONFIG),
        f"--model.teacher={assets['teacher']}",
        f"--model.generator={assets['encoder']}",
        "--model.student.num_layers=1",
        "--model.generator_steps=2",
        "--model.student_steps=3",
        "--data.task=TextClassificationDataModule",
        f"--data.task.train_file={d / 'train.csv'}",
        f"--data.task.val_file={d / 'validation.csv'}",
        f"--data.task.test_file={d / 'test.csv'}",
        "--data.task.label_names=[negative, positive]",
        f"--data.corpus.source={corpus_file}",
        f"--data.corpus.cache_dir={root / 'corpus'}",
        "--data.batch_size=8",
        "--data.max_length=32",
        *trainer_args(root, **{"--trainer.max_steps": 4, "--trainer.val_check_interval": 2}),
    ]


def test_offline_recipe_fits_and_tests_without_reading_the_task_training_file(
    assets, corpus_file, tmp_path, monkeypatch, capsys
):
    """The proof that no task training example is used: reading the training file fails the test."""
    train_file = str(assets["data"] / "train.csv")
    read = []
    real_read_table = kdlight.data.text.read_table

    def guarded(path, *args, **kwargs):
        read.append(str(path))
        if str(path) == train_file:
            raise AssertionError("the task's training file was read")
        return real_read_table(path, *args, **kwargs)

    monkeypatch.setattr(kdlight.data.text, "read_table", guarded)
    main(["fit", *recipe_args(assets, corpus_file, tmp_path)])
    assert read and train_file not in read
    last = sorted(tmp_path.rglob("last.ckpt"))[-1]
    checkpoint = load_checkpoint(last)
    # max_steps 4 counts student updates: 8 batches, 4 student steps, 4 generator steps
    assert checkpoint["state_dict"]["progress"].tolist()[:3] == [8, 4, 4] and checkpoint["global_step"] == 4
    assert any(k.startswith("generator.network.") for k in checkpoint["state_dict"])
    assert not any(k.startswith("teacher.") for k in checkpoint["state_dict"])
    assert (tmp_path / "export" / "config.json").is_file()
    capsys.readouterr()
    main(["test", *recipe_args(assets, corpus_file, tmp_path), f"--ckpt_path={last}"])
    out = capsys.readouterr().out
    assert "test/pct_of_teacher" in out and train_file not in read


def test_resume_restores_the_cycle_and_the_generator(assets, corpus_file, tmp_path):
    main(["fit", *recipe_args(assets, corpus_file, tmp_path)])
    last = sorted(tmp_path.rglob("last.ckpt"))[-1]
    saved = load_checkpoint(last)
    resumed = tmp_path / "resumed"
    args = recipe_args(assets, corpus_file, resumed)
    args[args.index("--trainer.max_steps=4")] = "--trainer.max_steps=6"
    main(["fit", *args, f"--ckpt_path={last}"])
    final = load_checkpoint(sorted(resumed.rglob("last.ckpt"))[-1])
    assert final["state_dict"]["progress"].tolist()[:3] == [
        10,
        6,
        4,
    ]  # batches 8, 9 are the cycle's 4th and 5th: student steps
    assert len(final["optimizer_states"]) == 2
    weight = "generator.network.cls.predictions.transform.dense.weight"
    assert torch.equal(saved["state_dict"][weight], final["state_dict"][weight])  # restored, then not stepped
    assert final["state_dict"]["generator.steps"] == 4


def test_a_checkpoint_from_before_the_generator_component_resumes_the_same(assets, corpus_file, tmp_path):
    """Older checkpoints kept the generator's weights beside the state dict (``kdlight_generator``), and their
    global step counted the generator's updates too (8 = 4 student + 4 generator steps here)."""
    main(["fit", *recipe_args(assets, corpus_file, tmp_path)])
    last = sorted(tmp_path.rglob("last.ckpt"))[-1]
    checkpoint = torch.load(last, weights_only=False)
    del checkpoint[STEP_COUNT_KEY]
    checkpoint["global_step"] += 4
    steps = checkpoint["loops"]["fit_loop"]["epoch_loop.manual_optimization.optim_step_progress"]
    for counts in steps.values():
        counts.update({k: v + 4 for k, v in counts.items()})
    state = checkpoint["state_dict"]
    del state["generator.steps"]
    prefix = "generator.network."
    checkpoint["kdlight_generator"] = {k[len(prefix) :]: state.pop(k) for k in list(state) if k.startswith(prefix)}
    legacy = tmp_path / "legacy.ckpt"
    torch.save(checkpoint, legacy)
    finals = []
    for name, ckpt in (("current", last), ("legacy", legacy)):
        args = recipe_args(assets, corpus_file, tmp_path / name)
        args[args.index("--trainer.max_steps=4")] = "--trainer.max_steps=6"
        main(["fit", *args, f"--ckpt_path={ckpt}"])
        finals.append(load_checkpoint(sorted((tmp_path / name).rglob("last.ckpt"))[-1]))
    current, upgraded = finals
    assert "kdlight_generator" not in upgraded and upgraded["state_dict"]["generator.steps"] == 4
    current, upgraded = current["state_dict"], upgraded["state_dict"]
    assert current.keys() == upgraded.keys() and all(torch.equal(current[k], upgraded[k]) for k in current)


def test_cached_teacher_logits_serve_the_out_of_domain_inputs_and_the_teacher_runs_only_on_rewrites(
    assets, corpus_file, tmp_path
):
    """The teacher's logits on the fixed corpus never change: with cache_teacher_logits the teacher runs
    live only on the generator's rewrites (once per generator or student step instead of twice per student step)."""
    from lightning import Callback, Trainer, seed_everything

    class CountTeacherCalls(Callback):
        calls = 0

        def on_train_start(self, trainer, module):
            module.teacher.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def fit(cache: bool):
        seed_everything(0)
        module = make_module(
            assets,
            generator_steps=1,
            student_steps=2,
            cache_teacher_logits=cache,
            teacher_cache_dir=str(tmp_path / "teacher_logits"),
            track_divergence=False,  # the monitor's own teacher passes are not the cache's business
        )
        counter = CountTeacherCalls()
        trainer = Trainer(
            max_steps=4,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            accelerator="cpu",
            callbacks=[counter],
            default_root_dir=tmp_path / f"run_{cache}",
        )
        trainer.fit(module, datamodule=zero_shot_data(assets, corpus_file, tmp_path / f"corpus_{cache}"))
        return module, counter.calls

    live, live_calls = fit(False)
    cached, cached_calls = fit(True)
    # 6 batches = 2 cycles of (1 generator step, 2 student steps)
    assert (live_calls, cached_calls) == (2 + 4 * 2, 2 + 4 * 1)
    assert int(cached.progress[1]) == 4 and int(cached.progress[2]) == 2
    for (name, a), b in zip(live.student.state_dict().items(), cached.student.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)  # same logits, computed in another batch


def test_generator_rewrites_are_decoded_for_people_every_n_generator_steps(assets, corpus_file, tmp_path):
    import json

    from lightning import Trainer, seed_everything

    from kdlight.components.rewriting import rewrites_markdown

    seed_everything(0)
    module = make_module(assets, generator_steps=2, student_steps=1, show_rewrites_every=2)
    trainer = Trainer(
        max_steps=3,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=zero_shot_data(assets, corpus_file, tmp_path / "corpus"))
    rows = [json.loads(line) for line in (Path(trainer.log_dir) / "rewrites.jsonl").read_text().splitlines()]
    # 9 batches = 3 cycles of 2 generator + 1 student steps: the 2nd, 4th and 6th generator batches, 4 examples each
    assert [r["generator_step"] for r in rows] == [2] * 4 + [4] * 4 + [6] * 4
    for row in rows:
        assert row["spans"] and row["rewritten"] != row["original"]
        assert row["teacher"] in ("negative", "positive") and row["student"] in ("negative", "positive")
        assert all(" -> " in span for span in row["spans"])
    assert rewrites_markdown(rows[:2]).count("\n") == 3
    with pytest.raises(KDLightError, match="show_rewrites_every must be >= 0"):
        make_module(assets, show_rewrites_every=-1)


def test_flat_generator_keys_still_work_and_mean_the_generator_config(assets, caplog):
    """The keys ``generator:`` replaced (old YAMLs, scripts, checkpoints' hyper-parameters) build the same
    generator as the new form, with one notice naming it; given beside the new form they are an error."""
    new = make_module(assets, generator=generator_config(assets, mask_rate=0.2, learning_rate=1e-4, clip=2.0))
    with caplog.at_level("INFO"):
        old = make_module(
            assets, generator=str(assets["encoder"]), mask_rate=0.2, generator_learning_rate=1e-4, generator_clip=2.0
        )
    notices = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(notices) == 1 and "generator: {class_path: AdversarialGenerator" in notices[0]
    assert old.hparams["generator"] == new.hparams["generator"]
    assert not {"mask_rate", "generator_learning_rate", "generator_clip"} & set(old.hparams)
    assert (old.generator.mask_rate, old.generator.learning_rate, old.generator.clip) == (0.2, 1e-4, 2.0)
    rebuilt = ZeroShotAdversarialKD(**old.hparams)  # what load_from_checkpoint does
    assert rebuilt.hparams["generator"] == new.hparams["generator"]
    with pytest.raises(KDLightError, match="give mask_rate as generator.init_args.mask_rate"):
        make_module(assets, generator=generator_config(assets), mask_rate=0.2)


def test_a_flat_generator_key_in_a_yaml_is_one_line_naming_the_new_key(assets, tmp_path, capsys):
    """On the command line and in a YAML the keys ``generator:`` replaced are no options any more: one line names
    where each went, before anything is built."""
    from conftest import expect_user_error

    for flat, new in (
        ("mask_rate=0.2", "generator.init_args.mask_rate"),
        ("generator_clip=1", "generator.init_args.clip"),
    ):
        expect_user_error(
            ["fit", "--model=ZeroShotAdversarialKD", f"--model.teacher={assets['teacher']}", f"--model.{flat}"],
            capsys,
            rf"--model\.{flat.split('=')[0]} moved: write it as model\.{new}$".replace(".init_args", r"\.init_args"),
        )
