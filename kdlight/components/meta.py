"""ALM-KD's meta-learner in plain torch: per-example loss-mixing weights and the look-ahead that moves them.

Sivasubramanian, Shenoy, Prathosh AP, Ramakrishnan, "ALM-KD: Knowledge Distillation with noisy labels
via adaptive loss mixing" (arXiv 2202.03250); official code durgas16/AMAL
(``KD/LearnMultiLambdaMeta.py``; early versions ``getLambda/LearnLambdaMeta.py``).

Per example ``i``: ``loss_i = (1 - lambda_i) * CE_i + lambda_i * T^2 * KL(teacher_T || student_T)_i``;
with ``K`` teachers a softmax over CE and the K KD terms. The weights are meta-learned on a clean
validation split: a one-step look-ahead of the student's update (SGD, step size = the current
learning rate) is scored by CE on a clean batch, and that score's gradient updates the weights of
the examples in the batch. The student is then updated with the new (detached) weights.

Where this follows the **code**: a weight table indexed by the example's stable ``idx``, initialised
at 0.9, T = 4; the look-ahead restricted to the last layer (the classification head) by default;
convex weights (we parametrise them by a sigmoid/softmax of a logit table, the early code clamps to
[0, 1] instead). Where it follows the **paper**: per-example convex mixing meta-learned with a
one-step look-ahead on clean data, optionally through all parameters (``lookahead="all"``), and
the multi-teacher softmax. Our own additions: the Meta-Weight-Net style :class:`MixingNetwork`,
``normalize_meta_grad`` (the raw meta-gradient of a table row scales with the student's learning
rate, ~1e-4 for transformers, so the table barely moves with a plain SGD meta step; we divide the
batch's meta-gradient by its mean absolute value, a per-batch step-size normalisation that keeps
its direction), and ``center_meta_grad`` (off by default: subtract the batch's mean meta-gradient,
so the table only re-weights examples relative to one another; measured in an
earlier Rotten Tomatoes ablation, removed in issue 24; git commit 7cf160d has it).

Under DDP the weights are replicated on every rank (kept out of DDP's reducer); each rank's
meta-gradient holds its own examples' rows and is summed across ranks before the meta step, so the
copies stay identical. The authors' own algorithm (``algorithm: official``) is in
:mod:`kdlight.components.meta_official`.

* :class:`LambdaTable` - one learned weight vector per training example, indexed by the example's
  stable ``idx``. One loss term to mix with CE (a single teacher): a sigmoid of one logit,
  ``lambda_i in (0, 1)``. ``K`` teachers: a softmax over ``K + 1`` logits (CE and the K KD terms).
* :class:`MixingNetwork` - per-example losses and confidences in, the same convex weights out; it
  generalises to examples it has not seen.
* :func:`lookahead_meta_gradients` - the gradient, with respect to the weights, of the clean score
  after one differentiable SGD step (a :class:`Lookahead`), exact under data parallelism.
* :class:`MetaLearner` - owns the weights, their optimiser, the meta schedule and its batch counter.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from kdlight.distributed import mean_across_ranks, sum_across_ranks, world_size
from kdlight.errors import KDLightError, check_choice
from kdlight.losses import KLDivergence

Mixer = Literal["table", "network"]
LookaheadScope = Literal["last_layer", "all"]
MetaInterval = Literal["step", "epoch"]
CleanScore = Literal["cross_entropy", "expected_error"]


def clean_score(logits: Tensor, labels: Tensor, kind: CleanScore = "cross_entropy") -> Tensor:
    """The look-ahead's score on a clean batch: mean CE (the paper and the code) or the expected error
    ``1 - p(label)``.

    Why the second: the CE gradient of a clean example is its residual ``softmax - onehot``, large for
    the examples the student gets wrong; once the student fits most of the clean split, the few it
    misclassifies dominate the clean gradient, and a one-step look-ahead then rewards any training step
    that pushes the student away from its own (mostly right) predictions -- which is what a wrong label's
    CE step does. On tweets at 40 % noise this inverted the default table (more label weight on the
    flipped examples; ``benchmarks/results/alm_inversion.md``). The expected error's gradient is the same
    residual times ``p(label)``: the confidently misclassified clean examples no longer dominate.
    """
    if kind == "expected_error":
        return 1 - F.softmax(logits.float(), -1).gather(1, labels.long().view(-1, 1)).mean()
    return F.cross_entropy(logits.float(), labels.long())


# ------------------------------------------------------------------------------------ the weights
def mix_weights_from_logits(logits: Tensor) -> Tensor:
    """Map mixer logits ``(B, 1)`` (sigmoid) or ``(B, K + 1)`` (softmax) to convex weights ``(B, K + 1)``.

    Column 0 weighs the label loss (CE), columns ``1..K`` the KD terms.
    """
    if logits.shape[-1] == 1:
        lam = torch.sigmoid(logits)
        return torch.cat([1 - lam, lam], dim=-1)
    return torch.softmax(logits, dim=-1)


def initial_logits(init_lambda: float, num_teachers: int) -> Tensor:
    """Logits whose weights are ``1 - init_lambda`` on CE and ``init_lambda`` shared by the teachers."""
    if not 0 < init_lambda < 1:
        raise ValueError(f"init_lambda must be in (0, 1), got {init_lambda}")
    if num_teachers == 1:
        return torch.tensor([math.log(init_lambda / (1 - init_lambda))])
    per_teacher = init_lambda / num_teachers
    return torch.tensor([math.log(1 - init_lambda)] + [math.log(per_teacher)] * num_teachers)


class LambdaTable(nn.Module):
    """One row of mixing logits per training example (rows addressed by the example's ``idx``)."""

    def __init__(self, num_examples: int, num_teachers: int = 1, init_lambda: float = 0.9) -> None:
        super().__init__()
        self.num_teachers = num_teachers
        width = 1 if num_teachers == 1 else num_teachers + 1
        rows = initial_logits(init_lambda, num_teachers).repeat(num_examples, 1)
        self.logits = nn.Parameter(rows.reshape(num_examples, width))

    @property
    def num_examples(self) -> int:
        return self.logits.shape[0]

    def check_rows(self, idx: Tensor) -> None:
        """Raise if an example idx has no row. Call it on the host copy of ``idx`` before the batch
        moves (AdaptiveLossMixingKD does): checked in ``forward`` it would read the device back."""
        if len(idx) and (int(idx.max()) >= self.num_examples or int(idx.min()) < 0):
            raise IndexError(f"example idx {int(idx.max())} outside the lambda table of {self.num_examples} rows")

    def forward(self, idx: Tensor, features: Tensor | None = None) -> Tensor:
        return mix_weights_from_logits(self.logits[idx])


class MixingNetwork(nn.Module):
    """A small MLP from per-example features (losses, confidences) to convex mixing weights.

    Features (see :func:`mixer_features`): CE_i, the K KD_i, the student's max probability and
    probability of the given label, and the same two for every teacher.

    ``center``: the batch's mean mixing logit is held at ``init_lambda``'s, so the network learns only how
    a batch's examples differ (as learning-to-reweight and Meta-Weight-Net normalise their weights over
    the batch). Why: the meta-gradient's shared part, the same for every example, can carry every weight
    together to one end (tweets at 60 % noise: every teacher weight to ~0.03) while the part that tells
    flipped labels from clean ones, the part per-example weighting exists for, stays small.

    ``disagreement_lambda`` (one teacher): the examples whose label the teacher does not predict start at this
    teacher weight, the rest at ``init_lambda``; the network's output is added to that per-example start (centred
    too with ``center``). Why: the noisy-trained teacher's disagreement with the label already finds most flipped
    labels (tweets: the rule alone, :class:`~kdlight.modules.TeacherDisagreementKD`, beats the weights ALM learns
    from one start), so this asks whether the meta-learning improves on the rule (in the tweets study it moved
    the weights away from it and tested lower: docs/alm.md).
    """

    def __init__(
        self,
        num_teachers: int = 1,
        hidden: int = 32,
        init_lambda: float = 0.9,
        center: bool = False,
        disagreement_lambda: float | None = None,
    ) -> None:
        super().__init__()
        self.num_teachers, self.center, self.disagreement = num_teachers, center, disagreement_lambda is not None
        if self.disagreement and num_teachers != 1:
            raise KDLightError("disagreement_lambda takes one teacher; remove it for several teachers")
        width = 1 if num_teachers == 1 else num_teachers + 1
        self.net = nn.Sequential(nn.Linear(feature_size(num_teachers), hidden), nn.ReLU(), nn.Linear(hidden, width))
        with torch.no_grad():  # start at init_lambda everywhere, like the table
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.copy_(initial_logits(init_lambda, num_teachers))
        # the centred network's batch mean: moves with .to(), not in the state dict (init_lambda rebuilds it)
        mean = initial_logits(init_lambda, num_teachers).reshape(1, -1)
        self.register_buffer("center_logits", mean, persistent=False)
        # disagreement_lambda: the start of the examples the teacher does not predict the label of, as an offset
        shift = initial_logits(disagreement_lambda, 1) - mean.flatten() if self.disagreement else torch.zeros(1)
        self.register_buffer("disagreement_shift", shift, persistent=False)

    def forward(self, idx: Tensor, features: Tensor | None = None) -> Tensor:
        if features is None:
            raise ValueError("MixingNetwork needs per-example features")
        logits = self.net(features)
        if self.center:  # over this rank's batch (its examples' weights relative to one another)
            logits = logits - logits.mean(0, keepdim=True) + self.center_logits
        if self.disagreement:  # features' last two columns: the teacher's max probability and that of the label
            logits = logits + (features[:, -1:] < features[:, -2:-1]) * self.disagreement_shift
        return mix_weights_from_logits(logits)


def feature_size(num_teachers: int) -> int:
    return 1 + num_teachers + 2 + 2 * num_teachers


@torch.no_grad()
def mixer_features(
    ce: Tensor, kd: list[Tensor], student_logits: Tensor, teacher_logits: list[Tensor], labels: Tensor
) -> Tensor:
    """Per-example inputs of the mixing network (all detached): losses and confidences."""
    cols = [ce.detach().float(), *[k.detach().float() for k in kd]]
    for logits in [student_logits, *teacher_logits]:
        probs = F.softmax(logits.detach().float(), dim=-1)
        cols += [probs.max(-1).values, probs.gather(-1, labels.long().view(-1, 1)).squeeze(-1)]
    return torch.stack(cols, dim=-1)


def mixed_loss(weights: Tensor, ce: Tensor, kd: list[Tensor]) -> Tensor:
    """Mean over the batch of ``w_0 * CE_i + sum_k w_k * KD_k,i``."""
    terms = torch.stack([ce, *kd], dim=-1)
    return (weights * terms).sum(-1).mean()


def teacher_share(weights: Tensor) -> Tensor:
    """The fraction of an example's total weight on the teacher terms; ``1 - w_CE`` for convex weights."""
    return weights[:, 1:].sum(-1) / weights.sum(-1).clamp_min(1e-12)


# ------------------------------------------------------------------------------------ the student
def last_linear_name(model: nn.Module, out_features: int) -> str:
    """Name of the last ``nn.Linear`` producing ``out_features`` outputs (the classification head)."""
    name = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == out_features:
            name = module_name
    if name is None:
        raise ValueError(f"no nn.Linear with {out_features} outputs in {type(model).__name__}")
    return name


@dataclass
class MetaBatch:
    """One batch as the meta-learner sees it (what the LightningModule hands over, instead of many arguments).

    A clean batch carries only ``inputs`` and ``labels``; a training batch also the student's forward
    pass (``logits`` with their graph, for the student's step, and the classification head's input)
    and the teachers' logits.
    """

    inputs: dict[str, Tensor]
    labels: Tensor
    idx: Tensor | None = None
    logits: Tensor | None = None
    head_input: Tensor | None = None
    teacher_logits: list[Tensor] = field(default_factory=list)


# ---------------------------------------------------------------------------------- the look-ahead
def _identity(out: Any) -> Tensor:
    return out


@dataclass
class Lookahead:
    """One differentiable SGD step of ``params`` (of ``module``) on a training batch, scored by CE on a clean batch.

    ``module`` runs as ``functional_call(module, params, kwargs=inputs)``; parameters not in ``params``
    keep their current (constant) values; ``logits_of`` takes the logits out of the module's output.
    """

    module: nn.Module
    params: dict[str, Tensor]
    train_inputs: dict[str, Tensor]
    clean_inputs: dict[str, Tensor]
    clean_labels: Tensor
    lr: float
    logits_of: Callable[[Any], Tensor] = _identity
    score: CleanScore = "cross_entropy"


def lookahead_meta_gradients(
    step: Lookahead, inner_loss: Callable[[Tensor], Tensor], mix_params: list[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """The gradient of the look-ahead's clean score with respect to ``mix_params``, data-parallel exact.

    ``inner_loss(train_logits)`` is the mixed training loss; it must depend on the mixing weights.
    With N ranks, one data-parallel step moves the parameters by the ranks' *mean* gradient, and the
    clean score is the mean over all ranks' clean batches. Each rank's result holds the contributions
    of its own examples; summed across ranks it equals the single-process meta-gradient of the same
    global batch (for equal per-rank batch sizes). Returns (the ranks' mean clean score, gradients).
    """
    params = step.params
    train_logits = step.logits_of(functional_call(step.module, params, args=(), kwargs=step.train_inputs))
    grads = torch.autograd.grad(inner_loss(train_logits), list(params.values()), create_graph=True)
    # the value is the ranks' mean gradient; the derivative flows only into this rank's weights
    means = mean_across_ranks([g.detach() for g in grads])
    grads = [m + (g - g.detach()) / world_size() for m, g in zip(means, grads, strict=True)]
    updated = {name: p.detach() - step.lr * g for (name, p), g in zip(params.items(), grads, strict=True)}
    val_logits = step.logits_of(functional_call(step.module, updated, args=(), kwargs=step.clean_inputs))
    score = clean_score(val_logits, step.clean_labels, step.score)
    # chain rule through the updated parameters, with the clean-score gradient averaged over ranks
    outer = mean_across_ranks(list(torch.autograd.grad(score, list(updated.values()), retain_graph=True)))
    meta = torch.autograd.grad(list(updated.values()), mix_params, grad_outputs=outer, allow_unused=True)
    meta = [torch.zeros_like(p) if g is None else g for p, g in zip(mix_params, meta, strict=True)]
    return mean_across_ranks([score.detach()])[0], meta


# ---------------------------------------------------------------------------------- the component
class MetaLearner(nn.Module):
    """ALM-KD's per-example mixing weights, the meta step that learns them, and its schedule.

    A plain module, registered as the ``meta`` submodule of
    :class:`~kdlight.modules.alm.AdaptiveLossMixingKD`: ``.to()``, ``state_dict`` and checkpoints carry
    its weights (``mixer``) and its batch counter (``batches_seen``). Per training batch the
    LightningModule asks :meth:`step_due`; a meta step is :meth:`meta_gradients` (it sets the weights'
    gradients) followed by a step of :meth:`configure_optimizer`'s optimiser; then the student steps on
    :func:`mixed_loss` of :meth:`losses` with :meth:`weights`, and :meth:`count_batch` ends the batch.

    The weights are created by :meth:`build` at fit start (the table needs the training split's size),
    or from a state dict that holds them. It steps outside the student's backward, so the LightningModule
    keeps it out of DDP's reducer (:func:`kdlight.distributed.keep_out_of_ddp`); it reduces its own
    gradients across ranks. Arguments: see ``AdaptiveLossMixingKD``.
    """

    table_class: type[nn.Module] = LambdaTable
    network_options: ClassVar[dict[str, Any]] = {}  # NetworkMetaLearner's own MixingNetwork arguments
    default_learning_rate = 0.5
    #: every learner class by its full path and its short name (configs name them; checkpoints hold the path)
    registry: ClassVar[dict[str, type[MetaLearner]]] = {}
    #: settings the owning module gives (not the learner's own: kept out of ``to_config``)
    owner_settings = ("num_teachers", "temperature")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        MetaLearner.registry[f"{cls.__module__}.{cls.__qualname__}"] = MetaLearner.registry[cls.__name__] = cls

    def __init__(
        self,
        num_teachers: int = 1,
        mixer: Mixer = "table",
        init_lambda: float = 0.9,
        lookahead: LookaheadScope = "last_layer",
        lookahead_lr: float | None = None,
        meta_every: int = 1,
        meta_interval: MetaInterval = "step",
        meta_warmup: int = 0,
        meta_steps: int = 1,
        meta_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
        meta_learning_rate: float | None = None,
        normalize_meta_grad: bool = True,
        center_meta_grad: bool = False,
        num_examples: int | None = None,
        mixer_hidden: int = 32,
        temperature: float | None = None,
        clean_score: CleanScore = "cross_entropy",
    ) -> None:
        super().__init__()
        self.settings = {k: v for k, v in locals().items() if k not in ("self", "__class__", *self.owner_settings)}
        if meta_learning_rate is None:
            meta_learning_rate = self.default_learning_rate
        check_choice("mixer", mixer, Mixer)
        check_choice("lookahead", lookahead, LookaheadScope)
        check_choice("meta_interval", meta_interval, MetaInterval)
        check_choice("clean_score", clean_score, CleanScore)
        self.clean_score = clean_score
        if meta_every < 1 or meta_steps < 0 or meta_warmup < 0:
            raise KDLightError("meta_every must be >= 1, meta_steps and meta_warmup >= 0")
        if not 0 < init_lambda < 1:
            raise KDLightError(f"init_lambda must be in (0, 1), got {init_lambda}")
        if meta_learning_rate < 0:
            raise KDLightError(f"meta_learning_rate must be >= 0, got {meta_learning_rate}")
        if lookahead_lr is not None and lookahead_lr < 0:
            raise KDLightError(f"lookahead_lr must be >= 0, got {lookahead_lr}")
        if mixer_hidden < 1 or (num_examples is not None and num_examples < 1):
            raise KDLightError(f"mixer_hidden and num_examples must be >= 1, got {mixer_hidden} and {num_examples}")
        self.num_teachers, self.kind, self.init_lambda, self.hidden = num_teachers, mixer, init_lambda, mixer_hidden
        self.scope, self.lookahead_lr, self.num_examples = lookahead, lookahead_lr, num_examples
        self.every, self.interval, self.warmup, self.meta_steps = meta_every, meta_interval, meta_warmup, meta_steps
        self.optimizer_factory, self.learning_rate = meta_optimizer, meta_learning_rate
        self.normalize, self.center = normalize_meta_grad, center_meta_grad
        self.temperature = temperature
        self.kd_loss = KLDivergence(4.0 if temperature is None else temperature, reduction="none")
        self.register_module("mixer", None)
        # training batches seen: the meta schedule counts these, not global_step (which also counts the
        # meta optimiser's steps); a buffer, so checkpoints carry it and a resumed fit continues it
        self.register_buffer("batches_seen", torch.zeros(1, dtype=torch.long))
        self._host_batches: int | None = None  # batches_seen on the host: the schedule reads no device tensor
        self._head_name: str | None = None

    # ------------------------------------------------------------------------------- config
    def to_config(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}`` as plain data (the module's hyper-parameters and checkpoints hold this;
        an optimiser factory is not data: a learner rebuilt from it gets the default optimiser)."""
        init_args = {**self.settings, "meta_learning_rate": self.learning_rate}
        init_args.pop("meta_optimizer", None)
        init_args.update(getattr(self, "own_settings", {}))  # a subclass's own arguments
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": init_args}

    @staticmethod
    def from_config(config: MetaLearner | dict | None, **owner: Any) -> MetaLearner:
        """A learner from a config (:meth:`to_config`'s form, or a class name), an instance, or None (the
        default), attached to its owner's ``num_teachers`` and ``temperature``."""
        if config is None:
            config = {"class_path": "MetaLearner"}
        if isinstance(config, MetaLearner):
            return config.attach(**owner)
        if not isinstance(config, dict) or config.get("class_path") not in MetaLearner.registry:
            known = sorted(name for name in MetaLearner.registry if "." not in name)
            raise KDLightError(f"meta {config!r} is not a meta-learner; give {{class_path: one of {known}, init_args}}")
        return MetaLearner.registry[config["class_path"]](**(config.get("init_args") or {})).attach(**owner)

    def attach(self, num_teachers: int = 1, temperature: float = 4.0) -> MetaLearner:
        """Take the owning module's teacher count and KD temperature (one temperature for the whole module)."""
        if self.temperature is not None and self.temperature != temperature:
            raise KDLightError(
                f"the meta-learner's temperature {self.temperature} differs from the module's {temperature}; "
                "set model.temperature only"
            )
        if self.mixer is not None and num_teachers != self.num_teachers:
            raise KDLightError(
                f"this meta-learner's weights are for {self.num_teachers} teacher(s), not {num_teachers}"
            )
        self.num_teachers = num_teachers
        self.kd_loss = KLDivergence(temperature, reduction="none")
        return self

    def rows_for(self, datamodule: Any) -> int | None:
        """Rows of the lambda table for this data: ``num_examples``, else ``max idx + 1`` of the training split."""
        num, largest = self.num_examples, getattr(datamodule, "max_train_idx", None)
        if self.kind != "table":
            return num
        if num is None and largest is None:
            raise KDLightError(
                "AdaptiveLossMixingKD needs data: NoisyLabelDataModule (clean batches and example ids), or set "
                "num_examples"
            )
        if num is not None and largest is not None and num <= largest:  # checked now: mid-training an IndexError
            raise KDLightError(
                f"num_examples={num} is smaller than the training set: its example ids run to {largest}, so the "
                f"lambda table needs {largest + 1} rows; set num_examples to {largest + 1} or more, or leave it "
                "null (sized from the data)"
            )
        return num if num is not None else largest + 1

    # ------------------------------------------------------------------------------- weights
    def build(self, num_examples: int | None = None) -> nn.Module:
        """Create the weights: the table (``num_examples`` rows, default the constructor's) or the network."""
        num_examples = num_examples or self.num_examples
        if self.kind == "network":
            mixer = MixingNetwork(self.num_teachers, self.hidden, self.init_lambda, **self.network_options)
        elif not num_examples:
            raise KDLightError("the lambda table needs num_examples (or a NoisyLabelDataModule to count them)")
        else:
            mixer = self.table_class(num_examples, self.num_teachers, self.init_lambda)
        self.mixer = mixer.to(self.batches_seen.device)
        return self.mixer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if self.mixer is None and any(k.startswith(prefix + "mixer.") for k in state_dict):  # a fitted learner's state
            rows = state_dict.get(prefix + "mixer.logits", state_dict.get(prefix + "mixer.lam"))
            self.build(rows.shape[0] if rows is not None else None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._host_batches = None  # the restored counter is read again

    def check_rows(self, idx: Tensor) -> None:
        """Raise if a (host) example idx has no row in the table."""
        if isinstance(self.mixer, LambdaTable):
            self.mixer.check_rows(idx)

    def configure_optimizer(self) -> torch.optim.Optimizer | None:
        """The weights' optimiser: ``meta_optimizer``, else SGD (table) or Adam (network) at ``meta_learning_rate``."""
        if self.mixer is None:  # asked outside fit (tests): build from the constructor's num_examples
            self.build()
        params = list(self.mixer.parameters())
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params)
        if self.kind == "network":
            return torch.optim.Adam(params, lr=self.learning_rate)
        return torch.optim.SGD(params, lr=self.learning_rate)

    # ------------------------------------------------------------------------------ schedule
    def read_batches_seen(self) -> None:
        """Copy the batch counter to the host (at fit start, after any checkpoint restore): one read per fit."""
        self._host_batches = int(self.batches_seen[0])

    def step_due(self, epoch: int) -> bool:
        """Whether this batch has meta steps: every ``meta_every`` batches (or epochs) from ``meta_warmup``."""
        if self.meta_steps == 0:
            return False
        if self.interval == "step":
            if self._host_batches is None:
                self.read_batches_seen()
            count = self._host_batches
        else:
            count = epoch
        return count >= self.warmup and (count - self.warmup) % self.every == 0

    def pass_due(self, epoch: int) -> bool:
        """Whether a meta pass over the training set opens this epoch (the official algorithm only)."""
        return False

    def count_batch(self) -> None:
        self.batches_seen += 1
        if self._host_batches is not None:
            self._host_batches += 1

    # -------------------------------------------------------------------------------- losses
    def head(self, student: nn.Module) -> nn.Linear:
        """The student's classification head (the last linear layer with one output per label)."""
        if self._head_name is None:  # the student's shape never changes: look it up once
            self._head_name = last_linear_name(student, student.config.num_labels)
        return student.get_submodule(self._head_name)

    def student_forward(self, student: nn.Module, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The student's logits and its head's input (``model(inputs, last=True)`` in the authors' code)."""
        captured: dict[str, Tensor] = {}
        hook = self.head(student).register_forward_hook(lambda m, args, out: captured.__setitem__("x", args[0]))
        try:
            logits = student(**inputs).logits
        finally:
            hook.remove()
        return logits, captured["x"]

    def losses(self, batch: MetaBatch, logits: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """Per-example CE on the (noisy) labels and each teacher's ``T^2 KL``, of ``logits`` or the batch's."""
        logits = batch.logits if logits is None else logits
        ce = F.cross_entropy(logits.float(), batch.labels.long(), reduction="none")
        return ce, [self.kd_loss(logits, t) for t in batch.teacher_logits]

    def _features(self, batch: MetaBatch, ce: Tensor, kd: list[Tensor]) -> Tensor | None:
        if self.kind != "network":
            return None
        return mixer_features(ce, kd, batch.logits, batch.teacher_logits, batch.labels)

    @torch.no_grad()
    def weights(self, batch: MetaBatch, ce: Tensor, kd: list[Tensor]) -> Tensor:
        """The batch's current (detached) mixing weights ``(B, K + 1)``; ``ce``, ``kd`` from :meth:`losses`."""
        return self.mixer(batch.idx, self._features(batch, ce, kd)).detach()

    def teacher_weight(self, weights: Tensor) -> Tensor:
        """The logged lambda: each example's total weight on the teacher terms."""
        return 1 - weights[:, 0]

    # ----------------------------------------------------------------------------- meta step
    def meta_gradients(self, student: nn.Module, batch: MetaBatch, clean: MetaBatch, student_lr: float) -> Tensor:
        """Set the weights' ``.grad`` to the meta-gradient of ``batch``'s weights; returns the clean score.

        One SGD step of the student (its head, or all of its parameters; step size ``lookahead_lr`` or
        the student's ``student_lr``) on ``batch``'s mixed loss, differentiable in the weights, is scored
        by CE on ``clean``; the gradient of that score is reduced across ranks (and optionally centred
        and normalised, see the module docstring). The caller steps the optimiser.
        """
        ce0, kd0 = self.losses(batch, batch.logits.detach()) if self.kind == "network" else (None, None)
        weights = self.mixer(batch.idx, self._features(batch, ce0, kd0))

        def inner_loss(train_logits: Tensor) -> Tensor:
            return mixed_loss(weights, *self.losses(batch, train_logits))

        params = list(self.mixer.parameters())
        score, grads = lookahead_meta_gradients(self._lookahead(student, batch, clean, student_lr), inner_loss, params)
        for p, g in zip(params, self._reduce(grads, batch.idx), strict=True):
            p.grad = g.detach()
        return score.detach()

    def _lookahead(self, student: nn.Module, batch: MetaBatch, clean: MetaBatch, student_lr: float) -> Lookahead:
        lr = self.lookahead_lr if self.lookahead_lr is not None else student_lr
        if self.scope == "all":
            params = {k: v for k, v in student.named_parameters() if v.requires_grad}
            return Lookahead(
                student, params, batch.inputs, clean.inputs, clean.labels, lr, lambda out: out.logits, self.clean_score
            )
        head = self.head(student)
        with torch.no_grad():  # the clean batch's head input under the current (fixed) body
            _, clean_input = self.student_forward(student, clean.inputs)
        params = dict(head.named_parameters())
        inputs, clean_inputs = {"input": batch.head_input}, {"input": clean_input}
        return Lookahead(head, params, inputs, clean_inputs, clean.labels, lr, score=self.clean_score)

    def _reduce(self, grads: list[Tensor], idx: Tensor) -> list[Tensor]:
        """The global batch's meta-gradient on every rank, centred and normalised over the global batch's rows."""
        if self.kind == "table" and self.center:
            # before the cross-rank sum, while each rank's gradient holds only its own rows: every rank
            # subtracts the global batch's mean row from its rows, so the summed table stays identical
            rows = grads[0][idx]  # (B, width)
            local = torch.cat([rows.sum(0), rows.new_full((1,), float(len(idx)))])  # new_full: no host-to-device copy
            (total,) = sum_across_ranks([local])
            grads[0] = grads[0].index_put((idx,), rows - total[:-1] / total[-1])
        grads = sum_across_ranks(grads)  # each rank holds its own examples' contributions: their sum is the global one
        if self.kind == "table" and self.normalize:
            # the mean |gradient| over the global batch's rows, the same number on every rank
            local = torch.stack([grads[0][idx].abs().sum(), grads[0].new_full((), float(grads[0][idx].numel()))])
            (total,) = sum_across_ranks([local])
            grads[0] = grads[0] / (total[0] / total[1]).clamp_min(1e-12)
        return grads

    # ------------------------------------------------------------------------------ analysis
    @torch.no_grad()
    def table_lambdas(self) -> Tensor:
        """Current teacher weight of every table row (``1 - w_CE``), for analysis."""
        if self.kind != "table" or self.mixer is None:
            raise KDLightError("table_lambdas needs mixer='table'")
        return teacher_share(self.mixer(torch.arange(self.mixer.num_examples, device=self.batches_seen.device)))


class NetworkMetaLearner(MetaLearner):
    """:class:`MetaLearner` with the mixing network (``mixer: network``): per-example weights from the
    examples' losses and confidences, so they generalise to examples not seen; its optimiser is Adam.

    Args:
        mixer_hidden: the network's hidden width.
        center: hold each batch's mean mixing logit at ``init_lambda``'s: the network learns only how the
            batch's examples differ (see :class:`MixingNetwork`); start it at the fixed lambda you would use.
        disagreement_lambda: start the examples whose label the teacher does not predict at this teacher weight
            (the rest at ``init_lambda``): the meta-learning starts from the rule of
            :class:`~kdlight.modules.TeacherDisagreementKD` instead of from one weight for all.
        **kwargs: :class:`MetaLearner`'s (not its table-only ones).
    """

    def __init__(
        self, mixer_hidden: int = 32, center: bool = False, disagreement_lambda: float | None = None, **kwargs: Any
    ) -> None:
        defaults = inspect.signature(MetaLearner.__init__).parameters
        table_only = ("num_examples", "normalize_meta_grad", "center_meta_grad", "mixer")
        table_only = [k for k in table_only if k in kwargs and kwargs[k] != defaults[k].default]
        if table_only:
            raise KDLightError(f"{table_only[0]} does not apply to NetworkMetaLearner (it is the table's); remove it")
        kwargs = {
            k: v
            for k, v in kwargs.items()
            if k not in ("num_examples", "normalize_meta_grad", "center_meta_grad", "mixer")
        }
        super().__init__(mixer="network", mixer_hidden=mixer_hidden, **kwargs)
        for key in ("num_examples", "normalize_meta_grad", "center_meta_grad", "mixer"):
            self.settings.pop(key)
        if disagreement_lambda is not None and not 0 < disagreement_lambda < 1:
            raise KDLightError(f"disagreement_lambda must be in (0, 1) (a teacher weight), got {disagreement_lambda}")
        self.network_options = {"center": center, "disagreement_lambda": disagreement_lambda}
        # kept out of the config when off: older configs and checkpoints read the same
        self.own_settings = {k: v for k, v in self.network_options.items() if v not in (False, None)}


def lookahead_assumption(optimizers: Any, settings: dict) -> str:
    """One line for the log: which update the look-ahead models, and how it differs from the student's optimiser."""
    student_opt = optimizers[0] if isinstance(optimizers, list) else optimizers
    real = getattr(student_opt, "optimizer", student_opt)  # Lightning's wrapper
    step = "lookahead_lr" if settings.get("lookahead_lr") is not None else "the student's current lr"
    line = f"one plain SGD step of size {step} (as the authors' code); the student's optimiser is {type(real).__name__}"
    if not isinstance(real, torch.optim.SGD):
        return line + ": the look-ahead does not model its update (set optimizer: torch.optim.SGD to make it)"
    group = real.param_groups[0]
    if group.get("momentum") or group.get("weight_decay"):
        return line + (
            f" with momentum {group.get('momentum', 0)} (nesterov {group.get('nesterov', False)}) and weight decay "
            f"{group.get('weight_decay', 0)}, which the look-ahead leaves out, as the authors' code does"
        )
    return line + ": the look-ahead models its update"


MetaLearner.registry.update({"kdlight.components.meta.MetaLearner": MetaLearner, "MetaLearner": MetaLearner})

__all__ = [
    "CleanScore",
    "LambdaTable",
    "Lookahead",
    "LookaheadScope",
    "MetaBatch",
    "MetaInterval",
    "MetaLearner",
    "Mixer",
    "MixingNetwork",
    "NetworkMetaLearner",
    "clean_score",
    "lookahead_assumption",
    "lookahead_meta_gradients",
    "mixed_loss",
    "mixer_features",
]
