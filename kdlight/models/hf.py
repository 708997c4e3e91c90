"""Loading Hugging Face sequence classifiers (and zero-shot KD's masked-LM generators) from hub names, local folders
or kdlight checkpoints."""

from __future__ import annotations

import os
import pickle
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.utils import logging as transformers_logging

from kdlight.assets import resolve_model_path
from kdlight.checkpoints import HF_CONFIGS_KEY, checkpoint_tokenizer, load_checkpoint, predictor_attr
from kdlight.errors import KDLightError, first_line
from kdlight.models.embeddings import fold_compressed_state


def load_tokenizer(name_or_path: str):
    """The tokenizer of a hub name, a local model folder or a ``packaged/`` model."""
    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise KDLightError(
            f"cannot load a tokenizer from {name_or_path!r}: give a local model folder (with tokenizer "
            f"files) or a hub name reachable from this machine ({type(err).__name__}: {first_line(err)})"
        ) from None


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


#: weight files that are part of a model folder, never a model by themselves
WEIGHT_FILE_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth")


def load_config(name_or_path: str) -> PretrainedConfig:
    if name_or_path.endswith(WEIGHT_FILE_SUFFIXES) and os.path.isfile(name_or_path):
        raise KDLightError(
            f"{name_or_path!r} is a weights file without its config: give the folder that holds it with config.json "
            f"({os.path.dirname(name_or_path) or '.'!r}), or a kdlight .ckpt"
        )
    path = resolve_model_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False)  # a model folder's code never runs
    except (OSError, ValueError) as err:
        where = (
            "local folder has no config.json"
            if Path(path).is_dir()
            else "not a local folder, and the hub name could not be loaded"
        )
        raise KDLightError(f"cannot load model {name_or_path!r}: {where} ({first_line(err)})") from None


def load_classifier(
    name_or_path: str,
    num_labels: int,
    label_names: list[str] | None = None,
    *,
    require_head: bool = False,
    role: str = "model",
) -> PreTrainedModel:
    """A sequence classifier from a hub name, a local folder, or a kdlight ``.ckpt``.

    A bare encoder (no classification head, like all-MiniLM-L6-v2) gets a fresh head of
    ``num_labels`` outputs, unless ``require_head`` (for teachers, which must be fine-tuned).
    A model whose trained head has a different label count is an error, never silently re-headed.
    A trained head with real label names is matched to ``label_names`` by name (see
    :func:`label_permutation`); ``role`` (teacher, student ...) names the model in messages.
    """
    name_or_path = os.fspath(name_or_path)
    if name_or_path.endswith(".ckpt"):
        model = load_from_checkpoint(name_or_path)
        _check_head(model.config, num_labels, name_or_path)
        order = label_permutation(model.config, label_names, name_or_path, role)
        model.config.update(label_config(num_labels, label_names))
        return permute_head(model, order, name_or_path, role)
    config = load_config(name_or_path)
    order = None
    if has_classification_head(config):
        _check_head(config, num_labels, name_or_path)
        order = label_permutation(config, label_names, name_or_path, role)
    elif require_head:
        raise KDLightError(
            f"{role} {name_or_path!r} has no fine-tuned classification "
            f"head ({', '.join(config.architectures or ['unknown'])}); "
            "fine-tune it first (model: TeacherFineTuning) and pass the exported folder or checkpoint"
        )
    config.update(label_config(num_labels, label_names))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(name_or_path), config=config, trust_remote_code=False
        )
    except pickle.UnpicklingError:  # transformers reads .bin weights with weights_only=True: nothing ran
        raise unsafe_weights_error(name_or_path) from None
    except (OSError, ValueError) as err:
        raise KDLightError(f"cannot load weights of {name_or_path!r}: {first_line(err)}") from None
    return permute_head(model, order, name_or_path, role)


def unsafe_weights_error(name_or_path: str) -> KDLightError:
    return KDLightError(
        f"the weights file of {name_or_path!r} (pytorch_model.bin) holds objects other than tensors, which could run "
        "code when unpickled; refusing to load it (it was read with weights_only=True, so nothing ran): re-save the "
        "model as model.safetensors where you trust the file"
    )


def _check_head(config: PretrainedConfig, num_labels: int, source: str) -> None:
    if config.num_labels != num_labels:
        raise KDLightError(
            f"label mismatch: model {source!r} predicts {config.num_labels} label(s) but the data has {num_labels}; "
            "use a model fine-tuned on this task or check the datamodule's task/label_names"
        )


_DEFAULT_LABEL = re.compile(r"LABEL_\d+")


def trained_label_names(config: PretrainedConfig) -> list[str] | None:
    """The head's label names in output order, or None when it has none (``LABEL_0``, ``LABEL_1`` ...)."""
    id2label = config.id2label or {}
    names = [id2label.get(i, id2label.get(str(i))) for i in range(config.num_labels)]
    if any(n is None for n in names) or all(_DEFAULT_LABEL.fullmatch(str(n)) for n in names):
        return None
    return [str(n) for n in names]


def label_permutation(
    config: PretrainedConfig, label_names: list[str] | None, source: str, role: str = "model"
) -> list[int] | None:
    """Which trained output each of the data's labels is: ``order[i]`` is the head row of ``label_names[i]``.

    None when there is nothing to reorder: no data names, a head without names (used by position),
    or the same names in the same order. Names are matched exactly, else ignoring case (hub models
    often say ``NEGATIVE``/``POSITIVE``). Names that do not match are an error: a head whose labels
    mean something else would be distilled with the wrong targets.
    """
    own = trained_label_names(config)
    if not label_names or len(label_names) < 2 or own is None:
        return None
    data = [str(n) for n in label_names]
    for key in (str, str.casefold):
        own_keys, data_keys = [key(n) for n in own], [key(n) for n in data]
        if len(set(own_keys)) == len(own_keys) and sorted(own_keys) == sorted(data_keys):
            order = [own_keys.index(k) for k in data_keys]
            return None if order == list(range(len(order))) else order
    raise KDLightError(
        f"label names differ: {role} {source!r} was trained with labels {own} but the data's are {data}; use a {role} "
        f"fine-tuned on these labels, or, if they mean the same, set the datamodule's label_names to {own}"
    )


def classification_head(model: nn.Module, num_labels: int) -> nn.Linear:
    """The final linear layer of a sequence classifier (the last ``nn.Linear`` with ``num_labels`` outputs)."""
    head = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == num_labels:
            head = module
    if head is None:
        raise KDLightError(
            f"cannot find the classification head of {type(model).__name__} (no linear layer with {num_labels} outputs)"
        )
    return head


def permute_head(model: PreTrainedModel, order: list[int] | None, source: str, role: str = "model") -> PreTrainedModel:
    """Reorder the head's output rows so that output ``i`` is the data's label ``i``."""
    if order is None:
        return model
    head = classification_head(model, len(order))
    index = torch.tensor(order)
    with torch.no_grad():
        head.weight.copy_(head.weight[index])
        if head.bias is not None:
            head.bias.copy_(head.bias[index])
    names = [model.config.id2label[i] for i in range(len(order))]
    rank_zero_info(f"[kdlight] {role} {source}: outputs reordered to the data's label order {names} (matched by name)")
    return model


TRAINED_GENERATOR_DIR = "generators/minilm-mlm"  # where configs/zeroshot/generator.yaml exports, in the kdlight cache


def load_generator(name_or_path: str) -> PreTrainedModel:
    """Any ``AutoModelForMaskedLM`` (hub name or local folder). A bare encoder such as the packaged
    all-MiniLM-L6-v2 gets an MLM head whose decoder is tied to its word embeddings; the head's
    transform (untrained) starts as the identity, so the first proposals score each position's
    hidden state against the vocabulary rather than a random projection. Such a head is untrained (its
    proposals are close to random tokens); ``configs/zeroshot/generator.yaml`` trains one
    (:class:`kdlight.modules.MaskedLMPretraining`)."""
    try:
        path = resolve_model_path(name_or_path)
    except KDLightError as err:
        if TRAINED_GENERATOR_DIR in str(name_or_path):  # the recipes' trained generator, not built on this machine
            raise KDLightError(
                f"the trained generator {name_or_path!r} is not here yet: build it with "
                "`kdlight fit --config configs/zeroshot/generator.yaml` (~20 min on a CPU), or pass another "
                "masked LM of the teacher's vocabulary"
            ) from None
        raise err from None
    try:
        with quiet_transformers():  # a bare encoder's missing head is expected; we report it in one line
            model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True, trust_remote_code=False)
    except pickle.UnpicklingError:
        raise unsafe_weights_error(name_or_path) from None
    except (OSError, ValueError) as err:
        raise KDLightError(
            f"cannot load a masked-LM generator from {name_or_path!r}: give a local model folder or a hub name "
            f"reachable from this machine ({type(err).__name__}: {first_line(err)})"
        ) from None
    missing = set(info.get("missing_keys", []))
    transform = _head_transform(model)
    if transform is not None and any("transform.dense" in key for key in missing):
        with torch.no_grad():  # a fresh head: start from the identity instead of a random projection
            transform.weight.copy_(torch.eye(*transform.weight.shape))
            if transform.bias is not None:
                transform.bias.zero_()
        rank_zero_info(
            f"[kdlight] generator {name_or_path}: no MLM head saved, so its head is UNTRAINED (identity transform, "
            "decoder tied to the word embeddings) and its rewrites are close to random tokens; train one with "
            "`kdlight fit --config configs/zeroshot/generator.yaml` and pass its export as the generator"
        )
    return model


@contextmanager
def quiet_transformers():
    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)


def _head_transform(model: nn.Module) -> nn.Linear | None:
    for name, module in model.named_modules():
        if name.endswith("predictions.transform.dense") and isinstance(module, nn.Linear):
            return module
    return None


def load_from_checkpoint(path: str, prefix: str | None = None) -> PreTrainedModel:
    """Rebuild a HF model saved inside a kdlight Lightning checkpoint (no hub access needed).

    ``prefix`` selects the model in the state dict (``model`` for TeacherFineTuning, ``student``
    for distillers); by default the one the checkpoint records (:func:`~kdlight.checkpoints.predictor_attr`).
    """
    checkpoint = load_checkpoint(path)
    if HF_CONFIGS_KEY not in checkpoint:
        raise KDLightError(
            f"{path!r} is not a kdlight checkpoint (no {HF_CONFIGS_KEY}); "
            "pass a .ckpt written by kdlight or a save_pretrained folder"
        )
    prefix = prefix or predictor_attr(checkpoint)
    config_dict = dict(checkpoint[HF_CONFIGS_KEY][prefix])
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    model = AutoModelForSequenceClassification.from_config(config)
    state = {k[len(prefix) + 1 :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix + ".")}
    state = fold_compressed_state(state)  # a compressed student's embeddings as stock ones (same predictions)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied or buffer-only keys may legitimately be absent; real weights may not.
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise KDLightError(
            f"checkpoint {path!r} does not match its own config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()


# files that mean a model folder carries its own tokenizer
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
SPECIAL_TOKENS = ("pad", "cls", "sep", "unk", "mask", "bos", "eos")


def own_tokenizer(source: str) -> str | None:
    """Where the tokenizer a model source was saved with lives: a ``save_pretrained`` folder with
    tokenizer files, or the tokenizer a kdlight ``.ckpt`` recorded (when that is a local folder).
    None for hub names: fetching them again only to compare could wait on the network."""
    source = os.fspath(source)
    if source.endswith(".ckpt"):
        recorded = checkpoint_tokenizer(source)
        if not recorded:
            return None
        source = recorded
    if source.startswith("packaged/") or os.path.exists(os.path.expanduser(source)):
        path = Path(resolve_model_path(source))
        if path.is_dir() and any((path / name).is_file() for name in TOKENIZER_FILES):
            return str(path)
    return None


def tokenizer_difference(tokenizer, reference) -> str | None:
    """How two tokenizers would give different token ids (vocabulary or special tokens), or None."""
    ours, theirs = tokenizer.get_vocab(), reference.get_vocab()
    if ours != theirs:
        if len(ours) != len(theirs):
            return f"{len(ours)} vs {len(theirs)} tokens"
        differ = sum(1 for token, i in ours.items() if theirs.get(token) != i)
        return f"{differ} of {len(ours)} token ids differ"
    specials = [
        f"{name} {getattr(tokenizer, f'{name}_token_id', None)} vs {getattr(reference, f'{name}_token_id', None)}"
        for name in SPECIAL_TOKENS
        if getattr(tokenizer, f"{name}_token_id", None) != getattr(reference, f"{name}_token_id", None)
    ]
    return f"special token ids differ ({', '.join(specials)})" if specials else None


def usable_positions(config: PretrainedConfig) -> int | None:
    """How many tokens the model's position embeddings take: RoBERTa-style models reserve the first
    ``pad_token_id + 1`` positions (514 embeddings hold 512 tokens); BERT-style use all of them."""
    positions = getattr(config, "max_position_embeddings", None)
    relative = getattr(config, "position_embedding_type", "absolute") not in ("absolute", None)
    if not positions or relative or getattr(config, "position_biased_input", True) is False:
        return None  # relative positions (DeBERTa ...) have no hard limit here
    if config.model_type in (
        "roberta",
        "xlm-roberta",
        "camembert",
        "longformer",
        "data2vec-text",
        "xmod",
        "roberta-prelayernorm",
        "xlm-roberta-xl",
    ):
        return positions - (config.pad_token_id or 0) - 1
    return positions


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
