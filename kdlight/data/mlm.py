"""Masked-LM pre-training data: several out-of-domain corpora as one, plus BERT's token masking.

:class:`MaskedLMCorpusDataModule` reads, shapes, shuffles, tokenises and caches text exactly as
:class:`~kdlight.data.corpus.OutOfDomainCorpus` (offline: the packaged Wikipedia summaries and the news
sentences), from one or more ``sources`` read in order, and holds the last ``val_examples`` of the seeded
shuffle out for validation (:class:`~kdlight.data.general.CorpusDataModule`).

:func:`mask_tokens` is BERT's masking (Devlin et al., 2019): ``rate`` (15 %) of the real, non-special
tokens are chosen; of those, 80 % become ``[MASK]``, 10 % a random token, 10 % stay as they are. The
model is scored on the chosen positions only.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections.abc import Iterator

import torch
from torch import Tensor

from kdlight.data.general import CorpusDataModule
from kdlight.errors import KDLightError

IGNORE_INDEX = -100  # labels of positions the loss skips (torch's cross_entropy default)


def mask_tokens(
    input_ids: Tensor,
    attention_mask: Tensor,
    special_ids: Tensor,
    mask_token_id: int,
    random_ids: Tensor,
    rate: float = 0.15,
    mask_share: float = 0.8,
    random_share: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(inputs, labels): ``rate`` of the real, non-special tokens chosen (at least one per row that has
    any); of those ``mask_share`` replaced by ``mask_token_id``, ``random_share`` by a token drawn from
    ``random_ids``, the rest kept. ``labels`` hold the original ids at the chosen positions and
    :data:`IGNORE_INDEX` elsewhere. ``generator``: the draws' source (a seeded one makes them repeatable)."""
    device = input_ids.device
    maskable = attention_mask.bool() & ~torch.isin(input_ids, special_ids.to(device))
    scores = torch.rand(input_ids.shape, generator=generator, device=device).masked_fill(~maskable, 2.0)
    chosen = scores < rate
    first = torch.nn.functional.one_hot(scores.argmin(1), input_ids.shape[1]).bool() & maskable
    chosen |= first & ~chosen.any(1, keepdim=True)
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = chosen & (action < mask_share)
    to_random = chosen & (action >= mask_share) & (action < mask_share + random_share)
    picks = torch.randint(len(random_ids), input_ids.shape, generator=generator, device=device)
    inputs = input_ids.masked_fill(to_mask, mask_token_id)
    inputs = torch.where(to_random, random_ids.to(device)[picks], inputs)
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    return inputs, labels


class MaskedLMCorpusDataModule(CorpusDataModule):
    """Unlabelled text from one or more corpora, with a held-out split, for masked-LM training.

    Args:
        sources: the corpora, read in this order and shuffled together (each as ``source`` of
            :class:`~kdlight.data.corpus.OutOfDomainCorpus`: ``packaged/wiki_summaries``,
            ``packaged/lee_news``, ``wikitext-103``, a local file or folder).
        **kwargs: see :class:`~kdlight.data.general.CorpusDataModule` (``val_examples``, ``max_length``,
            ``batch_size``, ``num_examples``, ``seed`` ...). ``source`` is not taken: use ``sources``.
    """

    def __init__(self, sources: list[str] | None = None, **kwargs) -> None:
        if "source" in kwargs:
            raise KDLightError("MaskedLMCorpusDataModule reads sources: [...] (a list), not source")
        sources = list(sources or ["packaged/wiki_summaries", "packaged/lee_news"])
        if not sources:
            raise KDLightError("sources must name at least one corpus")
        super().__init__(source=sources[0], **kwargs)
        self.sources = sources

    def _each_source(self) -> list[CorpusDataModule]:
        parts = []
        for source in self.sources:
            part = copy.copy(self)
            part.source = source
            parts.append(part)
        return parts

    def paragraphs(self) -> Iterator[str]:
        return itertools.chain.from_iterable(CorpusDataModule.paragraphs(part) for part in self._each_source())

    def _fingerprint(self) -> str:
        keys = [CorpusDataModule._fingerprint(part) for part in self._each_source()]
        return hashlib.sha256(":".join(["mlm", *keys]).encode()).hexdigest()[:16]


__all__ = ["IGNORE_INDEX", "MaskedLMCorpusDataModule", "mask_tokens"]
