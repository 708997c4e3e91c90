"""Teacher-logit caching: same numbers as the live teacher, reused across runs, invalidated on change."""

import torch

from conftest import data_args, trainer_args
from kdlight.cli import cli
from kdlight.data.base import Collator
from kdlight.modules.task import model_inputs
from kdlight.teacher_cache import TeacherLogitCache


def fit(assets, root, cache_dir, cache: bool, steps: int = 4, **data):
    runner = cli(
        [
            "--model=VanillaKD",
            f"--model.teacher={assets['teacher']}",
            "--model.learning_rate=1e-3",
            f"--model.cache_teacher_logits={str(cache).lower()}",
            f"--model.teacher_cache_dir={cache_dir}",
            *data_args(assets, **data),
            *trainer_args(root, **{"--trainer.max_steps": steps}),
        ],
        run=False,
    )
    runner.trainer.fit(runner.model, datamodule=runner.datamodule)
    return runner


def test_cached_training_matches_live_teacher(assets, tmp_path):
    cache_dir = tmp_path / "cache"
    live = fit(assets, tmp_path / "live", cache_dir, cache=False)
    cached = fit(assets, tmp_path / "cached", cache_dir, cache=True)
    assert cached.model.teacher_cache is not None and live.model.teacher_cache is None
    for a, b in zip(live.model.student.parameters(), cached.model.student.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # every training batch is served from the cache, and agrees with the live teacher
    dm, model = cached.datamodule, cached.model
    for batch in dm.train_dataloader():
        hit = model.teacher_cache.lookup(batch["idx"])
        assert hit is not None
        with torch.no_grad():
            assert torch.allclose(hit, model.teacher(**model_inputs(batch)).logits, atol=1e-5)


def test_cache_is_reused_and_invalidated(assets, tmp_path):
    cache_dir = tmp_path / "cache"
    fit(assets, tmp_path / "a", cache_dir, cache=True, steps=1)
    first = set(cache_dir.iterdir())
    assert len(first) == 1
    stamp = next(iter(first)).stat().st_mtime_ns
    fit(assets, tmp_path / "b", cache_dir, cache=True, steps=1)
    assert set(cache_dir.iterdir()) == first and next(iter(first)).stat().st_mtime_ns == stamp  # reused
    fit(
        assets, tmp_path / "c", cache_dir, cache=True, steps=1, **{"--data.max_length": 8}
    )  # truncates: the sentences run to 11 tokens
    assert len(set(cache_dir.iterdir())) == 2  # different tokenisation, new cache


def teacher_and_training_set(assets, tmp_path):
    """The tiny teacher and the tiny task's tokenised training split, as a VanillaKD run would see them."""
    from kdlight.models import load_classifier

    runner = cli(
        ["--model=VanillaKD", f"--model.teacher={assets['teacher']}", *data_args(assets), *trainer_args(tmp_path)],
        run=False,
    )
    runner.datamodule.setup("fit")
    return load_classifier(str(assets["teacher"]), 2), runner.datamodule.splits["train"]


def test_changed_teacher_gets_a_new_fingerprint(assets, tmp_path):
    teacher, train = teacher_and_training_set(assets, tmp_path)
    loader = torch.utils.data.DataLoader(train, batch_size=32, collate_fn=Collator(0))
    _, folder_a, computed = TeacherLogitCache.load_or_compute(teacher, train, loader, torch.device("cpu"), tmp_path)
    assert computed
    with torch.no_grad():
        teacher.classifier.bias.add_(1.0)
    cache, folder_b, computed = TeacherLogitCache.load_or_compute(teacher, train, loader, torch.device("cpu"), tmp_path)
    assert computed and folder_a != folder_b
    assert cache.lookup(torch.tensor([10_000])) is None  # an unknown example falls back to the live teacher


def test_two_runs_computing_the_same_cache_at_once_both_succeed(assets, tmp_path, monkeypatch):
    """Study workers share one cache and may compute the same logits at once: both runs must succeed and
    leave one finished folder (the old code had both write one shared ``.tmp`` folder and rename it)."""
    import threading

    teacher, train = teacher_and_training_set(assets, tmp_path)
    compute, both_computing = TeacherLogitCache.compute, threading.Barrier(2, timeout=60)

    def in_step(teacher, loader, device):
        result = compute(teacher, loader, device)
        both_computing.wait()  # neither has written anything yet
        return result

    monkeypatch.setattr(TeacherLogitCache, "compute", staticmethod(in_step))
    root, results, errors = tmp_path / "cache", [], []

    def run() -> None:
        try:
            loader = torch.utils.data.DataLoader(train, batch_size=32, collate_fn=Collator(0))
            results.append(TeacherLogitCache.load_or_compute(teacher, train, loader, torch.device("cpu"), root))
        except Exception as error:  # noqa: BLE001 -- reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    (cache_a, folder, _), (cache_b, _, _) = results
    assert [p.name for p in root.iterdir()] == [folder.name]  # no temporary folder left behind
    reloaded, _, computed = TeacherLogitCache.load_or_compute(teacher, train, None, torch.device("cpu"), root)
    assert not computed and torch.equal(reloaded.lookup(torch.arange(4)), cache_a.lookup(torch.arange(4)))
