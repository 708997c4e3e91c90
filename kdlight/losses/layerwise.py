"""Intermediate-layer distillation losses: small modules, one paper each, chosen in YAML.

Each loss is an ``nn.Module`` configured from YAML (``class_path: HiddenMSE``), then ``bind``-ed to a
teacher and a student once both exist: binding checks the layer map against the two models, sizes the
learned projections (which train with the student and are never exported) and says what the forward
passes must return (:class:`~kdlight.models.layers.Needs`). Calling it on two
:class:`~kdlight.models.layers.LayerOutputs` and the attention mask gives a scalar.

* :class:`HiddenMSE` and :class:`EmbeddingMSE`: TinyBERT's hidden-state and embedding-layer losses
  (Jiao et al., 2020), MSE through a learned linear map from the student's width to the teacher's.
* :class:`AttentionMSE`: TinyBERT's attention loss, per mapped block, needing equal head counts.
* :class:`SelfAttentionRelations`: MiniLMv2's query-query, key-key and value-value relations (Wang et
  al., 2021), which need neither equal widths nor equal head counts.
* :class:`PatientCLS`: PKD's normalised [CLS] states of mapped blocks (Sun et al., 2019).

Layer maps (``layers:``): ``uniform`` pairs student block ``m`` with teacher block ``round(m * N / M)``
for ``m = 1..M`` (TinyBERT's ``g(m) = m * N / M``, halves rounded up); ``last`` pairs the two last blocks; or explicit
``[[student_block, teacher_block], ...]`` with ``0`` for the embedding output where it makes sense.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlight.errors import KDLightError, check_choice
from kdlight.models.layers import LayerOutputs, Needs, depth, num_heads, width

LayerMap = Literal["uniform", "last"] | list[tuple[int, int]]
#: the self-attention vectors whose relations MiniLMv2 distils
Relation = Literal["query", "key", "value"]


def resolve_layer_map(
    layers: LayerMap, student_depth: int, teacher_depth: int, *, allow_embeddings: bool = True, loss: str = "loss"
) -> list[tuple[int, int]]:
    """Turn ``uniform`` / ``last`` / explicit pairs into checked (student, teacher) block pairs."""
    if layers == "uniform":
        # round half up: m * N / M rounded, without Python's round-half-to-even
        return [
            (m, (2 * m * teacher_depth + student_depth) // (2 * student_depth)) for m in range(1, student_depth + 1)
        ]
    if layers == "last":
        return [(student_depth, teacher_depth)]
    if isinstance(layers, str):
        raise KDLightError(
            f"{loss}: layers must be 'uniform', 'last' or [[student_block, teacher_block], ...], got {layers!r}"
        )
    pairs = [tuple(int(x) for x in pair) for pair in layers]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise KDLightError(
            f"{loss}: layers must be a non-empty list of [student_block, teacher_block] pairs, got {layers!r}"
        )
    low = 0 if allow_embeddings else 1
    for s, t in pairs:
        if not (low <= s <= student_depth and low <= t <= teacher_depth):
            raise KDLightError(
                f"{loss}: layer pair [{s}, {t}] is out of range: the student has blocks {low}..{student_depth} and the "
                f"teacher {low}..{teacher_depth}{' (0 = embeddings)' if allow_embeddings else ''}; "
                "fix layers, or use 'uniform'"
            )
    return pairs


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values`` (batch, length) over real tokens."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class IntermediateLoss(nn.Module):
    """Base class. Args: weight: multiplies this loss in the total."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise KDLightError(f"{type(self).__name__}: weight must be >= 0, got {weight}")
        self.loss_weight = weight
        self.pairs: list[tuple[int, int]] = []

    #: short name in logs (``train/<name>``)
    name = "intermediate"

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        """Check the two models and build the learned parts; called once, before the optimiser exists."""

    def student_needs(self) -> Needs:
        return Needs()

    def teacher_needs(self) -> Needs:
        return Needs()

    def forward(self, student: LayerOutputs, teacher: LayerOutputs, attention_mask: Tensor | None) -> Tensor:
        raise NotImplementedError


def _projection(student_width: int, teacher_width: int) -> nn.Module:
    return nn.Identity() if student_width == teacher_width else nn.Linear(student_width, teacher_width)


class ProjectedLayerLoss(IntermediateLoss):
    """A loss over mapped blocks that compares student states through one learned projection per pair
    (the identity when the widths agree) with the teacher's: both models return their hidden states."""

    def __init__(self, layers: LayerMap = "uniform", weight: float = 1.0) -> None:
        super().__init__(weight)
        self.layers = layers
        self.projections = nn.ModuleList()

    def student_needs(self):
        return Needs(hidden_states=True)

    def teacher_needs(self):
        return Needs(hidden_states=True)

    def bind(self, student, teacher):
        self.pairs = resolve_layer_map(self.layers, depth(student), depth(teacher), loss=type(self).__name__)
        self.projections = nn.ModuleList(_projection(width(student), width(teacher)) for _ in self.pairs)


class HiddenMSE(ProjectedLayerLoss):
    """TinyBERT's hidden-state loss: ``MSE(H_s W_h, H_t)`` per mapped block, averaged over the pairs.

    ``W_h`` (one per pair) maps the student's width to the teacher's and is learned with the student;
    it is the identity when the widths agree. Padding positions are left out of the mean.

    Args:
        layers: ``uniform``, ``last`` or ``[[student_block, teacher_block], ...]`` (0 = embeddings).
        weight: see :class:`IntermediateLoss`.
    """

    name = "hidden_mse"

    def forward(self, student, teacher, attention_mask):
        losses = [
            masked_mean(
                (project(student.hidden_states[s]) - teacher.hidden_states[t]).float().pow(2).mean(-1), attention_mask
            )
            for (s, t), project in zip(self.pairs, self.projections, strict=True)
        ]
        return torch.stack(losses).mean()


class EmbeddingMSE(HiddenMSE):
    """TinyBERT's embedding-layer loss: ``MSE(E_s W_e, E_t)`` on the embedding outputs (block 0).

    Args:
        weight: see :class:`IntermediateLoss`.
    """

    name = "embedding_mse"

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__(layers=[(0, 0)], weight=weight)


class AttentionMSE(IntermediateLoss):
    """TinyBERT's attention loss: MSE between the attention maps of mapped blocks, head by head.

    HF models return attention *probabilities* (after softmax); TinyBERT's code compares the scores
    before softmax. We compare probabilities over real query/key positions, which keeps the loss
    bounded. Head counts must agree (a map of 12 heads cannot be matched to 4); with different head
    counts use :class:`SelfAttentionRelations`, which splits into its own number of relation heads.

    Cost: attention maps exist only with eager attention, so binding switches teacher and student to
    ``attn_implementation="eager"``: every block then materialises (batch, heads, length, length)
    probabilities in memory and runs without the fused SDPA kernel. Measured with
    ``benchmarks/compact/step_cost.py`` (MiniLM-L6 teacher, 2-block student, batch 32 x 64 tokens, one
    CPU thread): a step costs 1.17x a logit-KD step (hidden-state MSE: 1.0x; relations: 1.17x; PKD:
    1.07x). Exports are unaffected (the exported config loads with the default attention).

    Args:
        layers: ``uniform``, ``last`` or ``[[student_block, teacher_block], ...]`` (blocks from 1).
        weight: see :class:`IntermediateLoss`.
    """

    name = "attention_mse"

    def __init__(self, layers: LayerMap = "uniform", weight: float = 1.0) -> None:
        super().__init__(weight)
        self.layers = layers

    def bind(self, student, teacher):
        s_heads, t_heads = num_heads(student), num_heads(teacher)
        if s_heads != t_heads:
            raise KDLightError(
                f"AttentionMSE needs equal head counts, but the student has {s_heads} attention heads "
                f"and the teacher {t_heads}; "
                "use SelfAttentionRelations (MiniLMv2: any head count) or a student with as many heads as the teacher"
            )
        self.pairs = resolve_layer_map(
            self.layers, depth(student), depth(teacher), allow_embeddings=False, loss="AttentionMSE"
        )

    def student_needs(self):
        return Needs(attentions=True)

    def teacher_needs(self):
        return Needs(attentions=True)

    def forward(self, student, teacher, attention_mask):
        losses = []
        for s, t in self.pairs:
            sq = (student.attentions[s - 1].float() - teacher.attentions[t - 1].float()).pow(2)  # (b, h, q, k)
            if attention_mask is not None:
                keys = attention_mask[:, None, None, :].to(sq.dtype)
                per_query = (sq * keys).sum(-1) / keys.sum(-1).clamp_min(1.0)  # (b, h, q)
                losses.append(masked_mean(per_query.mean(1), attention_mask))
            else:
                losses.append(sq.mean())
        return torch.stack(losses).mean()


def relation_log_probs(states: Tensor, relation_heads: int, attention_mask: Tensor | None) -> Tensor:
    """log softmax(A A^T / sqrt(d_r)) per relation head: (batch, heads, length, length)."""
    batch, length, hidden = states.shape
    head_width = hidden // relation_heads
    split = states.float().view(batch, length, relation_heads, head_width).transpose(1, 2)
    scores = split @ split.transpose(-1, -2) / math.sqrt(head_width)
    if attention_mask is not None:  # a large finite fill keeps exp() at 0 without inf - inf = nan in the KL
        scores = scores.masked_fill(attention_mask[:, None, None, :] == 0, -1e4)
    return F.log_softmax(scores, dim=-1)


class SelfAttentionRelations(IntermediateLoss):
    """MiniLMv2's multi-head self-attention relation distillation.

    For one teacher block and one student block (by default both last), the queries, keys and
    values (captured by hooks on the self-attention projections) are each split into
    ``num_relation_heads`` relation heads; the query-query, key-key and value-value relations
    ``softmax(A A^T / sqrt(d_r))`` of the student are pulled to the teacher's by KL divergence,
    averaged over relation types, heads and real query positions (padding keys are masked). Relation
    matrices are length x length whatever the widths, so neither the hidden size nor the head count
    has to match: only both widths must be divisible by ``num_relation_heads``. No learned parameters.

    Args:
        teacher_layer: the teacher's block (1-based; default: its last). MiniLMv2 uses an upper-middle
            block for large teachers.
        student_layer: the student's block (default: its last).
        num_relation_heads: relation heads (MiniLMv2: 48 for base-size and 64 for large students).
        relations: which of ``query``, ``key``, ``value`` to relate with themselves.
        weight: see :class:`IntermediateLoss`.
    """

    name = "relations"

    def __init__(
        self,
        teacher_layer: int | None = None,
        student_layer: int | None = None,
        num_relation_heads: int = 8,
        relations: list[Relation] | None = None,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        if num_relation_heads < 1:
            raise KDLightError(f"num_relation_heads must be >= 1, got {num_relation_heads}")
        relations = list(relations or get_args(Relation))
        for relation in relations:
            check_choice("relations", relation, Relation)
        self.teacher_layer, self.student_layer = teacher_layer, student_layer
        self.num_relation_heads = num_relation_heads
        self.relation_index = sorted({get_args(Relation).index(r) for r in relations})

    def bind(self, student, teacher):
        s_depth, t_depth = depth(student), depth(teacher)
        pair = [self.student_layer or s_depth, self.teacher_layer or t_depth]
        self.pairs = resolve_layer_map([pair], s_depth, t_depth, allow_embeddings=False, loss="SelfAttentionRelations")
        for who, model in (("student", student), ("teacher", teacher)):
            if width(model) % self.num_relation_heads:
                raise KDLightError(
                    f"SelfAttentionRelations: the {who}'s hidden size {width(model)} is not divisible by "
                    f"num_relation_heads={self.num_relation_heads}; choose a common divisor of both hidden sizes"
                )

    def student_needs(self):
        return Needs(qkv_layers=frozenset({self.pairs[0][0]}))

    def teacher_needs(self):
        return Needs(qkv_layers=frozenset({self.pairs[0][1]}))

    def forward(self, student, teacher, attention_mask):
        s_layer, t_layer = self.pairs[0]
        losses = []
        for i in self.relation_index:
            log_t = relation_log_probs(teacher.qkv[t_layer][i], self.num_relation_heads, attention_mask)
            log_s = relation_log_probs(student.qkv[s_layer][i], self.num_relation_heads, attention_mask)
            kl = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)  # (batch, heads, length)
            losses.append(masked_mean(kl.mean(1), attention_mask))
        return torch.stack(losses).mean()


class PatientCLS(ProjectedLayerLoss):
    """PKD's patient loss: MSE between L2-normalised [CLS] states of mapped blocks (Sun et al., 2019).

    ``sum_j || h_s / ||h_s|| - h_t / ||h_t|| ||^2`` per example, averaged over the batch and the pairs.
    PKD assumes equal widths; when they differ, a learned linear map (trained with the student, never
    exported) takes the student's [CLS] state to the teacher's width first. The paper weighs this loss
    by 100-500 against the logit loss.

    Args:
        layers: ``uniform``, ``last`` or ``[[student_block, teacher_block], ...]``. (PKD-Skip on a
            12-layer teacher and 6-layer student: ``[[1, 2], [2, 4], [3, 6], [4, 8], [5, 10]]``; the last
            block is left to the logit loss.)
        weight: see :class:`IntermediateLoss`.
    """

    name = "patient"

    def forward(self, student, teacher, attention_mask):
        losses = []
        for (s, t), project in zip(self.pairs, self.projections, strict=True):
            s_cls = F.normalize(project(student.hidden_states[s][:, 0]).float(), dim=-1)
            t_cls = F.normalize(teacher.hidden_states[t][:, 0].float(), dim=-1)
            losses.append((s_cls - t_cls).pow(2).sum(-1).mean())
        return torch.stack(losses).mean()


__all__ = [
    "AttentionMSE",
    "EmbeddingMSE",
    "HiddenMSE",
    "IntermediateLoss",
    "LayerMap",
    "PatientCLS",
    "SelfAttentionRelations",
    "masked_mean",
    "relation_log_probs",
    "resolve_layer_map",
]
