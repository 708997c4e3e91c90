"""The rewrite maths of zero-shot adversarial KD: plain torch functions (see :class:`AdversarialGenerator`).

* :func:`choose_mask`: which positions to rewrite (a fraction of the real, non-special tokens).
* :func:`masked_logits`: a masked-LM's vocabulary logits at those positions only.
* :func:`sample_replacements`: straight-through hard Gumbel-softmax one-hot rows at those positions.
* :func:`random_replacements`: uniformly random tokens instead (the random-token baselines).
* :func:`embed_with_replacements`: the one-hot rows times a model's own word-embedding matrix,
  scattered into that model's ordinary embeddings, ready to pass as ``inputs_embeds``.
* :func:`example_uniform`: per-example seeded noise, the same whatever the batch split.
"""

from __future__ import annotations

import hashlib
import re

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from kdlight.errors import KDLightError

_UNUSED_TOKEN = re.compile(r"^\[unused\d+\]$|^<unused\d+>$")


def masked_logits(
    generator: PreTrainedModel, inputs: dict[str, Tensor], mask: Tensor, positions: Tensor | None = None
) -> Tensor:
    """The generator's vocabulary logits at the masked positions only, one row per position.

    For BERT-family MLMs (an encoder plus a ``cls`` head) the head runs on the masked positions
    alone: the vocabulary projection dominates the cost, and ~70% of positions are not rewritten.
    ``positions``: the mask's flat indices (:func:`mask_positions`); with them no boolean indexing,
    whose output size a GPU must report back to the host, takes place.
    """
    head = getattr(generator, "cls", None)
    if head is not None and getattr(generator, "base_model", None) is not None:
        hidden = generator.base_model(**inputs).last_hidden_state
        return head(select_positions(hidden, mask, positions))
    return select_positions(generator(**inputs).logits, mask, positions)


def mask_positions(mask: Tensor) -> Tensor:
    """Flat (row-major) indices of a (batch, length) mask: computed where the mask is on the host."""
    return mask.reshape(-1).nonzero().squeeze(1)


def select_positions(values: Tensor, mask: Tensor, positions: Tensor | None) -> Tensor:
    """``values[mask]`` for a (batch, length, ...) tensor, by index when ``positions`` are given."""
    if positions is None:
        return values[mask]
    return values.flatten(0, 1).index_select(0, positions)


def scatter_positions(values: Tensor, mask: Tensor, positions: Tensor | None, rows: Tensor) -> Tensor:
    """``values.masked_scatter(mask, rows)`` (rows in row-major order), by index when ``positions`` are given."""
    if positions is None:
        return values.masked_scatter(mask.view(*mask.shape, *([1] * (values.dim() - mask.dim()))), rows)
    return values.flatten(0, 1).index_copy(0, positions, rows.to(values.dtype)).view_as(values)


def banned_token_ids(tokenizer) -> list[int]:
    """Tokens a rewrite must not produce: special tokens and the never-trained ``[unusedN]`` slots."""
    banned = set(tokenizer.all_special_ids)
    banned.update(i for token, i in tokenizer.get_vocab().items() if _UNUSED_TOKEN.match(token))
    return sorted(banned)


def example_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (run seed, step, example idx, purpose)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def example_uniform(keys: list[tuple[int, ...]], numels: list[int], device) -> list[Tensor]:
    """Uniform noise per example from its own seeded generator: the draws depend only on the key
    (seed, step, idx, purpose), never on which other examples share the batch or the process, so
    one process and N data-parallel processes make exactly the same random choices."""
    out = []
    for key, numel in zip(keys, numels, strict=True):
        generator = torch.Generator(device=device)
        generator.manual_seed(example_seed(*key))
        out.append(torch.rand(numel, generator=generator, device=device))
    return out


def choose_mask(
    input_ids: Tensor, attention_mask: Tensor, special_ids: Tensor, rate: float, scores: Tensor | None = None
) -> Tensor:
    """A boolean mask over ``rate`` of each row's real, non-special tokens (at least one per row).

    ``scores``: uniform noise of the same shape (default: drawn from the global generator).
    """
    maskable = attention_mask.bool() & ~torch.isin(input_ids, special_ids)
    if scores is None:
        scores = torch.rand(input_ids.shape, device=input_ids.device)
    scores = scores.masked_fill(~maskable, 2.0)
    mask = scores < rate
    # a row with maskable tokens but none drawn still gets its lowest-scoring one
    first = F.one_hot(scores.argmin(1), input_ids.shape[1]).bool() & maskable
    return mask | (first & ~mask.any(1, keepdim=True))


def sample_replacements(
    logits: Tensor, banned: Tensor | None, tau: float = 1.0, uniform: Tensor | None = None, hard: bool = True
) -> Tensor:
    """Straight-through hard Gumbel-softmax over the vocabulary: one-hot rows in the forward pass,
    the soft sample's gradient in the backward pass. ``uniform``: noise shaped like ``logits``.
    ``hard=False``: the soft sample itself (the smooth quantity whose gradient the hard rows pass on)."""
    logits = logits.float()
    if banned is not None and len(banned):
        logits = logits.index_fill(-1, banned, float("-inf"))
    if uniform is None:
        uniform = torch.rand_like(logits)
    tiny = torch.finfo(logits.dtype).tiny
    gumbel = -torch.log(-torch.log(uniform.clamp(tiny, 1.0 - 1e-7)))
    soft = torch.softmax((logits + gumbel) / tau, dim=-1)
    if not hard:
        return soft
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def allowed_token_ids(vocab_size: int, banned: Tensor | None, device=None) -> Tensor:
    """Every token id a rewrite may produce (all but ``banned``), ascending."""
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    if banned is not None and len(banned):
        allowed[banned.to(allowed.device)] = False
    return allowed.nonzero().squeeze(1)


def random_replacements(
    count: int,
    vocab_size: int,
    banned: Tensor | None,
    device,
    uniform: Tensor | None = None,
    choices: Tensor | None = None,
) -> Tensor:
    """Uniformly random token ids (none of them banned): the random-token baseline. ``choices``:
    :func:`allowed_token_ids`, made once (finding them takes a host sync on a GPU)."""
    if choices is None:
        choices = allowed_token_ids(vocab_size, banned, device)
    if uniform is None:
        uniform = torch.rand(count, device=device)
    return choices[(uniform * len(choices)).long().clamp(max=len(choices) - 1)]


def embed_with_replacements(
    model: PreTrainedModel, input_ids: Tensor, mask: Tensor, one_hot: Tensor, positions: Tensor | None = None
) -> Tensor:
    """``inputs_embeds`` for ``model``: its own word embeddings, with the masked positions replaced by
    ``one_hot @ E`` (``one_hot`` has one row per masked position, in row-major order; ``positions``:
    the mask's flat indices, see :func:`mask_positions`)."""
    weight = model.get_input_embeddings().weight
    if one_hot.shape[-1] != weight.shape[0]:
        raise KDLightError(
            f"generator/model vocabulary mismatch: the generator proposes over {one_hot.shape[-1]} tokens but "
            f"{type(model).__name__} embeds {weight.shape[0]}; teacher, student and generator must share one vocabulary"
        )
    embeds = F.embedding(input_ids, weight)
    return scatter_positions(embeds, mask, positions, one_hot.to(weight.dtype) @ weight)


__all__ = [
    "allowed_token_ids",
    "banned_token_ids",
    "choose_mask",
    "embed_with_replacements",
    "example_uniform",
    "known_token_share",
    "mask_positions",
    "masked_logits",
    "random_replacements",
    "sample_replacements",
    "scatter_positions",
    "select_positions",
    "describe_rewrites",
    "rewrites_markdown",
]


def describe_rewrites(
    tokenizer,
    original: Tensor,
    rewritten: Tensor,
    attention_mask: Tensor,
    teacher: list[int],
    student: list[int],
    label_names: list[str] | None = None,
) -> list[dict]:
    """Rewrites as people read them: the decoded original and rewrite, each changed span as
    ``original -> generated`` (runs of adjacent changed tokens joined), and both models' predictions."""
    names = list(label_names or [])
    examples = []
    for row in range(len(original)):
        length = int(attention_mask[row].sum())
        before, after = original[row, :length].tolist(), rewritten[row, :length].tolist()
        spans, start = [], None
        for i in range(length + 1):
            changed = i < length and before[i] != after[i]
            if changed and start is None:
                start = i
            if not changed and start is not None:
                spans.append(f"{tokenizer.decode(before[start:i])} -> {tokenizer.decode(after[start:i])}")
                start = None
        examples.append(
            {
                "original": tokenizer.decode(before, skip_special_tokens=True),
                "rewritten": tokenizer.decode(after, skip_special_tokens=True),
                "spans": spans,
                "teacher": names[teacher[row]] if teacher[row] < len(names) else str(teacher[row]),
                "student": names[student[row]] if student[row] < len(names) else str(student[row]),
            }
        )
    return examples


def known_token_share(original: Tensor, rewritten: Tensor, known_ids: Tensor, special_ids: Tensor) -> float:
    """The share of rewritten positions (where ``rewritten`` differs from ``original``, or all positions a
    rewrite chose but left as it was are skipped) whose new token is a non-special token of
    ``known_ids``, the token ids that occur in real text (e.g. a held-out corpus): a fluent generator
    proposes them, a random one mostly does not."""
    changed = rewritten != original
    tokens = rewritten[changed]
    if not len(tokens):
        return float("nan")
    good = torch.isin(tokens, known_ids.to(tokens.device)) & ~torch.isin(tokens, special_ids.to(tokens.device))
    return float(good.float().mean())


def rewrites_markdown(examples: list[dict]) -> str:
    """A markdown table of :func:`describe_rewrites` rows (loggers that take text, results files)."""
    lines = ["| rewritten input | changed spans (original -> generated) | teacher | student |", "|---|---|---|---|"]
    for e in examples:
        spans = "; ".join(e["spans"]).replace("|", "\\|")
        lines.append(f"| {e['rewritten'].replace('|', chr(92) + '|')} | {spans} | {e['teacher']} | {e['student']} |")
    return "\n".join(lines)
