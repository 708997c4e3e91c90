"""What a transformer computes inside: hidden states, attention maps and self-attention Q/K/V.

Intermediate-layer distillation compares these between teacher and student. Hidden states and
attention maps come from Hugging Face's own ``output_hidden_states`` / ``output_attentions``; the
queries, keys and values that MiniLM's relation loss needs are not returned by any HF model, so they
are captured with forward hooks on the self-attention's three input projections, for the duration of
one forward pass only.

Layer numbering everywhere in kdlight's layer-wise losses: ``0`` is the embedding layer's output,
``1..depth`` are the transformer blocks (HF's ``hidden_states[i]``; attention/Q/K/V of block ``i``).

Q/K/V capture works for encoders whose blocks keep three ``nn.Linear`` projections named
``query``/``key``/``value`` (BERT, RoBERTa, ELECTRA, XLM-R, MiniLM) or ``q_lin``/``k_lin``/``v_lin``
(DistilBERT); any other family is a clear error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn

from kdlight.errors import KDLightError
from kdlight.models.students import encoder_layers

#: names of the self-attention input projections, per model family
QKV_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"))


@dataclass
class LayerOutputs:
    """One forward pass's internals; only what some loss asked for is filled in."""

    logits: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None  # (embeddings, block 1, ..., block depth)
    attentions: tuple[Tensor, ...] | None = None  # block i at index i - 1: (batch, heads, length, length)
    qkv: dict[int, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)  # block -> (batch, length, width) x 3


@dataclass(frozen=True)
class Needs:
    """What a set of losses needs from one model's forward pass."""

    hidden_states: bool = False
    attentions: bool = False
    qkv_layers: frozenset[int] = frozenset()

    def __or__(self, other: Needs) -> Needs:
        return Needs(
            self.hidden_states or other.hidden_states,
            self.attentions or other.attentions,
            self.qkv_layers | other.qkv_layers,
        )


def depth(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "num_hidden_layers", None) or config.n_layers)


def width(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "hidden_size", None) or config.dim)


def num_heads(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "num_attention_heads", None) or config.n_heads)


def qkv_projections(model: nn.Module, layer: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """The query, key and value projections of block ``layer`` (1-based)."""
    _, _, blocks = encoder_layers(model)
    if not 1 <= layer <= len(blocks):
        raise KDLightError(f"layer {layer} is out of range: {type(model).__name__} has blocks 1..{len(blocks)}")
    block = blocks[layer - 1]
    for names in QKV_NAMES:
        for module in block.modules():
            found = [getattr(module, name, None) for name in names]
            if all(isinstance(f, nn.Linear) for f in found):
                return found[0], found[1], found[2]
    raise KDLightError(
        f"cannot find the self-attention query/key/value projections in {type(model).__name__}'s blocks "
        "(supported: BERT, RoBERTa, ELECTRA, DistilBERT families); use hidden-state losses instead of relations"
    )


@contextmanager
def capture_qkv(model: nn.Module, layers: frozenset[int]) -> Iterator[dict[int, list[Tensor]]]:
    """Collect the Q/K/V projections' outputs of the given blocks during the enclosed forward pass."""
    captured: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    handles = []
    try:
        for layer in sorted(layers):
            for projection in qkv_projections(model, layer):
                handles.append(
                    projection.register_forward_hook(lambda _m, _i, out, layer=layer: captured[layer].append(out))
                )
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def use_eager_attention(model: nn.Module) -> None:
    """Attention maps exist only with the eager implementation (SDPA/flash never build them)."""
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")


def forward_internals(model: nn.Module, inputs: dict[str, Tensor], needs: Needs) -> LayerOutputs:
    """Run ``model`` once, returning its logits (when it has a head) and the internals ``needs`` asks for."""
    with capture_qkv(model, needs.qkv_layers) as captured:
        out = model(**inputs, output_hidden_states=needs.hidden_states, output_attentions=needs.attentions)
    if needs.attentions and not out.attentions:
        raise KDLightError(
            f"{type(model).__name__} returned no attention maps; load it with attn_implementation='eager'"
        )
    qkv = {}
    for layer, tensors in captured.items():
        if len(tensors) != 3:
            raise KDLightError(
                f"captured {len(tensors)} of the 3 query/key/value projections of block {layer}; "
                "this architecture computes them differently: use hidden-state losses instead of relations"
            )
        qkv[layer] = (tensors[0], tensors[1], tensors[2])
    return LayerOutputs(
        logits=getattr(out, "logits", None),
        hidden_states=out.hidden_states if needs.hidden_states else None,
        attentions=out.attentions if needs.attentions else None,
        qkv=qkv,
    )


__all__ = [
    "LayerOutputs",
    "Needs",
    "capture_qkv",
    "depth",
    "forward_internals",
    "num_heads",
    "qkv_projections",
    "use_eager_attention",
    "width",
]
