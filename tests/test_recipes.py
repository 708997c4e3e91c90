"""Every offline recipe under configs/ fits and tests (``fast_dev_run``) with tiny models in place of its own.

tests/test_configs.py checks that each YAML parses; this runs each one whose data and models are offline (the
packaged datasets, ``packaged/all-MiniLM-L6-v2`` and the ``runs/...`` exports of earlier recipes), with the model
sources swapped for tiny random BERTs of the same role (torchgeo's pattern): a recipe that parses but cannot train,
say a student spec that does not fit its teacher, fails here. Hub recipes (GLUE, bert-base-uncased) are skipped.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch.utilities.model_helpers import is_overridden

import kdlight.data
from conftest import make_tokenizer, tiny_config
from kdlight.assets import cache_dir
from kdlight.cli import cli

ROOT = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in ROOT.rglob("*.yaml") if p.parent.name != "scale")
# arguments that name a model (or the tokenizer of one)
MODEL_KEYS = {"teacher", "teachers", "model", "name_or_path", "generator", "network", "tokenizer", "reference_model"}
PACKAGED_ENCODER = "packaged/all-MiniLM-L6-v2"
# packaged datasets the recipes read; the test's cache links them (nothing of the real cache is written)
PACKAGED_DATA = ("rotten_tomatoes", "tweets", "wiki_summaries", "lee_news")
# label counts of the offline labelled datamodules, for the tiny teacher that stands in for a fine-tuned one
LABELS = {"TweetSentimentDataModule": 3}
TINY_RANK = 8  # a tiny vocabulary and width take no rank-128 factorisation
# training-set sizes, capped: tokenising, caching teacher logits and pruning vocabularies over 6,000+ rows
# was most of each case's time
DATA_SIZE_KEYS = {"max_train_examples", "max_unlabelled"}
TINY_DATA = 256


def walk(node: Any, key: str | None = None):
    """(key, value) of every scalar in a YAML tree; list items get their list's key."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, k)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)
    else:
        yield key, node


def model_sources(config: dict) -> list[str]:
    return [v for k, v in walk(config) if k in MODEL_KEYS and isinstance(v, str)]


def is_offline(config: dict) -> bool:
    classes = {v for k, v in walk(config) if k == "class_path"}
    # packaged weights, an earlier recipe's export, or one built into the kdlight cache (the trained generator)
    local = all(s.startswith(("packaged/", "runs/", "~/.cache/kdlight/")) for s in model_sources(config))
    return local and "GLUEDataModule" not in classes


OFFLINE = [p for p in RECIPES if is_offline(yaml.safe_load(p.read_text()))]


def replace_models(node: Any, tiny: dict[str, Path], labels: int, key: str | None = None) -> Any:
    """The recipe with every model source a tiny model of the same role, and ranks that fit a tiny model."""
    if isinstance(node, dict):
        return {k: replace_models(v, tiny, labels, k) for k, v in node.items()}
    if isinstance(node, list):
        return [replace_models(v, tiny, labels, key) for v in node]
    if key == "embedding_rank" and isinstance(node, int):
        return min(node, TINY_RANK)
    if key in DATA_SIZE_KEYS and isinstance(node, int):
        return min(node, TINY_DATA)  # what is tested is that the recipe trains, not on how many rows
    if key not in MODEL_KEYS or not isinstance(node, str):
        return node
    if key in ("teacher", "teachers", "reference_model") and node.startswith("runs/"):
        return str(tiny[f"teacher{labels}"])  # an earlier recipe's fine-tuned export
    if node == PACKAGED_ENCODER or node.startswith(("runs/", "~/.cache/kdlight/")):
        # the packaged encoder, an earlier recipe's general-distilled encoder, or the trained generator
        return str(tiny["encoder"])
    return node


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny encoder and tiny 2- and 3-label teachers, 6 blocks like all-MiniLM-L6-v2, 512 positions."""
    from transformers import BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_models")
    tokenizer = make_tokenizer(root / "tokenizer")
    models = {
        "encoder": BertModel,
        "teacher2": BertForSequenceClassification,
        "teacher3": BertForSequenceClassification,
    }
    paths = {}
    # conftest's tiny vocabulary lists some letters twice, so its ids run past len(tokenizer); real text reaches them
    vocab_size = max(tokenizer.get_vocab().values()) + 1
    for name, cls in models.items():
        config = tiny_config(vocab_size, num_labels=int(name[-1]) if name != "encoder" else 2, layers=6)
        config.max_position_embeddings = 512
        cls(config).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = root / name
    return paths


def test_the_offline_recipes_are_found():
    names = {str(p.relative_to(ROOT)) for p in OFFLINE}
    assert {"quickstart/teacher.yaml", "quickstart/kd.yaml", "compact/general.yaml", "zeroshot/offline.yaml"} <= names
    assert not any(name.startswith("glue/") for name in names)


def test_the_tiny_models_replace_every_model_source(tiny):
    for recipe in OFFLINE:
        patched = replace_models(yaml.safe_load(recipe.read_text()), tiny, 2)
        assert all(Path(source).is_dir() for source in model_sources(patched)), recipe


@pytest.mark.slow
@pytest.mark.parametrize("recipe", OFFLINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_fits_and_tests_with_tiny_models(recipe, tiny, tmp_path, monkeypatch):
    config = yaml.safe_load(recipe.read_text())
    labels = max([n for k, v in walk(config) if k == "class_path" for name, n in LABELS.items() if v == name] or [2])
    path = tmp_path / recipe.name
    patched = replace_models(config, tiny, labels)
    data = patched.get("data", {})
    data_class = getattr(kdlight.data, str(data.get("class_path", "")).rsplit(".", 1)[-1], None)
    # the noisy-label wrapper takes the loader settings (this one included) as keyword arguments for the task's own
    takes = set(inspect.signature(data_class).parameters) if data_class is not None else set()
    for key in DATA_SIZE_KEYS:  # a recipe that trains on every row (caching the teacher's logits) gets the caps too
        if key in takes or (key == "max_train_examples" and "loader_settings" in takes):
            data.setdefault("init_args", {}).setdefault(key, TINY_DATA)
    path.write_text(yaml.safe_dump(patched))
    cache = tmp_path / "cache"  # teacher logits and tokenised corpora go here, not into the real cache
    cache.mkdir()
    for name in PACKAGED_DATA:
        if (cache_dir() / name).exists():
            os.symlink(cache_dir() / name, cache / name)
    monkeypatch.setenv("KDLIGHT_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # the recipes' relative runs/ folders
    runner = cli(
        [
            "--config",
            str(path),
            "--trainer.fast_dev_run=1",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ],
        run=False,
    )
    runner.trainer.fit(runner.model, datamodule=runner.datamodule)
    # a batch trained (zero-shot KD's first batch is a generator step, which max_steps and global_step do not count)
    assert runner.trainer.fit_loop.epoch_loop.batch_progress.total.completed >= 1
    assert runner.trainer.global_step >= 1 or getattr(runner.model, "trains_generator", False)
    if is_overridden("test_dataloader", runner.datamodule):  # general distillation's unlabelled text has no test set
        metrics = runner.trainer.test(runner.model, datamodule=runner.datamodule, verbose=False)[0]
        assert "test/score" in metrics and torch.isfinite(torch.tensor(metrics["test/score"]))
