"""GeneralDistillation: task-agnostic distillation of an encoder into a small one, on unlabelled text.

MiniLMv2 (Wang et al., 2021): the student's last block learns the teacher's self-attention
relations (query-query, key-key, value-value, split into relation heads) on plain text, so it can be
any width and head count. The result is a pretrained small encoder, exported with ``save_pretrained``
(model + tokenizer), which ``PretrainedStudent(name_or_path=<export>)`` then fine-tunes or distils on a
task with a fresh classification head: the offline equivalent of starting from a pretrained BERT-Mini.

The teacher may be any encoder of the BERT family: a bare ``AutoModel`` folder (all-MiniLM-L6-v2), a
masked-LM, or a fine-tuned classifier (folder or kdlight ``.ckpt``); its heads are dropped. It is
frozen, in eval mode, and kept out of checkpoints. Validation scores the same relation loss on
held-out text (``val/loss``; ``val/score = -val/loss`` so the best checkpoint is the lowest loss).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor
from transformers import AutoModel, PreTrainedModel

from kdlight.assets import resolve_model_path
from kdlight.errors import KDLightError, first_line
from kdlight.losses.layerwise import SelfAttentionRelations
from kdlight.models.hf import load_config, load_from_checkpoint, quiet_transformers
from kdlight.models.students import FreshStudent, StudentSpec
from kdlight.modules.distiller import TeacherStudentModule
from kdlight.modules.layerwise import freeze_unreached
from kdlight.modules.task import model_inputs


def load_encoder(name_or_path: str) -> PreTrainedModel:
    """The base encoder of any saved model: bare, masked-LM or classifier (folder, hub name or kdlight .ckpt)."""
    if str(name_or_path).endswith(".ckpt"):
        return load_from_checkpoint(name_or_path).base_model
    load_config(name_or_path)  # a clear error for a missing or unreadable model
    try:
        with quiet_transformers():  # dropping a classifier's or MLM's head is expected here
            return AutoModel.from_pretrained(resolve_model_path(name_or_path))
    except (OSError, ValueError) as err:
        raise KDLightError(f"cannot load the encoder of {name_or_path!r}: {first_line(err)}") from None


class GeneralDistillation(TeacherStudentModule):
    """Args:
    teacher: the encoder to distil (folder, hub name, ``packaged/all-MiniLM-L6-v2``, or a ``.ckpt``).
    student: the student's shape (``FreshStudent``, optionally inside ``CompressedEmbeddingStudent``);
        default a BERT-Mini-sized ``FreshStudent`` (4 layers, hidden 256, 4 heads).
    teacher_layer: the teacher block whose relations are taught (default: its last; MiniLMv2 uses
        an upper-middle block of large teachers).
    num_relation_heads: relation heads; must divide both hidden sizes.
    relations: which of ``query``, ``key``, ``value`` relations to distil.
    **kwargs: see :class:`~kdlight.modules.task.KDLightTask` (learning rate, schedule, export_dir). The
        ``task`` arrives from the datamodule (unlabelled text: only its tokenizer matters).

    The teacher's freezing, eval mode and absence from checkpoints come from :class:`TeacherStudentModule`.
    """

    def __init__(
        self,
        teacher: str,
        student: StudentSpec | None = None,
        teacher_layer: int | None = None,
        num_relation_heads: int = 8,
        relations: list[Literal["query", "key", "value"]] | None = None,
        **kwargs,
    ) -> None:
        # built once here only so that a typo fails before any model loads; configure_losses builds the real one
        SelfAttentionRelations(teacher_layer=teacher_layer, num_relation_heads=num_relation_heads, relations=relations)
        super().__init__(teacher=teacher, student=student, **kwargs)

    def default_student(self) -> StudentSpec:
        """BERT-Mini's shape: 4 layers, hidden 256, 4 heads."""
        return FreshStudent(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024)

    def load_teacher(self) -> PreTrainedModel:
        return load_encoder(self.teacher_source)

    def build_student(self, teacher: PreTrainedModel) -> PreTrainedModel:
        # any spec builds a sequence classifier; general distillation keeps its encoder (the head comes with the task)
        student = self.student_spec.build(teacher, 2).base_model
        if student.config.vocab_size != teacher.config.vocab_size:
            raise KDLightError(
                f"vocabulary mismatch: teacher has {teacher.config.vocab_size} token ids, student "
                f"{student.config.vocab_size}; the student must read the teacher's tokens"
            )
        return student

    def configure_losses(self) -> None:
        hp = self.hparams
        self.relation_loss = SelfAttentionRelations(
            teacher_layer=hp.teacher_layer, num_relation_heads=hp.num_relation_heads, relations=hp.relations
        )
        self.relation_loss.bind(self.student, self.teacher)
        self.student_needs, self.teacher_needs = self.relation_loss.student_needs(), self.relation_loss.teacher_needs()
        freeze_unreached(self.student, self.relation_kl)  # the last block's FFN and the pooler: DDP-safe

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.student(**model_inputs(batch)).last_hidden_state

    def configure_metrics(self, datamodule) -> None:
        pass  # unlabelled text: validation scores the relation loss itself

    def relation_kl(self, batch: dict[str, Tensor]) -> Tensor:
        student, teacher = self.internals(batch, self.student_needs, self.teacher_needs)
        return self.relation_loss(student, teacher, batch.get("attention_mask"))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.relation_kl(batch)
        size = len(batch["input_ids"])
        self.log_training({"loss": loss}, loss, size)
        return loss

    def _eval_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int) -> Tensor:
        loss = self.relation_kl(batch)
        size = len(batch["input_ids"])
        self.log(
            f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=size, sync_dist=True, add_dataloader_idx=False
        )
        self.log(f"{stage}/score", -loss, batch_size=size, sync_dist=True, add_dataloader_idx=False)
        return loss

    def on_validation_epoch_end(self) -> None:
        pass  # the loss is logged per step and averaged by Lightning; there are no task metrics

    def on_test_epoch_end(self) -> None:
        pass

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0) -> dict[str, Tensor]:
        raise KDLightError("GeneralDistillation has no predictions; fine-tune or distil its export on a task first")


__all__ = ["GeneralDistillation", "load_encoder"]
