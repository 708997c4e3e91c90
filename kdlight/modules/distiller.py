"""TeacherStudentModule: a frozen teacher and a trainable student; BaseDistiller: that plus one loss hook on logits.

A training step is: teacher forward (no grad) -> student forward -> ``compute_loss`` -> logged
parts. A new KD variant overrides ``compute_loss`` only. Variants with their own optimisation loop
(adversarial, meta-learned) set ``automatic_optimization = False`` and override ``training_step``,
always stepping through ``self.manual_backward`` so DDP and precision plugins stay in charge.

The teacher is loaded once, kept in eval mode (also after Lightning's ``.train()`` calls), never in
the optimiser, and never written into the student's checkpoint: :class:`TeacherStudentModule` owns
that, and the student spec (rebuilt from a checkpoint's plain hyper-parameters), for every module that
distils one network into another, on logits (:class:`BaseDistiller`) or on internals only
(:class:`~kdlight.modules.general.GeneralDistillation`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader

from kdlight.assets import cache_dir
from kdlight.data.base import Collator, LabelledTextDataModule
from kdlight.errors import KDLightError
from kdlight.losses import check_temperature, distillation_loss
from kdlight.metrics import headline
from kdlight.models.hf import load_classifier
from kdlight.models.layers import LayerOutputs, Needs, forward_internals
from kdlight.models.students import PretrainedStudent, StudentSpec, TruncatedTeacher, check_compatible
from kdlight.modules.task import KDLightTask, model_inputs
from kdlight.teacher_cache import TeacherLogitCache

CACHE_HIT_KEY = "kdlight_teacher_cached"  # set on training batches when a teacher-logit cache is in use

# The frozen teacher is in eval mode on purpose; Lightning warns about any eval-mode module.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
# Distillers take host-side decisions in on_before_batch_transfer (a datamodule overriding that hook
# wins, and the step then works the same things out on the device); Lightning warns about any override.
warnings.filterwarnings(
    "ignore", message=r".*overridden `on_before_batch_transfer` in `LightningModule` but have passed in.*"
)


class TeacherStudentModule(KDLightTask):
    """A frozen teacher and a student built from a :class:`~kdlight.models.students.StudentSpec`.

    Subclasses say how the teacher loads (:meth:`load_teacher`) and what of the spec's network is
    the student (:meth:`build_student`); the teacher's freezing, eval mode and absence from
    checkpoints are the same for all.

    Args:
        teacher: where the teacher loads from (folder, hub name, or a kdlight ``.ckpt``).
        student: how to build the student; default :meth:`default_student`.
        **kwargs: see :class:`KDLightTask`.
    """

    predictor_attr = "student"
    default_tokenizer_arg = "teacher"

    def __init__(self, teacher: str, student: StudentSpec | None = None, **kwargs) -> None:
        self.teacher_source = os.fspath(teacher)
        # a spec read back from a checkpoint's hyper-parameters is plain data: rebuild it
        self.student_spec = StudentSpec.from_config(student) or self.default_student()
        super().__init__(**kwargs)

    def default_student(self) -> StudentSpec:
        """The student when none is given: the teacher cut to 2 layers."""
        return TruncatedTeacher(num_layers=2)

    # ------------------------------------------------------------------------------- models
    def load_teacher(self) -> torch.nn.Module:
        """The teacher network (frozen by :meth:`configure_models`): a fine-tuned classifier of the task's labels."""
        task = self.task
        return load_classifier(
            self.teacher_source, task.num_labels, task.label_names, require_head=True, role="teacher"
        )

    def build_student(self, teacher: torch.nn.Module) -> torch.nn.Module:
        """The student network, built by the spec from the (frozen) teacher."""
        student = self.student_spec.build(teacher, self.task.num_labels, self.task.label_names)
        check_compatible(teacher, student)
        return student

    def configure_models(self) -> None:
        self.teacher = self.load_teacher().eval().requires_grad_(False)
        self.student = self.build_student(self.teacher).train()

    def auxiliary_networks(self) -> dict[str, tuple[str, torch.nn.Module]]:
        """Networks besides the teacher and the student (more teachers, a generator): role -> (source, network),
        checked against the data's tokenizer and length like those two."""
        return {}

    def model_sources(self) -> dict[str, str]:
        sources = {"teacher": self.teacher_source}
        if isinstance(self.student_spec, PretrainedStudent):
            sources["student"] = self.student_spec.name_or_path
        return sources | {role: source for role, (source, _) in self.auxiliary_networks().items()}

    def position_limited_models(self) -> dict[str, torch.nn.Module]:
        models = {"teacher": self.teacher, "student": self.student}
        return models | {role: network for role, (_, network) in self.auxiliary_networks().items()}

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # Lightning calls .train() on the whole module each epoch
        return self

    def internals(
        self, batch: dict[str, Tensor], student_needs: Needs, teacher_needs: Needs
    ) -> tuple[LayerOutputs, LayerOutputs]:
        """The student's and the teacher's (gradient-free) hidden states, attentions or Q/K/V on one batch,
        as much as the losses need: what internal-state losses compare."""
        inputs = model_inputs(batch)
        with torch.no_grad():
            teacher = forward_internals(self.teacher, inputs, teacher_needs)
        return forward_internals(self.student, inputs, student_needs), teacher

    # ----------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # The teacher is frozen and reloaded from its own source; keep it out of the checkpoint.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        checkpoint["state_dict"].update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})


class BaseDistiller(TeacherStudentModule):
    """Args:
    teacher: the fine-tuned teacher: a ``save_pretrained`` folder (what TeacherFineTuning
        exports), a hub name, or a TeacherFineTuning ``.ckpt``.
    student: how to build the student (``TruncatedTeacher``, ``FreshStudent``,
        ``PretrainedStudent``, ``CompressedEmbeddingStudent``); default: the teacher cut to 2 layers.
    temperature: softmax temperature of the KD term.
    cache_teacher_logits: compute the teacher's logits on the training set once (first fit
        start) and look them up by example ``idx`` afterwards; reused across runs, invalidated
        when the teacher or the tokenised data change. Only for fixed student inputs.
    teacher_cache_dir: where the cache lives (default ``<kdlight cache>/teacher_logits``).
    **kwargs: see :class:`KDLightTask`.
    """

    def __init__(
        self,
        teacher: str,
        student: StudentSpec | None = None,
        temperature: float = 1.0,
        cache_teacher_logits: bool = False,
        teacher_cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        check_temperature(temperature)  # before the teacher is loaded: bad arguments fail first
        self.teacher_cache: TeacherLogitCache | None = None
        super().__init__(teacher=teacher, student=student, **kwargs)

    def configure_losses(self) -> None:
        self.kd_loss = distillation_loss(self.task.num_labels, self.hparams.temperature)

    # ------------------------------------------------------------------------------ forward
    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, Tensor]) -> Tensor:
        if self.teacher_cache is not None and self._trainer is not None and self.trainer.training:
            cached = self.teacher_cache.lookup(batch["idx"], batch.get(CACHE_HIT_KEY))
            if cached is not None:
                return cached
        return self.teacher(**model_inputs(batch)).logits

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # whether the cache holds the whole batch is decided here, while ``idx`` is still on the
        # host: deciding it in the step would read a device tensor back (a sync) every step
        if (
            self.teacher_cache is not None
            and self._trainer is not None
            and self.trainer.training
            and isinstance(batch, dict)
            and "idx" in batch
        ):
            batch[CACHE_HIT_KEY] = self.teacher_cache.covers(batch["idx"])
        return batch

    def on_fit_start(self) -> None:
        if self.hparams.cache_teacher_logits and self.teacher_cache is None:
            self.teacher_cache = self._load_teacher_cache()

    def _load_teacher_cache(self) -> TeacherLogitCache:
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, LabelledTextDataModule) or datamodule.train_split not in datamodule.splits:
            raise KDLightError(
                "cache_teacher_logits needs a fixed, labelled training set (a LabelledTextDataModule); "
                "turn it off for generated or streamed inputs"
            )
        dataset = datamodule.splits[datamodule.train_split]

        def loader() -> DataLoader:  # built only when the logits are computed
            pad = datamodule.tokenizer.pad_token_id or 0
            return DataLoader(dataset, batch_size=datamodule.eval_batch_size, collate_fn=Collator(pad))

        root = (
            Path(self.hparams.teacher_cache_dir) if self.hparams.teacher_cache_dir else cache_dir() / "teacher_logits"
        )
        strategy = self.trainer.strategy
        cache = None
        if strategy.is_global_zero:  # one rank computes; the others read what it wrote
            cache, folder, computed = TeacherLogitCache.load_or_compute(
                self.teacher, dataset, loader, self.device, root
            )
            rank_zero_info(f"[kdlight] teacher logits {'computed into' if computed else 'loaded from'} {folder}")
        strategy.barrier("teacher_cache")
        if cache is None:
            cache, _, _ = TeacherLogitCache.load_or_compute(
                self.teacher, dataset, None, self.device, root, compute=False
            )
        return cache.to(self.device)

    def student_logits(self, batch: dict[str, Tensor]) -> Tensor:
        return self.student(**model_inputs(batch)).logits

    def compute_loss(
        self, student_logits: Tensor, teacher_logits: Tensor, batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Return a dict with the total ``loss`` and any parts worth logging. Override me."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        teacher_logits = self.teacher_logits(batch)
        student_logits = self.student_logits(batch)
        parts = self.compute_loss(student_logits, teacher_logits, batch)
        self.log_training(parts, parts["loss"], len(student_logits))
        return parts["loss"]

    # ------------------------------------------------------------------------- evaluation
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if "test_0_teacher" not in self.eval_metrics:
            self.eval_metrics["test_0_teacher"] = self.eval_metrics["test_0"].clone(prefix="test/teacher_")

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        super().test_step(batch, batch_idx, dataloader_idx)
        if dataloader_idx == 0:  # the teacher's score on the same split makes "% of teacher" one division
            self.update_metrics("test", self.teacher_logits(batch), batch["labels"], 0, extra="_teacher")

    def on_test_epoch_end(self) -> None:
        logged = self.log_eval_metrics("test")  # includes the teacher's collection
        teacher_score = logged.get(f"test/teacher_{headline(self.task.metric)}")
        if teacher_score is not None:
            extra = {"test/teacher_score": teacher_score}
            if "test/score" in logged and teacher_score != 0:
                extra["test/pct_of_teacher"] = 100.0 * logged["test/score"] / teacher_score
            self.log_dict(extra, add_dataloader_idx=False)
