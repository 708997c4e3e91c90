"""Loading Hugging Face sequence classifiers from hub names, local folders or kdlight checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from kdlight.assets import resolve_model_path
from kdlight.errors import KDLightError

#: key under which kdlight checkpoints keep each model's HF config, so they load without the hub
HF_CONFIGS_KEY = "kdlight_hf_configs"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def label_config(num_labels: int, label_names: list[str] | None) -> dict:
    """The config fields that describe a head: count, names, and regression vs classification."""
    fields: dict = {"num_labels": num_labels}
    if label_names:
        fields["id2label"] = dict(enumerate(label_names))
        fields["label2id"] = {name: i for i, name in enumerate(label_names)}
    fields["problem_type"] = "regression" if num_labels == 1 else "single_label_classification"
    return fields


def has_classification_head(config: PretrainedConfig) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def load_config(name_or_path: str) -> PretrainedConfig:
    path = resolve_model_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        where = "local folder has no config.json" if Path(path).is_dir() else "not a local folder, and the hub name could not be loaded"
        raise KDLightError(f"cannot load model {name_or_path!r}: {where} ({_first_line(err)})") from None


def load_classifier(name_or_path: str, num_labels: int, label_names: list[str] | None = None, *, require_head: bool = False) -> PreTrainedModel:
    """A sequence classifier from a hub name, a local folder, or a kdlight ``.ckpt``.

    A bare encoder (no classification head, like all-MiniLM-L6-v2) gets a fresh head of
    ``num_labels`` outputs, unless ``require_head`` (for teachers, which must be fine-tuned).
    A model whose trained head has a different label count is an error, never silently re-headed.
    """
    if str(name_or_path).endswith(".ckpt"):
        model = load_from_checkpoint(name_or_path)
        _check_head(model.config, num_labels, name_or_path)
        return model
    config = load_config(name_or_path)
    if has_classification_head(config):
        _check_head(config, num_labels, name_or_path)
    elif require_head:
        raise KDLightError(
            f"teacher {name_or_path!r} has no fine-tuned classification head ({', '.join(config.architectures or ['unknown'])}); "
            "fine-tune it first (model: TeacherFineTuning) and pass the exported folder or checkpoint"
        )
    config.update(label_config(num_labels, label_names))
    try:
        return AutoModelForSequenceClassification.from_pretrained(resolve_model_path(name_or_path), config=config)
    except (OSError, ValueError) as err:
        raise KDLightError(f"cannot load weights of {name_or_path!r}: {_first_line(err)}") from None


def _check_head(config: PretrainedConfig, num_labels: int, source: str) -> None:
    if config.num_labels != num_labels:
        raise KDLightError(
            f"label mismatch: model {source!r} predicts {config.num_labels} label(s) but the data has {num_labels}; "
            "use a model fine-tuned on this task or check the datamodule's task/label_names"
        )


def load_from_checkpoint(path: str, prefix: str | None = None) -> PreTrainedModel:
    """Rebuild a HF model saved inside a kdlight Lightning checkpoint (no hub access needed).

    ``prefix`` selects the model in the state dict (``model`` for TeacherFineTuning, ``student``
    for distillers); by default the checkpoint's own ``kdlight_export_prefix`` is used.
    """
    if not Path(path).is_file():
        raise KDLightError(f"checkpoint not found: {path!r}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise KDLightError(f"unreadable checkpoint {path!r}: {_first_line(err)}; pass a Lightning .ckpt written by kdlight") from None
    if not isinstance(checkpoint, dict) or HF_CONFIGS_KEY not in checkpoint:
        raise KDLightError(f"{path!r} is not a kdlight checkpoint (no {HF_CONFIGS_KEY}); pass a .ckpt written by kdlight or a save_pretrained folder")
    prefix = prefix or checkpoint.get("kdlight_export_prefix", "model")
    config_dict = dict(checkpoint[HF_CONFIGS_KEY][prefix])
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    model = AutoModelForSequenceClassification.from_config(config)
    state = {k[len(prefix) + 1 :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix + ".")}
    from kdlight.models.compact import fold_compressed_state  # compact imports this module

    state = fold_compressed_state(state)  # a compressed student's embeddings as stock ones (same predictions)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied or buffer-only keys may legitimately be absent; real weights may not.
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise KDLightError(f"checkpoint {path!r} does not match its own config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
