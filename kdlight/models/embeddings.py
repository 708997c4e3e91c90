"""Compressed word-embedding layers and their arithmetic: torch only, no Hugging Face loading, no data.

:class:`FactorisedEmbedding` (``E = token_factors @ hidden_factors``) and :class:`PrunedVocabularyEmbedding` (a kept
subset of rows read through the original ids) are what :class:`~kdlight.models.compact.CompressedEmbeddingStudent`
puts into a student; :func:`materialised` and :func:`fold_compressed_state` turn them back into stock embeddings
(for the export and for rebuilding a checkpoint as a stock model); :func:`factorise` is the truncated-SVD start.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlight.errors import KDLightError


class FactorisedEmbedding(nn.Module):
    """Word embeddings ``E = token_factors @ hidden_factors`` of rank ``rank``.

    ``weight`` is the product (what one-hot inputs multiply); looking ids up never builds it.
    """

    def __init__(self, token_factors: Tensor, hidden_factors: Tensor, padding_idx: int | None = None) -> None:
        super().__init__()
        self.token_factors = nn.Parameter(token_factors)
        self.hidden_factors = nn.Parameter(hidden_factors)
        self.padding_idx = padding_idx
        self.num_embeddings, self.rank = token_factors.shape
        self.embedding_dim = hidden_factors.shape[1]

    @property
    def weight(self) -> Tensor:
        return self.token_factors @ self.hidden_factors

    def forward(self, input_ids: Tensor) -> Tensor:
        # padding_idx only stops the padding row's gradient, as in nn.Embedding
        return F.embedding(input_ids, self.token_factors, self.padding_idx) @ self.hidden_factors

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}"


class PrunedVocabularyEmbedding(nn.Module):
    """Embeddings for a kept subset of the vocabulary, read through the original ids.

    ``remap`` takes every original id to its row (unkept ids to ``[UNK]``'s row); ``kept_token_ids`` lists
    the original id of each row, in order, which is the pruned tokenizer's vocabulary.
    """

    def __init__(
        self, rows: nn.Module, remap: Tensor, kept_token_ids: Tensor, tokenizer_source: str | None = None
    ) -> None:
        super().__init__()
        self.rows = rows
        self.register_buffer("remap", remap.long())
        self.register_buffer("kept_token_ids", kept_token_ids.long())
        self.tokenizer_source = tokenizer_source
        self.num_embeddings = int(remap.numel())
        self.embedding_dim = rows.embedding_dim

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.rows(self.remap[input_ids])

    @property
    def weight(self) -> Tensor:
        """The full-vocabulary matrix (an unkept id gets ``[UNK]``'s row): what a one-hot row over the original
        ids multiplies to give what :meth:`forward` gives (MATE-KD's generator rewrites feed a student so)."""
        return self.rows.weight[self.remap]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} ids -> {len(self.kept_token_ids)} rows"


def require_full_vocabulary(model: nn.Module, purpose: str) -> None:
    """Stop with a clear error when ``model`` has a pruned vocabulary but ``purpose`` needs all rows."""
    if isinstance(model.get_input_embeddings(), PrunedVocabularyEmbedding):
        raise KDLightError(
            f"{purpose} multiplies one-hot rows over the full shared vocabulary, "
            "but the student's vocabulary is pruned; "
            "remove vocabulary_files from the student (embedding_rank alone keeps the full vocabulary)"
        )


def materialised(embedding: nn.Module) -> nn.Module:
    """A plain ``nn.Embedding`` computing what ``embedding`` computes on its own rows (identity for stock ones)."""
    if isinstance(embedding, PrunedVocabularyEmbedding):
        inner = materialised(embedding.rows)
        padding = inner.padding_idx
        plain = nn.Embedding(inner.num_embeddings, inner.embedding_dim, padding_idx=padding)
        plain.weight.data.copy_(inner.weight.data)
        return plain
    if isinstance(embedding, FactorisedEmbedding):
        plain = nn.Embedding(embedding.num_embeddings, embedding.embedding_dim, padding_idx=embedding.padding_idx)
        plain.weight.data.copy_(embedding.weight.detach())
        return plain
    return embedding


def fold_compressed_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A compressed student's state dict as a stock model's (``...word_embeddings.weight``), same predictions.

    Used when a kdlight checkpoint is rebuilt as a stock HF model; a pruned vocabulary is folded back to
    the full id space (unkept ids get the ``[UNK]`` row), which computes exactly what the student did.
    """
    state = dict(state)
    for key in [k for k in state if k.endswith(".hidden_factors")]:
        prefix = key[: -len("hidden_factors")]
        state[prefix + "weight"] = state.pop(prefix + "token_factors") @ state.pop(key)
    for key in [k for k in state if k.endswith(".kept_token_ids")]:
        prefix = key[: -len("kept_token_ids")]
        state.pop(key)
        remap = state.pop(prefix + "remap")
        state[prefix + "weight"] = state.pop(prefix + "rows.weight")[remap]
    return state


def principal_coordinates(matrix: Tensor, columns: int) -> Tensor:
    """``matrix``'s coordinates on its top ``columns`` right singular vectors (zero-padded when wider)."""
    u, s, _ = torch.linalg.svd(matrix.double(), full_matrices=False)
    keep = min(columns, len(s))
    out = torch.zeros(matrix.shape[0], columns, dtype=torch.float64)
    out[:, :keep] = u[:, :keep] * s[:keep]
    return out.float()


def factorise(matrix: Tensor, rank: int, width: int) -> tuple[Tensor, Tensor]:
    """``(token_factors, hidden_factors)`` from a truncated SVD ``matrix ~ U_r S_r V_r^T``.

    Same width: ``U_r S_r`` and ``V_r^T``, the best rank-r approximation (Eckart-Young). Another
    width: the student's embedding space is taken to be the source's principal subspace, so the
    token factors are the same ``U_r S_r`` (each token's top-r principal coordinates) and the hidden
    factors put them on the student's first ``r`` dimensions (``[I_r | 0]``); the rest start at zero.
    """
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    tokens = (u[:, :rank] * s[:rank]).float()
    if matrix.shape[1] == width:
        return tokens, vh[:rank].float()
    hidden = torch.zeros(rank, width)
    hidden[:, :rank] = torch.eye(rank)
    return tokens, hidden


__all__ = [
    "FactorisedEmbedding",
    "PrunedVocabularyEmbedding",
    "factorise",
    "fold_compressed_state",
    "materialised",
    "principal_coordinates",
    "require_full_vocabulary",
]
