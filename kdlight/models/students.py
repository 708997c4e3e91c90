"""How a distiller gets its student: pretrained, cut from the teacher, or freshly configured.

Each is a small class with ``build(teacher, num_labels, label_names)``, chosen in YAML by
``class_path`` (``PretrainedStudent``, ``TruncatedTeacher``, ``FreshStudent``).
"""

from __future__ import annotations

import copy
import inspect
import os
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from kdlight.checkpoints import allow_in_checkpoints, plain_hparam
from kdlight.errors import KDLightError
from kdlight.models.hf import label_config, load_classifier


class StudentSpec:
    """Base class: builds the student network given the (frozen) teacher.

    Every subclass registers itself when it is defined, so that a checkpoint's hyper-parameters
    (:meth:`to_config`'s plain form) rebuild it by name without importing anything named in a file.
    """

    #: every spec class defined so far, by its full class path (``module.QualName``)
    registry: ClassVar[dict[str, type[StudentSpec]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        StudentSpec.registry[f"{cls.__module__}.{cls.__qualname__}"] = cls
        if cls.__module__.startswith("kdlight."):
            # checkpoints written from Python by earlier kdlight versions hold these objects in their hyper-parameters
            allow_in_checkpoints(cls)

    def build(self, teacher: PreTrainedModel, num_labels: int, label_names: list[str] | None = None) -> PreTrainedModel:
        raise NotImplementedError

    def init_args(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this spec (by default: attributes named like them)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {n: getattr(self, n) for n in names if hasattr(self, n)}

    def to_config(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}``: how the spec is kept in hyper-parameters and checkpoints
        (plain data all the way down, a spec argument as its own config, so checkpoints load with
        ``weights_only=True``), as in the CLI's own configs."""
        cls = type(self)
        init_args = {name: plain_hparam(value) for name, value in self.init_args().items()}
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}

    @staticmethod
    def lookup(class_path: str) -> type[StudentSpec]:
        """The registered spec class a config names: its full path, or for kdlight's own specs also
        the short name (``TruncatedTeacher``) or ``kdlight.models.<Name>``."""
        cls = StudentSpec.registry.get(class_path)
        if cls is not None:
            return cls
        short = class_path.removeprefix("kdlight.models.")
        own = {c.__name__: c for path, c in StudentSpec.registry.items() if path.startswith("kdlight.")}
        if short in own:
            return own[short]
        # only specs defined in this process are rebuilt from data: importing a module named in a file could run code
        raise KDLightError(
            f"student {class_path!r} is not one of kdlight's student specs ({', '.join(sorted(own))}) nor a spec "
            "defined in this process; import its module first, or pass the student as an object (student=MyStudent())"
        )

    @staticmethod
    def from_config(config: StudentSpec | dict | None) -> StudentSpec | None:
        """A spec from :meth:`to_config`'s form (hyper-parameters read back from a checkpoint); specs
        among its arguments are rebuilt the same way."""
        if config is None or isinstance(config, StudentSpec):
            return config
        if not isinstance(config, dict) or not isinstance(config.get("class_path"), str):
            raise KDLightError(
                f"student {config!r} is not a student spec; give {{class_path: TruncatedTeacher, init_args: ...}}"
            )
        cls = StudentSpec.lookup(config["class_path"])
        return cls(**{name: _rebuild_specs(value) for name, value in (config.get("init_args") or {}).items()})


def _is_spec_config(value: Any) -> bool:
    return isinstance(value, dict) and "class_path" in value and set(value) <= {"class_path", "init_args"}


def _rebuild_specs(value: Any) -> Any:
    """A spec argument read back from plain data: spec configs become specs again, anything else stays."""
    if _is_spec_config(value):
        return StudentSpec.from_config(value)
    if isinstance(value, list):
        return [_rebuild_specs(v) for v in value]
    return value


class PretrainedStudent(StudentSpec):
    """A student loaded from a hub name, a local folder or a kdlight checkpoint (e.g. BERT-Mini)."""

    def __init__(self, name_or_path: str) -> None:
        self.name_or_path = os.fspath(name_or_path)

    def build(self, teacher, num_labels, label_names=None):
        return load_classifier(self.name_or_path, num_labels, label_names, role="student")


def encoder_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The transformer block list of a HF encoder: (parent module, attribute name, the list)."""
    config = model.config
    depth = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None)
    # ALBERT counts as a plain stack only with one unshared block per group (what layout: albert builds)
    albert_unshared = getattr(config, "num_hidden_groups", None) == depth and getattr(config, "inner_group_num", 1) == 1
    names = ("layer", "layers", "block", "albert_layer_groups") if albert_unshared else ("layer", "layers", "block")
    for module in model.modules():
        for attr, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == depth and attr in names:
                return module, attr, child
    raise KDLightError(
        f"cannot find the layer list of {type(model).__name__} to "
        "truncate it; use FreshStudent or PretrainedStudent instead"
    )


class TruncatedTeacher(StudentSpec):
    """The teacher cut to ``num_layers`` transformer blocks, weights copied (as in DistilBERT/PKD).

    Args:
        num_layers: blocks to keep.
        layers: which teacher blocks to keep (0-based); default evenly spaced from first to last.
    """

    def __init__(self, num_layers: int = 2, layers: list[int] | None = None) -> None:
        if num_layers < 1:
            raise KDLightError(f"num_layers must be >= 1, got {num_layers}")
        if layers is not None and len(layers) != num_layers:
            raise KDLightError(f"layers={layers} must list exactly num_layers={num_layers} block indices")
        self.num_layers = num_layers
        self.layers = layers

    def keep(self, depth: int) -> list[int]:
        if self.num_layers > depth:
            raise KDLightError(
                f"cannot keep {self.num_layers} layers of a {depth}-layer teacher; choose num_layers <= {depth}"
            )
        if self.layers is not None:
            if not all(0 <= i < depth for i in self.layers):
                raise KDLightError(f"layers={self.layers} must be in 0..{depth - 1}")
            return list(self.layers)
        if self.num_layers == 1:
            return [depth - 1]
        return torch.linspace(0, depth - 1, self.num_layers).round().long().tolist()

    def build(self, teacher, num_labels, label_names=None):
        student = copy.deepcopy(teacher)
        parent, attr, blocks = encoder_layers(student)
        keep = self.keep(len(blocks))
        setattr(parent, attr, nn.ModuleList([blocks[i] for i in keep]))
        student.config.num_hidden_layers = len(keep)
        if hasattr(student.config, "num_hidden_groups"):  # ALBERT: one block per group
            student.config.num_hidden_groups = len(keep)
        student.config.update(label_config(num_labels, label_names))
        for p in student.parameters():
            p.requires_grad_(True)
        return student.train()


class FreshStudent(StudentSpec):
    """A randomly initialised model of the teacher's family with the given sizes.

    Any size left empty is the teacher's. The vocabulary is always the teacher's (KD on logits
    needs the same inputs); ``copy_embeddings`` starts the word embeddings from the teacher's
    when the widths agree.
    """

    def __init__(
        self,
        *,  # by name only: four integer sizes in a row are too easy to give in the wrong order
        copy_embeddings: bool = False,
        num_hidden_layers: int = 2,
        hidden_size: int | None = None,
        num_attention_heads: int | None = None,
        intermediate_size: int | None = None,
    ) -> None:
        self.sizes = {
            "num_hidden_layers": num_hidden_layers,
            "hidden_size": hidden_size,
            "num_attention_heads": num_attention_heads,
            "intermediate_size": intermediate_size,
        }
        bad = {k: v for k, v in self.sizes.items() if v is not None and v < 1}
        if bad:
            sizes = ", ".join(f"{k} must be >= 1, got {v}" for k, v in bad.items())
            raise KDLightError(f"{sizes}; leave a size empty to use the teacher's")
        self.copy_embeddings = copy_embeddings

    def init_args(self) -> dict[str, Any]:
        return {**self.sizes, "copy_embeddings": self.copy_embeddings}

    def build(self, teacher, num_labels, label_names=None):
        config = copy.deepcopy(teacher.config)
        config.update({k: v for k, v in self.sizes.items() if v is not None})
        config.update(label_config(num_labels, label_names))
        if config.hidden_size % config.num_attention_heads:
            raise KDLightError(
                f"hidden_size={config.hidden_size} must be divisible by "
                f"num_attention_heads={config.num_attention_heads}"
            )
        student = AutoModelForSequenceClassification.from_config(config)
        if self.copy_embeddings:
            source, target = teacher.get_input_embeddings(), student.get_input_embeddings()
            if source.weight.shape != target.weight.shape:
                raise KDLightError(
                    "copy_embeddings needs the teacher's hidden_size; leave hidden_size empty or turn it off"
                )
            target.weight.data.copy_(source.weight.data)
        return student


def check_compatible(teacher: PreTrainedModel, student: PreTrainedModel) -> None:
    """Teacher and student must read the same token ids and predict the same labels."""
    t_vocab, s_vocab = teacher.config.vocab_size, student.config.vocab_size
    if t_vocab != s_vocab:
        raise KDLightError(
            f"vocabulary mismatch: teacher has {t_vocab} token ids, "
            f"student {s_vocab}; KD on logits needs one tokenizer. "
            "Use a student from the teacher's family (TruncatedTeacher/FreshStudent) or one with the same vocabulary"
        )
    if teacher.config.num_labels != student.config.num_labels:
        raise KDLightError(
            f"label mismatch: teacher predicts {teacher.config.num_labels} labels, student {student.config.num_labels}"
        )
