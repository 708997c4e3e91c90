"""A 6-class topic task built offline from the packaged Wikipedia summaries (``packaged/wiki_summaries``).

The summaries (~10k Wikipedia lead sections, one a line; see :func:`kdlight.assets.wiki_summaries_path`)
carry no labels. A summary's first sentence usually defines its subject ("Paris is the capital and most
populous city of France", "Euler was a Swiss mathematician"), so the label is read from it: the first word
of :data:`TOPIC_WORDS` that follows "is/was/are/were a/an/the" in the first sentence names the class. The
text the model sees is the summary **without that first sentence**, so the task is to tell the topic from
the rest of the summary, not to read the defining word. Summaries whose first sentence matches no word, or
whose rest has fewer than :data:`MIN_WORDS` words, are left out. About 2,600 summaries remain (place,
person, organism, substance, creative work, language); a fixed seeded 60/20/20 split is written as CSVs
under ``<kdlight cache>/wiki_topics_v1`` on first use.

The labels are a heuristic (a pattern over the defining sentence), so a few are wrong by construction;
the task is a second, many-class stand-in for the noisy-label study, not a curated benchmark.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from kdlight.assets import _write_splits, cache_dir, wiki_summaries_path  # the packaged tasks' seeded split writer
from kdlight.data.text import TextClassificationDataModule, packaged_split_files

#: class -> the defining words that put a summary in it (matched as whole words, singular or plural)
TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "place": (
        "city",
        "town",
        "village",
        "capital",
        "state",
        "country",
        "island",
        "river",
        "mountain",
        "lake",
        "province",
        "district",
        "region",
        "county",
        "archipelago",
        "peninsula",
        "desert",
    ),
    "person": (
        "politician",
        "philosopher",
        "writer",
        "composer",
        "mathematician",
        "painter",
        "physicist",
        "emperor",
        "king",
        "queen",
        "author",
        "singer",
        "actor",
        "actress",
        "scientist",
        "footballer",
        "musician",
        "poet",
        "novelist",
        "chemist",
        "astronomer",
        "economist",
        "president",
        "statesman",
        "theologian",
        "sculptor",
        "architect",
        "inventor",
        "explorer",
        "general",
        "pope",
        "saint",
        "songwriter",
        "rapper",
        "comedian",
    ),
    "organism": (
        "species",
        "genus",
        "plant",
        "bird",
        "fish",
        "tree",
        "mammal",
        "insect",
        "animal",
        "reptile",
        "fungus",
        "shrub",
        "herb",
        "flower",
        "breed",
    ),
    "substance": ("chemical", "compound", "element", "mineral", "rock", "metal", "alloy", "gas", "acid"),
    "creative work": (
        "film",
        "novel",
        "book",
        "poem",
        "album",
        "song",
        "opera",
        "painting",
        "play",
        "sitcom",
        "symphony",
    ),
    "language": ("language", "dialect"),
}
TOPICS = tuple(TOPIC_WORDS)
MIN_WORDS = 10
SPLIT_SEED = 0
FOLDER = "wiki_topics_v1"  # bump when the labelling rule changes (the CSVs are built once)

_WORD_TO_TOPIC = {word: topic for topic, words in TOPIC_WORDS.items() for word in words}
# the defining noun phrase: up to 6 words after "is a", no preposition or relative pronoun among them (the
# head noun comes before those: "a private research university in New Haven, Connecticut, United States" must
# not match "state"), except "<type/kind/...> of" ("a type of rock")
_STOP = r"(?:of|in|from|that|which|who|whose|with|for|to|by|on|at|between|near|where|when|as)\b"
_DEFINING = re.compile(
    r"\b(?:is|was|are|were)\s+(?:a|an|the)\s+"
    r"(?P<before>(?:(?:type|kind|form|group|class|variety|member)\s+of\s+(?:the\s+)?|(?!"
    + _STOP
    + r")[\w'’-]+,?\s+){0,6}?)"
    r"(?P<word>" + "|".join(sorted(_WORD_TO_TOPIC, key=len, reverse=True)) + r")(?:e?s)?\b"
    r"(?!(?<=state)\s+(?:of|or)\b)",  # "a state of matter", "a state or condition": not a place
    re.IGNORECASE,
)
_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])\s+(?=[A-Z0-9\"'(])")


def topic_example(summary: str) -> tuple[str, str] | None:
    """``(text, topic)`` of one summary: the topic from its first sentence, the text the rest; ``None``
    when the first sentence names no topic word or the rest is shorter than ``MIN_WORDS`` words."""
    summary = " ".join(summary.split())
    split = _FIRST_SENTENCE.match(summary)
    if split is None:
        return None
    first, rest = split.group(1), summary[split.end() :]
    match = _DEFINING.search(first)
    if match is None or len(rest.split()) < MIN_WORDS:
        return None
    return rest, _WORD_TO_TOPIC[match.group("word").lower()]


def build_wiki_topics(summaries: list[str], out: Path, seed: int = SPLIT_SEED) -> dict[str, int]:
    """Write ``train/validation/test.csv`` (``text``, ``label``) under ``out`` from ``summaries``; returns the
    class counts. Deduplicated by text, shuffled with ``seed``, split 60/20/20 (evaluation splits of ~565 rows
    rather than the ~280 of 80/10/10)."""
    import pandas as pd

    rows = [example for s in summaries if (example := topic_example(s)) is not None]
    frame = pd.DataFrame(rows, columns=["text", "label"]).drop_duplicates("text")
    _write_splits(out, frame, {"validation": 0.2, "test": 0.2}, seed)
    return dict(Counter(frame["label"]))


def wiki_topics_dir() -> Path:
    """The CSVs' folder, built from the packaged summaries on first use."""
    out = cache_dir() / FOLDER
    if not all((out / f"{split}.csv").is_file() for split in ("train", "validation", "test")):
        lines = wiki_summaries_path().read_text(encoding="utf-8").splitlines()
        counts = build_wiki_topics(lines, out)
        print(f"[kdlight] built the wiki-topics task under {out}: {counts}", flush=True)
    return out


class WikiTopicDataModule(TextClassificationDataModule):
    """The offline 6-class topic task (place / person / organism / substance / creative work / language):
    Wikipedia summaries without their defining first sentence, labelled from it (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        train, val, test = packaged_split_files(wiki_topics_dir())
        kwargs.setdefault("label_names", list(TOPICS))
        super().__init__(train_file=train, val_file=val, test_file=test, **kwargs)


__all__ = ["TOPICS", "TOPIC_WORDS", "WikiTopicDataModule", "build_wiki_topics", "topic_example", "wiki_topics_dir"]
