"""The zero-shot adversary measured: the generator's ascent raises the divergence, a trained masked LM
rewrites with real tokens, BERT masking, MaskedLMPretraining's recipe and export, the divergence curves."""

import logging
from pathlib import Path

import pytest
import torch
import yaml
from lightning import Trainer, seed_everything
from transformers import AutoModelForMaskedLM, AutoTokenizer

from conftest import generator_step_gains, wikitext_lines
from kdlight.callbacks_zeroshot import DIVERGENCE_KEYS, AdversaryMonitor
from kdlight.components import AdversarialGenerator
from kdlight.components.rewriting import known_token_share
from kdlight.data import MaskedLMCorpusDataModule, OutOfDomainCorpus, TextClassificationDataModule, ZeroShotDataModule
from kdlight.data.mlm import IGNORE_INDEX, mask_tokens
from kdlight.errors import KDLightError
from kdlight.models.hf import load_generator
from kdlight.models.students import TruncatedTeacher
from kdlight.modules import MaskedLMPretraining, ZeroShotAdversarialKD

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlm_corpus") / "wiki.txt"
    path.write_text("\n".join(wikitext_lines(80)) + "\n")
    return path


def quiet_trainer(tmp_path, max_steps, **kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **{"logger": False, "limit_val_batches": 0, **kwargs},
    )


# ------------------------------------------------------------------------------------ masking
def test_bert_masking_chooses_15_percent_and_splits_them_80_10_10():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 60, (400, 50), generator=generator)
    ids[:, 0], ids[:, 40], ids[:, 41:] = 2, 3, 0
    attention = (ids != 0).long()
    inputs, labels = mask_tokens(
        ids, attention, torch.tensor([0, 2, 3]), 4, torch.arange(5, 60), 0.15, 0.8, 0.1, generator
    )
    chosen = labels != IGNORE_INDEX
    assert not chosen[:, 0].any() and not chosen[:, 40:].any()  # never special or padding
    assert abs(chosen.float().sum() / (400 * 39) - 0.15) < 0.01
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    masked = (inputs == 4) & chosen
    kept = (inputs == ids) & chosen
    assert abs(masked.sum() / chosen.sum() - 0.8) < 0.02
    # random replacements may hit the original token by chance (1 in 55): kept is ~10 % + a little
    assert abs(kept.sum() / chosen.sum() - 0.1) < 0.02
    again = mask_tokens(ids, attention, torch.tensor([0, 2, 3]), 4, torch.arange(5, 60), generator=torch.Generator())
    assert again[0].shape == ids.shape


def test_mlm_corpus_reads_every_source_and_holds_examples_out(assets, tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("Alpha good movie plot was fine here today. " * 3 + "\n")
    second.write_text("Beta bad film story was dull and boring there. " * 3 + "\n")
    data = MaskedLMCorpusDataModule(
        sources=[str(first), str(second)], tokenizer=str(assets["tokenizer"]), val_examples=1, cache_dir=str(tmp_path)
    )
    built = data.build()
    only_first = MaskedLMCorpusDataModule(
        sources=[str(first)], tokenizer=str(assets["tokenizer"]), val_examples=1, cache_dir=str(tmp_path)
    )
    assert len(built) > len(only_first.build())  # the second source's examples are in
    assert data.cache_path() != only_first.cache_path()
    data.setup()
    assert len(data.dataset) + len(data.val_dataset) == len(built)
    with pytest.raises(KDLightError, match="sources"):
        MaskedLMCorpusDataModule(source=str(first))


# ------------------------------------------------------------------------ MaskedLMPretraining
def train_tiny_mlm(assets, corpus_file, tmp_path, steps: int) -> tuple[MaskedLMPretraining, Trainer]:
    seed_everything(0)
    module = MaskedLMPretraining(
        model=str(assets["encoder"]),
        learning_rate=3e-3,
        head_learning_rate=1e-2,
        warmup_ratio=0.0,
        export_dir=str(tmp_path / "export"),
        export_best=False,
        tokenizer=str(assets["tokenizer"]),
    )
    data = MaskedLMCorpusDataModule(
        sources=[str(corpus_file)],
        tokenizer=str(assets["tokenizer"]),
        max_length=32,
        batch_size=16,
        val_examples=32,
        cache_dir=str(tmp_path / "cache"),
    )
    trainer = quiet_trainer(
        tmp_path, steps, limit_val_batches=None, val_check_interval=steps, check_val_every_n_epoch=None
    )
    trainer.fit(module, datamodule=data)
    return module, trainer


def test_mlm_pretraining_learns_and_exports_a_stock_masked_lm(assets, corpus_file, tmp_path):
    fresh = MaskedLMPretraining(model=str(assets["encoder"]), tokenizer=str(assets["tokenizer"]))
    data = MaskedLMCorpusDataModule(
        sources=[str(corpus_file)],
        tokenizer=str(assets["tokenizer"]),
        max_length=32,
        batch_size=16,
        val_examples=32,
        cache_dir=str(tmp_path / "cache"),
    )
    before = quiet_trainer(tmp_path / "fresh", 1, limit_val_batches=None).validate(fresh, datamodule=data)[0]
    module, trainer = train_tiny_mlm(assets, corpus_file, tmp_path, steps=60)
    after = trainer.callback_metrics
    # the tiny corpus is random filler words around one cue word: little is predictable, but far more than
    # the fresh head (identity transform, decoder tied to random embeddings) predicts
    numbers = {k: (float(before[k]), float(after[k])) for k in ("val/accuracy", "val/perplexity")}
    assert numbers["val/accuracy"][1] > numbers["val/accuracy"][0], numbers
    assert numbers["val/perplexity"][1] < numbers["val/perplexity"][0] / 2, numbers
    assert float(after["val/score"]) == float(after["val/accuracy"])  # the checkpoint's pick
    stock = AutoModelForMaskedLM.from_pretrained(tmp_path / "export")  # no kdlight needed
    assert type(stock).__name__ == "BertForMaskedLM"
    head = stock.cls.predictions.transform.dense.weight
    assert torch.equal(head, module.model.cls.predictions.transform.dense.weight)
    # the same held-out masking every time: a second validation of the same weights gives the same numbers
    again = quiet_trainer(tmp_path / "again", 1, limit_val_batches=None).validate(module, datamodule=data)[0]
    assert again["val/accuracy"] == pytest.approx(float(after["val/accuracy"]))


def test_train_layers_freezes_the_encoder_below_the_top_blocks(assets):
    module = MaskedLMPretraining(model=str(assets["encoder"]), train_layers=1)
    trained = {name for name, p in module.model.named_parameters() if p.requires_grad}
    assert trained and all(".layer.3." in n or n.startswith("cls.") for n in trained)
    assert not any("embeddings" in n for n in trained)
    with pytest.raises(KDLightError, match="train_layers"):
        MaskedLMPretraining(model=str(assets["encoder"]), train_layers=9)


def test_fresh_head_log_line_says_untrained_and_names_the_recipe(assets, caplog):
    with caplog.at_level(logging.INFO):
        load_generator(str(assets["encoder"]))
    assert "UNTRAINED" in caplog.text and "configs/zeroshot/generator.yaml" in caplog.text


def test_generator_recipe_is_the_standard_masking_on_the_offline_corpora():
    config = yaml.safe_load((ROOT / "configs" / "zeroshot" / "generator.yaml").read_text())
    model = config["model"]["init_args"]
    assert config["model"]["class_path"] == "MaskedLMPretraining"
    assert (model["mask_rate"], model["mask_share"], model["random_share"]) == (0.15, 0.8, 0.1)
    assert config["data"]["init_args"]["sources"] == ["packaged/wiki_summaries", "packaged/lee_news"]
    assert model["export_dir"].endswith("generators/minilm-mlm")


# ------------------------------------------------------------------ rewrites of a trained generator
def rewrite_corpus_batch(generator: AdversarialGenerator, assets, corpus_file, tmp_path) -> tuple[dict, dict]:
    tokenizer = AutoTokenizer.from_pretrained(assets["tokenizer"])
    corpus = OutOfDomainCorpus(
        source=str(corpus_file), tokenizer=str(assets["tokenizer"]), max_length=32, cache_dir=str(tmp_path / "c")
    )
    rows = corpus.build()[:64]
    from kdlight.data.base import Collator

    batch = Collator(tokenizer.pad_token_id)([{k: rows[k][i] for k in rows} for i in range(len(rows["idx"]))])
    generator.prepare(tokenizer, generator.network)  # the network stands in for a teacher of its vocabulary
    return batch, generator.rewrite_batch(batch, step=0)


def test_a_trained_generator_rewrites_with_real_tokens_more_often_than_a_fresh_head(assets, corpus_file, tmp_path):
    """The fresh head (identity transform, decoder tied to random embeddings) proposes any token; a masked LM
    trained on the text proposes the tokens that occur in it. Scored by the share of rewritten tokens that
    are non-special tokens seen in the corpus (the tiny vocabulary also holds letters the text never uses)."""
    train_tiny_mlm(assets, corpus_file, tmp_path / "mlm", steps=60)
    tokenizer = AutoTokenizer.from_pretrained(assets["tokenizer"])
    corpus = OutOfDomainCorpus(
        source=str(corpus_file), tokenizer=str(assets["tokenizer"]), max_length=32, cache_dir=str(tmp_path / "c")
    )
    known = torch.tensor(sorted({i for ids in corpus.build()["input_ids"] for i in ids}))
    special = torch.tensor(tokenizer.all_special_ids)
    shares = {}
    for name, source in (("fresh", assets["encoder"]), ("trained", tmp_path / "mlm" / "export")):
        torch.manual_seed(0)
        generator = AdversarialGenerator(str(source), mask_rate=0.3).load()
        generator.network.eval()
        batch, rewritten = rewrite_corpus_batch(generator, assets, corpus_file, tmp_path)
        shares[name] = known_token_share(batch["input_ids"], rewritten["input_ids"], known, special)
        assert rewritten["input_ids"].shape == batch["input_ids"].shape
    assert shares["trained"] > shares["fresh"] + 0.2, shares


# ----------------------------------------------------------------------------- the ascent's sign
def zero_shot_module(assets, **kwargs) -> ZeroShotAdversarialKD:
    return ZeroShotAdversarialKD(
        teacher=str(assets["teacher"]),
        tokenizer=str(assets["tokenizer"]),
        label_names=["negative", "positive"],
        **{"generator": str(assets["encoder"]), "student": TruncatedTeacher(1), **kwargs},
    )


def zero_shot_data(assets, corpus_file, cache) -> ZeroShotDataModule:
    d = assets["data"]
    task = TextClassificationDataModule(
        val_file=str(d / "validation.csv"), test_file=str(d / "test.csv"), label_names=["negative", "positive"]
    )
    return ZeroShotDataModule(
        task=task,
        corpus=OutOfDomainCorpus(source=str(corpus_file), cache_dir=str(cache), num_examples=16),
        tokenizer=str(assets["tokenizer"]),
        max_length=32,
        batch_size=16,
    )


def test_generator_steps_raise_the_divergence_on_their_batch(assets, corpus_file, tmp_path):
    """Each generator step of a real fit is measured on its own batch with its own noise, before and after the
    update, on the soft Gumbel-softmax rewrite (the smooth quantity whose gradient the straight-through rows
    carry; a small step seldom flips a hard token): gradient *ascent* must raise the teacher-student
    divergence. A flipped sign (descent) lowers it, and this test fails (checked by flipping it)."""
    seed_everything(0)
    module = zero_shot_module(
        assets,
        generator_steps=8,
        student_steps=1,
        generator=AdversarialGenerator(str(assets["encoder"]), learning_rate=1e-3),
        show_rewrites_every=0,
    )
    with torch.no_grad():  # random tiny models agree to ~1e-6 (float noise); sharp, opposed heads disagree
        module.teacher.classifier.weight.mul_(30.0)
        module.student.classifier.weight.mul_(-30.0)
    trainer = quiet_trainer(tmp_path, 1)  # max_steps counts student updates: 8 generator steps, 1 student
    gains = generator_step_gains(module, trainer, zero_shot_data(assets, corpus_file, tmp_path / "corpus"))
    assert int(module.generator.steps) == 8 and len(gains) == 8
    assert sum(g > 0 for g in gains) >= 7, gains
    monitor = next(c for c in trainer.callbacks if isinstance(c, AdversaryMonitor))
    assert [h["adversary/generator_step"] for h in monitor.history] == list(range(1, 9))


def test_divergence_curves_reach_the_logger_on_every_generator_step(assets, corpus_file, tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    seed_everything(0)
    module = zero_shot_module(assets, generator_steps=2, student_steps=2, show_rewrites_every=0)
    trainer = quiet_trainer(tmp_path, 4, logger=CSVLogger(tmp_path), log_every_n_steps=50)  # 4 student updates
    trainer.fit(module, datamodule=zero_shot_data(assets, corpus_file, tmp_path / "corpus"))
    rows = list(csv.DictReader((Path(trainer.log_dir) / "metrics.csv").open()))
    measured = [r for r in rows if r.get(DIVERGENCE_KEYS[0])]
    # 8 batches = 2 cycles of 2 generator + 2 student steps, each generator step logged despite log_every_n_steps=50
    assert [int(float(r["adversary/generator_step"])) for r in measured] == [1, 2, 3, 4]
    for row in measured:
        assert all(float(row[k]) > -1e-6 for k in DIVERGENCE_KEYS), row  # KL, up to rounding
    assert zero_shot_module(assets, inputs="out_of_domain").configure_callbacks() == []  # nothing to watch
    off = zero_shot_module(assets, track_divergence=False).configure_callbacks()[0]
    assert off.track_divergence is False


def test_zero_shot_recipe_uses_the_trained_generator_and_chooses_nothing_on_task_labels():
    config = yaml.safe_load((ROOT / "configs" / "zeroshot" / "offline.yaml").read_text())
    model = config["model"]["init_args"]
    assert model["generator"]["init_args"]["network"].endswith("generators/minilm-mlm")
    assert model["export_best"] is False and config["checkpoint"]["monitor"] is None


def test_a_missing_trained_generator_names_the_recipe(tmp_path):
    with pytest.raises(KDLightError, match="configs/zeroshot/generator.yaml"):
        load_generator(str(tmp_path / "generators" / "minilm-mlm"))
