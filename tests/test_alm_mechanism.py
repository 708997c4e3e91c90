"""ALM-KD's mechanism on a case whose answer is obvious: a perfect teacher, labels flipped on a known half.

Every training example of a separable 3-class problem has a teacher that is always right; half of the
examples (a known set) carry a wrong label. Whatever the mode, a meta-learner that works must end with
more weight on the teacher for the flipped half than for the clean half (and the weight must detect the
flipped labels: ROC-AUC well above chance). Each mode runs through the same components the
LightningModule uses (``MetaLearner.meta_gradients`` + its optimiser's step, then the student's step on
``mixed_loss``; ``OfficialMetaLearner.meta_pass`` between epochs), with the student trained by SGD so the
look-ahead models its real update.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kdlight.components.meta import MetaBatch, MetaLearner, NetworkMetaLearner, mixed_loss
from kdlight.components.meta_official import OfficialMetaLearner
from kdlight.errors import KDLightError
from kdlight.lambda_monitor import flipped_label_auc

NUM_CLASSES, DIM, HIDDEN = 3, 8, 16


class TinyStudent(nn.Module):
    """An HF-like classifier (``config.num_labels``, ``forward(**inputs).logits``): a tanh layer and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_labels=NUM_CLASSES)
        self.body = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.Tanh())
        self.classifier = nn.Linear(HIDDEN, NUM_CLASSES)

    def forward(self, features):
        return SimpleNamespace(logits=self.classifier(self.body(features)))


def synthetic_problem(
    seed: int = 0,
    num_train: int = 240,
    num_clean: int = 60,
    offset: float = 0.0,
    priors: list[float] | None = None,
    separation: float = 2.0,
):
    """Gaussian classes; the teacher's logits are 5 * one-hot(true class); labels flipped on the first half.

    ``offset`` adds a shared component to every input (the features of pretrained encoders have one).
    """
    g = torch.Generator().manual_seed(seed)
    means = separation * torch.randn(NUM_CLASSES, DIM, generator=g)

    def draw(n):
        probs = torch.tensor(priors or [1.0] * NUM_CLASSES)
        y = torch.multinomial(probs, n, replacement=True, generator=g)
        return means[y] + torch.randn(n, DIM, generator=g) + offset, y

    x, y = draw(num_train)
    flipped = torch.zeros(num_train, dtype=torch.bool)
    flipped[: num_train // 2] = True
    noisy = y.clone()
    noisy[flipped] = (y[flipped] + torch.randint(1, NUM_CLASSES, (int(flipped.sum()),), generator=g)) % NUM_CLASSES
    teacher = 5.0 * nn.functional.one_hot(y, NUM_CLASSES).float()
    xc, yc = draw(num_clean)
    return SimpleNamespace(x=x, labels=noisy, true=y, flipped=flipped, teacher=teacher, clean_x=xc, clean_y=yc)


def observe(learner: MetaLearner, student: nn.Module, data, idx: torch.Tensor) -> MetaBatch:
    """A training batch as AdaptiveLossMixingKD.observe builds it."""
    inputs = {"features": data.x[idx]}
    logits, head_input = learner.student_forward(student, inputs)
    return MetaBatch(inputs, data.labels[idx], idx, logits, head_input.detach(), [data.teacher[idx]])


def clean_batches(data, size: int = 30):
    g = torch.Generator().manual_seed(1)
    while True:
        order = torch.randperm(len(data.clean_y), generator=g)
        for start in range(0, len(order) - size + 1, size):
            sel = order[start : start + size]
            yield MetaBatch({"features": data.clean_x[sel]}, data.clean_y[sel])


def train(
    mode: str,
    epochs: int = 8,
    lr: float = 0.1,
    batch: int = 24,
    warmup: int = 0,
    clean_score: str = "cross_entropy",
    **problem,
) -> tuple[torch.Tensor, ...]:
    """Train one ALM mode on the synthetic problem; returns (teacher weight per example, flipped mask)."""
    torch.manual_seed(0)
    data = synthetic_problem(**problem)
    student = TinyStudent()
    common = dict(num_examples=len(data.labels), init_lambda=0.5, temperature=1.0, clean_score=clean_score)
    if mode == "official":
        learner = OfficialMetaLearner(
            grad_fit=2, warm_epoch=max(warmup, 1), select_every=1, meta_learning_rate=5.0, **common
        )
    elif mode == "network":
        learner = MetaLearner(mixer="network", meta_learning_rate=0.01, **common)
    elif mode in ("network_centred", "network_disagreement"):
        common.pop("num_examples")
        start = {"disagreement_lambda": 0.9} if mode == "network_disagreement" else {}
        learner = NetworkMetaLearner(center=True, meta_learning_rate=0.01, **start, **common)
    else:
        centre = mode == "table_centred"
        learner = MetaLearner(mixer="table", meta_learning_rate=0.2, center_meta_grad=centre, **common)
    learner.warmup = warmup * -(-len(data.labels) // batch)  # meta steps from this batch on (epochs of no meta)
    meta_opt = learner.configure_optimizer()
    student_opt = torch.optim.SGD(student.parameters(), lr=lr)
    clean = clean_batches(data)
    learner.read_batches_seen()
    g = torch.Generator().manual_seed(2)
    for epoch in range(epochs):
        order = torch.randperm(len(data.labels), generator=g)
        if learner.pass_due(epoch):
            with torch.no_grad():
                student.eval()
                batches = (observe(learner, student, data, order[s : s + batch]) for s in range(0, len(order), batch))
                learner.meta_pass(student, batches, clean, lr)
                student.train()
        for start in range(0, len(order), batch):
            seen = observe(learner, student, data, order[start : start + batch])
            if learner.step_due(epoch):
                learner.meta_gradients(student, seen, next(clean), lr)
                meta_opt.step()
            ce, kd = learner.losses(seen)
            loss = mixed_loss(learner.weights(seen, ce, kd), ce, kd)
            student_opt.zero_grad()
            loss.backward()
            student_opt.step()
            learner.count_batch()
    all_idx = torch.arange(len(data.labels))
    with torch.no_grad():
        seen = observe(learner, student, data, all_idx)
        weights = learner.weights(seen, *learner.losses(seen))
    return learner.teacher_weight(weights) if mode != "official" else weights[:, 1] / weights.sum(-1), data.flipped


MODES = ["table", "table_centred", "network", "network_centred", "network_disagreement", "official"]


@pytest.mark.parametrize("mode", MODES)
def test_teacher_weight_is_higher_on_the_flipped_half(mode):
    lam, flipped = train(mode)
    on_flipped, on_clean = float(lam[flipped].mean()), float(lam[~flipped].mean())
    auc = flipped_label_auc(lam, flipped)
    assert on_flipped > on_clean + 0.05, f"{mode}: teacher weight {on_flipped:.3f} on flipped vs {on_clean:.3f} clean"
    assert auc > 0.8, f"{mode}: the teacher weight detects flipped labels with ROC-AUC {auc:.3f} only"


def test_flipped_label_auc():
    flipped = torch.tensor([True, True, False, False])
    assert flipped_label_auc(torch.tensor([0.9, 0.8, 0.1, 0.2]), flipped) == 1.0
    assert flipped_label_auc(torch.tensor([0.1, 0.2, 0.9, 0.8]), flipped) == 0.0
    assert flipped_label_auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), flipped) == 0.5  # ties count one half
    assert flipped_label_auc(torch.tensor([0.9, 0.3, 0.5, 0.2]), flipped) == 0.75
    assert flipped_label_auc(torch.tensor([0.9, 0.1]), torch.tensor([True, True])) is None  # one class only


class FakeModule:
    """What the monitor needs of an ALM module: the last batch's weights, ``log_dict`` and a trainer."""

    def __init__(self) -> None:
        self.trainer = SimpleNamespace(world_size=1, current_epoch=0)
        self.logged: list[dict] = []
        self.last_teacher_weight = None

    def log_dict(self, values, **kwargs) -> None:
        self.logged.append(values)


def test_lambda_monitor_on_its_own():
    """Two epochs of two batches: per-epoch means on flipped / clean examples and the AUC, logged and kept."""
    from kdlight.lambda_monitor import LambdaMonitor

    monitor, module = LambdaMonitor(plot=False), FakeModule()
    epochs = [
        [(torch.tensor([0.9, 0.5]), torch.tensor([1, 0])), (torch.tensor([0.3, 0.7]), torch.tensor([0, 1]))],
        [(torch.tensor([0.2, 0.6]), torch.tensor([1, 0])), (torch.tensor([0.4, 0.8]), torch.tensor([0, 0]))],
    ]
    for epoch, batches in enumerate(epochs):
        module.trainer.current_epoch = epoch
        monitor.on_train_epoch_start(module.trainer, module)
        for i, (weight, flipped) in enumerate(batches):
            module.last_teacher_weight = (torch.arange(2), weight)
            monitor.on_train_batch_end(module.trainer, module, None, {"is_flipped": flipped}, i)
            assert module.last_teacher_weight is None  # consumed: a step without weights adds nothing
            monitor.on_train_batch_end(module.trainer, module, None, {"is_flipped": flipped}, i)
        monitor.on_train_epoch_end(module.trainer, module)
    first, second = monitor.history
    assert first["flipped"] == pytest.approx(0.8) and first["clean"] == pytest.approx(0.4)
    assert first["flipped_auc"] == 1.0 and second["flipped_auc"] == 0.0
    assert second["flipped"] == pytest.approx(0.2) and second["clean"] == pytest.approx(0.6)
    assert module.logged[0]["lambda/flipped_auc"] == 1.0
    assert module.last_flip_stats["lambda_flipped"] == pytest.approx(0.2)


def test_the_centred_network_learns_only_how_a_batch_differs():
    """``NetworkMetaLearner(center=True)``: whatever its parameters, a batch's mean mixing logit stays at
    ``init_lambda``'s, so a shared drift of the meta-gradient cannot carry every weight to one end; its state
    dict is the plain network's (checkpoints of either load in the other) and its config round-trips."""
    from kdlight.components.meta import feature_size

    centred = NetworkMetaLearner(center=True, init_lambda=0.3)
    plain = NetworkMetaLearner(init_lambda=0.3)
    centred.build(), plain.build()
    with torch.no_grad():
        for p in centred.mixer.parameters():
            p.add_(0.2 * torch.randn_like(p))  # away from the start: the plain network's weights drift with these
    centred_state = centred.mixer.state_dict()
    plain.mixer.load_state_dict(centred_state)
    assert set(centred_state) == set(plain.mixer.state_dict())
    features = torch.randn(16, feature_size(1))
    lam = centred.teacher_weight(centred.mixer(None, features))
    drifted = plain.teacher_weight(plain.mixer(None, features))
    assert torch.logit(lam).mean().item() == pytest.approx(torch.logit(torch.tensor(0.3)).item(), abs=1e-5)
    assert abs(torch.logit(drifted).mean().item() - torch.logit(torch.tensor(0.3)).item()) > 0.05  # not centred
    # the same order of examples: centring moves every logit of the batch by one shift
    assert torch.equal(lam.argsort(), drifted.argsort())
    config = centred.to_config()
    assert config["init_args"]["center"] is True and "center" not in plain.to_config()["init_args"]
    assert MetaLearner.from_config(config).network_options["center"]


def test_the_disagreement_start_puts_the_teacher_first_where_it_does_not_predict_the_label():
    """``disagreement_lambda``: the examples whose label is not the teacher's argmax start at that teacher weight,
    the rest at ``init_lambda`` (centred or not); the option round-trips through the config and is one teacher's."""
    from kdlight.components.meta import MixingNetwork, feature_size

    features = torch.rand(8, feature_size(1))
    features[:, -2] = 0.8  # the teacher's max probability
    features[:, -1] = torch.tensor([0.8, 0.1] * 4)  # its probability of the label: odd rows disagree
    for center in (True, False):
        learner = NetworkMetaLearner(center=center, init_lambda=0.1, disagreement_lambda=0.9)
        learner.build()
        lam = learner.teacher_weight(learner.mixer(None, features))
        assert torch.allclose(lam[1::2], torch.full((4,), 0.9), atol=0.02), lam
        assert torch.allclose(lam[::2], torch.full((4,), 0.1), atol=0.02), lam
        config = learner.to_config()
        assert config["init_args"]["disagreement_lambda"] == 0.9
        assert MetaLearner.from_config(config).network_options == learner.network_options
    assert "disagreement_lambda" not in NetworkMetaLearner(center=True).to_config()["init_args"]
    with pytest.raises(KDLightError, match="one teacher"):
        MixingNetwork(num_teachers=2, disagreement_lambda=0.9)
    with pytest.raises(KDLightError, match=r"disagreement_lambda must be in \(0, 1\)"):
        NetworkMetaLearner(disagreement_lambda=1.0)
