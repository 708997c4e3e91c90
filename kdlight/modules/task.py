"""KDLightTask: what every kdlight LightningModule shares.

``__init__`` saves hyper-parameters, then calls the ``configure_models`` / ``configure_losses``
hooks (torchgeo's shape). The base class owns evaluation (the task's own metrics on every
validation/test split, logged as ``<stage>/<metric>`` plus ``<stage>/score`` for the headline),
prediction, the default AdamW + linear warm-up schedule, kdlight's checkpoint extras, and the
``save_pretrained`` export at the end of ``fit``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import AttributeDict, rank_zero_info
from torch import Tensor, nn

from kdlight.assets import resolve_model_path
from kdlight.checkpoints import MODULE_CLASS_KEY, PREDICTOR_ATTR_KEY, load_checkpoint, plain_hparam
from kdlight.data.base import model_inputs
from kdlight.data.spec import LEGACY_TASK_KEYS, TaskSpec
from kdlight.errors import KDLightError
from kdlight.losses import label_loss
from kdlight.metrics import build_metrics, headline
from kdlight.models.compact import stock_export
from kdlight.models.hf import HF_CONFIGS_KEY, load_tokenizer, own_tokenizer, tokenizer_difference, usable_positions
from kdlight.optim import fused_on_gpu


def lightning_logs_now(trainer, automatic_optimization: bool = True) -> bool:
    """Whether Lightning sends this training step's metrics to the loggers: its ``log_every_n_steps`` rule
    (every n-th batch that steps, and when the run stops), from public counters. At ``training_step`` time
    the batch that steps next is ``global_step + 1`` under automatic optimisation and this batch's count under
    manual optimisation (every batch steps). tests/test_manual.py pins it to Lightning's own decision."""
    if trainer.log_every_n_steps == 0:
        return False
    if automatic_optimization:
        step = trainer.global_step + 1
    else:
        step = trainer.fit_loop.epoch_loop.batch_progress.total.ready
    return step % trainer.log_every_n_steps == 0 or trainer.should_stop


def was_updated(collection) -> bool:
    return any(metric.update_called for metric in collection.values())


class KDLightTask(LightningModule):
    """Base class of kdlight's LightningModules.

    Args:
        task: what the data is (:class:`~kdlight.data.spec.TaskSpec`: label count and names, metric,
            tokenizer): the datamodule's ``task``, linked in by the CLI (never typed in a config); from
            Python pass ``task=datamodule.task``. Default: two unnamed classes scored by accuracy.
        learning_rate, weight_decay, warmup_ratio: the default AdamW and linear warm-up/decay.
        optimizer, lr_scheduler: replace the defaults from YAML (``class_path: torch.optim.SGD``).
        export_dir: where ``save_pretrained`` writes the trained model at the end of fit; default
            ``<log_dir>/export``.
        export_best: export the best checkpoint's weights (by ``val/score``) rather than the last.
    """

    #: attribute name of the network that is evaluated, checkpointed for reuse and exported (the predictor);
    #: also the prefix of its weights in the checkpoint's state dict
    predictor_attr = "model"
    #: the constructor argument naming the model whose tokenizer the data uses when none is given
    #: (the CLI fills ``data.init_args.tokenizer`` from it); None: the data must name its tokenizer
    default_tokenizer_arg: str | None = None

    def __init__(
        self,
        task: TaskSpec | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        export_dir: str | None = None,
        export_best: bool = True,
        **legacy_task: Any,
    ) -> None:
        # ``legacy_task``: the num_labels/metric/label_names/tokenizer hyper-parameters of checkpoints
        # written before TaskSpec, so that they still load; anything else is a wrong argument
        unknown = sorted(set(legacy_task) - set(LEGACY_TASK_KEYS))
        if unknown:
            raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword argument {unknown[0]!r}")
        super().__init__()
        if not 0 <= warmup_ratio < 1:
            raise KDLightError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if learning_rate < 0:  # 0 is allowed: it freezes the network (used to isolate meta steps)
            raise KDLightError(f"learning_rate must be >= 0, got {learning_rate}; typical values are 1e-5 to 1e-3")
        if weight_decay < 0:
            raise KDLightError(f"weight_decay must be >= 0, got {weight_decay}")
        self.task = TaskSpec.from_hparams(task, legacy_task)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", *LEGACY_TASK_KEYS])
        self.hparams["task"] = self.task.to_dict()  # plain data; rebuilt by TaskSpec.from_hparams on load
        # plain values only (a StudentSpec as its config, paths as strings): checkpoints then load with
        # weights_only=True, and loggers write readable hparams.yaml files
        for key, value in list(self.hparams.items()):
            self.hparams[key] = plain_hparam(value)
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.eval_metrics = nn.ModuleDict()
        self.configure_models()
        self.configure_losses()

    @property
    def hparams_initial(self) -> AttributeDict:
        """What loggers record (``hparams.yaml``): the plain hyper-parameters, as the checkpoint holds them
        (Lightning's own initial copy keeps the raw objects, a student spec or a TaskSpec)."""
        return AttributeDict(copy.deepcopy(dict(self.hparams)))

    # ----------------------------------------------------------------------------- hooks
    def configure_models(self) -> None:
        """Build the networks (teacher, student, generator ...)."""

    def configure_losses(self) -> None:
        """Build the loss modules."""

    @property
    def predictor(self) -> nn.Module:
        """The network that is evaluated and exported."""
        return getattr(self, self.predictor_attr)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.predictor.parameters() if p.requires_grad]

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.predictor(**model_inputs(batch)).logits

    # ------------------------------------------------------------------------ training logs
    def logs_this_step(self) -> bool:
        """Whether this training step logs its ``train/*`` values: when Lightning sends step metrics
        to the logger (every ``log_every_n_steps`` batches, and before a stop), and on the last batch
        of an epoch or of the run, so that callbacks and ``trainer.callback_metrics`` see this fit's
        final values however short it is. On the other steps building and logging scalars costs time
        (a fixed cost that decides short steps) and reaches nobody."""
        trainer = self._trainer
        if trainer is None:
            return True
        try:
            if lightning_logs_now(trainer, self.automatic_optimization) or trainer.fast_dev_run:
                return True
            last_batch = trainer.fit_loop.epoch_loop.batch_idx + 1 >= trainer.num_training_batches
            # Lightning counts one step per batch at most (kdlight's other optimisers step outside its count)
            last_step = 0 < trainer.max_steps <= trainer.global_step + 1
            return bool(last_batch or last_step)
        except (AttributeError, NotImplementedError, TypeError):  # a Lightning without these attributes: log always
            return True

    def log_training(self, parts: dict[str, Tensor] | None, loss: Tensor, batch_size: int) -> None:
        """Log a training step: ``train/<part>`` at the logger's cadence (``parts`` may be None there,
        for callers that build them only when logged), and ``loss`` for the progress bar on every
        step when there is a progress bar."""
        if parts and self.logs_this_step():
            self.log_dict({f"train/{k}": v.detach() for k, v in parts.items()}, batch_size=batch_size)
        if self._trainer is not None and self.trainer.progress_bar_callback is not None:
            self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=batch_size)

    # ---------------------------------------------------------------------------- metrics
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.export_dir:  # fail now, not after training
            check_export_dir(Path(self.hparams.export_dir), writable=True)
        if stage == "fit" and self._trainer is not None:
            self.check_training_length()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self.configure_metrics(datamodule)
        if stage == "fit" and self._trainer is not None:
            self.check_monitor()
        self.check_data(datamodule)
        if stage == "fit" and self.hparams.learning_rate == 0 and self.optimizer_factory is None:
            rank_zero_info(
                f"[kdlight] warning: learning_rate is 0: the {self.predictor_attr}'s weights will not change, and "
                "the export will be the model as it started"
            )

    def check_training_length(self) -> None:
        """A fit that can take no step would export the untrained model (over an earlier export): refuse it."""
        trainer = self.trainer
        fix = "set it to the number to train (or -1 and bound the run with the other)"
        if trainer.max_steps == 0:
            raise KDLightError(f"trainer.max_steps=0 trains nothing and would export an untrained model; {fix}")
        if trainer.max_epochs == 0 and trainer.max_steps < 0:
            raise KDLightError(f"trainer.max_epochs=0 trains nothing and would export an untrained model; {fix}")

    def check_monitor(self) -> None:
        """A checkpoint ``monitor`` on a validation metric must be one kdlight logs. Lightning would only notice
        at the first validation (a whole epoch in), or never when the run is shorter than one."""
        logged = {"val/score", "val/loss"}
        for key, collection in self.eval_metrics.items():
            if key.startswith("val_"):
                logged |= set(collection.keys(keep_base=False))
        for callback in getattr(self.trainer, "checkpoint_callbacks", []):
            monitor = getattr(callback, "monitor", None)
            if monitor and monitor.startswith("val") and monitor not in logged:
                names = ["val/score", *sorted(logged - {"val/score"})]
                raise KDLightError(
                    f"checkpoint monitor {monitor!r} is not a metric kdlight logs; validation logs {', '.join(names)} "
                    "(training logs train/<loss part>); set checkpoint.monitor to one of them"
                )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # where a resumed fit starts: a fit that then takes no step was asked for nothing (see on_fit_end)
        self._restored_at = int(checkpoint.get("global_step", 0))

    def check_took_steps(self) -> None:
        """A resumed run whose max_epochs/max_steps it has already reached trains nothing; say so instead of
        exporting the checkpoint's weights again as if this were a new result."""
        trainer, restored = self.trainer, getattr(self, "_restored_at", None)
        if trainer.state.fn != "fit" or not restored or trainer.global_step != restored:
            return
        limits = [f"max_epochs={trainer.max_epochs}"] if trainer.max_epochs is not None else []
        limits += [f"max_steps={trainer.max_steps}"] if trainer.max_steps >= 0 else []
        raise KDLightError(
            f"{trainer.ckpt_path} has already trained {restored} steps (epoch {trainer.current_epoch}), so "
            f"{' and '.join(limits)} leaves nothing to train and nothing was exported: raise the limit to train on, "
            "or evaluate the checkpoint with `kdlight test --ckpt_path ...`"
        )

    def configure_metrics(self, datamodule) -> None:
        """The task's metrics for every validation and test split of ``datamodule``."""
        for eval_stage in ("val", "test"):
            names = datamodule.eval_split_names(eval_stage) if hasattr(datamodule, "eval_split_names") else ["default"]
            for i, split in enumerate(names or ["default"]):
                key = self._metric_key(eval_stage, i)
                if key not in self.eval_metrics:
                    prefix = f"{eval_stage}/" if i == 0 else f"{eval_stage}_{split}/"
                    self.eval_metrics[key] = build_metrics(self.task.metric, self.task.num_labels).clone(prefix=prefix)

    def check_data(self, datamodule) -> None:
        """The data must fit the models: ``max_length`` within their positions, their own tokenizer.
        Checked before the first step: a mismatch would otherwise surface mid-training, or never."""
        self.check_max_length(getattr(datamodule, "max_length", None))
        if getattr(datamodule, "tokenizer_name", None):
            self.check_tokenizer(datamodule.tokenizer, datamodule.tokenizer_name)

    def model_sources(self) -> dict[str, str]:
        """Where each loaded network came from, by role (``teacher``, ``student`` ...): their own
        tokenizers must be the data's. Subclasses list theirs."""
        return {}

    def position_limited_models(self) -> dict[str, nn.Module]:
        """Every network the data's token sequences go into, by role."""
        return {"model": self.predictor}

    def check_max_length(self, max_length: int | None) -> None:
        if not max_length:
            return
        sources = self.model_sources()
        for role, model in self.position_limited_models().items():
            limit = usable_positions(model.config)
            if limit is not None and max_length > limit:
                where = f" ({sources[role]!r})" if role in sources else ""
                raise KDLightError(
                    f"max_length={max_length} is above the {limit} position embeddings of the {role}{where}; "
                    f"set data.init_args.max_length to {limit} or less"
                )

    def check_tokenizer(self, tokenizer, tokenizer_name: str | None = None) -> None:
        """The data must be tokenised as the models were trained: same vocabulary, same special ids."""
        vocab = self.predictor.config.vocab_size
        words = len(set(tokenizer.get_vocab()) - set(tokenizer.all_special_tokens))
        # a folder without its vocabulary file (tokenizer.json, vocab.txt ...) still loads: as a tokenizer
        # of special tokens only, which turns every word into [UNK], and training "works"
        if words == 0 or len(tokenizer) < vocab // 2:
            raise KDLightError(
                f"tokenizer {tokenizer_name or ''!r} has {len(tokenizer)} tokens ({words} besides special tokens) "
                f"for the model's {vocab} embeddings: its vocabulary file (tokenizer.json or vocab.txt) is missing "
                "or it is another model's; set data.init_args.tokenizer to the model's own tokenizer"
            )
        if len(tokenizer) > vocab:
            raise KDLightError(
                f"tokenizer/model mismatch: the tokenizer has {len(tokenizer)} "
                f"tokens but the model only {vocab} embeddings; "
                "set data.init_args.tokenizer to the model's own tokenizer"
            )
        used = tokenizer_name or ""
        if used.startswith("packaged/") or os.path.exists(os.path.expanduser(used)):
            used = os.path.realpath(resolve_model_path(used))
        for role, source in self.model_sources().items():
            own = own_tokenizer(source)
            if own is None or os.path.realpath(own) == used:  # the very same files
                continue
            difference = tokenizer_difference(tokenizer, load_tokenizer(own))
            if difference:
                raise KDLightError(
                    f"tokenizer mismatch: the data's tokenizer {tokenizer_name!r} "
                    f"is not the one the {role} {source!r} was "
                    f"saved with ({difference}); set data.init_args.tokenizer "
                    f"to {own!r} (left empty it is the {role}'s)"
                )

    @staticmethod
    def _metric_key(stage: str, dataloader_idx: int) -> str:
        return f"{stage}_{dataloader_idx}"

    def update_metrics(
        self, stage: str, logits: Tensor, labels: Tensor, dataloader_idx: int = 0, extra: str = ""
    ) -> None:
        preds = logits.squeeze(-1).float() if self.task.num_labels == 1 else logits.argmax(-1)
        self.eval_metrics[self._metric_key(stage, dataloader_idx) + extra].update(preds, labels)

    def log_eval_metrics(self, stage: str) -> dict[str, Tensor]:
        """Compute (synced across ranks by torchmetrics), log and reset every split's metrics."""
        logged = {}
        score_name = headline(self.task.metric)
        for key, collection in self.eval_metrics.items():
            if not key.startswith(stage + "_") or not was_updated(collection):
                continue
            values = collection.compute()
            collection.reset()
            logged.update(values)
            if key == self._metric_key(stage, 0):
                logged[f"{stage}/score"] = values[f"{stage}/{score_name}"]
        self.log_dict(logged, prog_bar=False, sync_dist=False, add_dataloader_idx=False)
        return logged

    # ------------------------------------------------------------------------ evaluation loop
    def _eval_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int) -> Tensor:
        logits = self(batch)
        self.update_metrics(stage, logits, batch["labels"], dataloader_idx)
        loss = label_loss(logits, batch["labels"])
        if dataloader_idx == 0:
            self.log(
                f"{stage}/loss",
                loss,
                prog_bar=stage == "val",
                batch_size=len(logits),
                sync_dist=True,
                add_dataloader_idx=False,
            )
        return logits

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step("test", batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self.log_eval_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_eval_metrics("test")

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0) -> dict[str, Tensor]:
        logits = self(batch)
        preds = logits.squeeze(-1) if self.task.num_labels == 1 else logits.argmax(-1)
        return {"idx": batch["idx"], "logits": logits, "prediction": preds}

    # ------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        params = self.trainable_parameters()
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(params)
        else:
            decay = [p for p in params if p.ndim >= 2]  # no decay on biases and LayerNorm weights
            no_decay = [p for p in params if p.ndim < 2]
            optimizer = torch.optim.AdamW(
                [
                    {"params": decay, "weight_decay": self.hparams.weight_decay},
                    {"params": no_decay, "weight_decay": 0.0},
                ],
                lr=self.hparams.learning_rate,
                **fused_on_gpu(self.device),
            )
        if self.scheduler_factory is not None:
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"},
            }
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.linear_warmup(optimizer), "interval": "step"},
        }

    def scheduled_steps(self) -> int:
        """How many times the learning-rate schedule will be stepped in this fit."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        return int(total) if math.isfinite(total) and total > 0 else 1

    def linear_warmup(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        total = self.scheduled_steps()
        warmup = int(total * self.hparams.warmup_ratio)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # ------------------------------------------------------------------- checkpoint and export
    def exported_models(self) -> dict[str, nn.Module]:
        """Networks whose HF config goes into the checkpoint, so it can be rebuilt offline."""
        return {self.predictor_attr: self.predictor}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[HF_CONFIGS_KEY] = {name: model.config.to_dict() for name, model in self.exported_models().items()}
        checkpoint[PREDICTOR_ATTR_KEY] = self.predictor_attr
        checkpoint[MODULE_CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"  # which recipe wrote it

    def export_path(self) -> Path:
        if self.hparams.export_dir:
            return Path(self.hparams.export_dir)
        root = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(root) / "export"

    def on_fit_end(self) -> None:
        if self.trainer.fast_dev_run:
            return
        self.check_took_steps()
        if self.trainer.global_step == 0:  # e.g. limit_train_batches: 0
            rank_zero_info(
                f"[kdlight] warning: no training step was taken, so the untrained model is not exported "
                f"({self.export_path()} is left as it was)"
            )
            return
        if self.hparams.export_best:
            self._load_best_weights()
        path = self.export_path()  # trainer.log_dir is a collective under DDP: every rank asks
        if self.trainer.is_global_zero:
            self.export(path)

    def _load_best_weights(self) -> None:
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not best or not Path(best).is_file():
            return
        state = load_checkpoint(best)["state_dict"]
        prefix = self.predictor_attr + "."
        self.predictor.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        rank_zero_info(f"[kdlight] loaded the best weights ({Path(best).name}) for export")

    def export(self, path: str | Path) -> Path:
        """``save_pretrained`` the predictor and its tokenizer: usable without kdlight.

        Written into a staging folder beside ``path`` and renamed into place, so ``path`` is either
        the previous export or the complete new one, never a mix of the two runs' files.
        """
        path = Path(path)
        check_export_dir(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent))
        except OSError as err:
            raise export_error(path, err) from None
        replaced = False
        try:
            # compressed embeddings become stock layers, so the export loads without kdlight
            model, tokenizer = stock_export(self.predictor, self.task.tokenizer)
            model.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            if self.task.label_names:
                (staging / "label_names.json").write_text(json.dumps(list(self.task.label_names)))
            self._plain_export_files(staging)
            previous = path.with_name(f".{path.name}.previous-{os.getpid()}")
            if path.exists():
                os.replace(path, previous)
                replaced = True
            try:
                os.replace(staging, path)
            except OSError:
                if replaced:  # put the previous export back
                    os.replace(previous, path)
                raise
            if replaced:
                shutil.rmtree(previous, ignore_errors=True)
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            raise export_error(path, err) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        note = " (replacing the previous export there)" if replaced else ""
        rank_zero_info(f"[kdlight] exported {type(self.predictor).__name__} to {path}{note}")
        return path

    def _plain_export_files(self, folder: Path) -> None:
        """What ``save_pretrained`` leaves that does not describe this export: private file modes (mkdtemp's
        0700 folder; an export is as readable as any file the user makes), an ``auto_map`` inherited from the teacher
        that points at remote code the export does not hold, and the tokenizer's ``model_max_length``
        (the teacher's, not the length the model was trained with)."""
        umask = os.umask(0)
        os.umask(umask)
        folder.chmod(0o777 & ~umask)
        for path in folder.rglob("*"):  # some writers (safetensors) create their files 0600 as well
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        _edit_json(folder / "config.json", drop="auto_map")
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        max_length = getattr(datamodule, "max_length", None)
        _edit_json(folder / "tokenizer_config.json", drop="auto_map", model_max_length=max_length)


def _edit_json(path: Path, drop: str, **values: Any) -> None:
    if not path.is_file():
        return
    content = json.loads(path.read_text())
    content.pop(drop, None)
    content.update({key: value for key, value in values.items() if value})
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def export_error(path: Path, err: OSError) -> KDLightError:
    kept = "the previous export there is unchanged" if (path / "config.json").is_file() else "nothing was exported"
    return KDLightError(
        f"could not write the export {str(path)!r}: {err.strerror or err} ({kept}; the checkpoints are in the run "
        "folder); free space or set model.export_dir to a writable place"
    )


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_export_dir(path: Path, writable: bool = False) -> None:
    """An export replaces its folder as a whole, so the folder must be an earlier export (or empty), a real
    folder (not a link), and (``writable``, checked before training) in a place where files can be made."""
    if path.is_symlink():
        raise KDLightError(
            f"export_dir {str(path)!r} is a symbolic link (to {os.readlink(path)!r}); an export replaces its folder "
            f"as a whole, which would replace the link: set export_dir to the folder itself, {str(path.resolve())!r}"
        )
    if path.is_file():
        raise KDLightError(f"export_dir {str(path)!r} is a file; give a folder path for the exported model")
    if path.is_dir() and any(path.iterdir()) and not (path / "config.json").is_file():
        raise KDLightError(
            f"export_dir {str(path)!r} holds files that are not a "
            "model export, and an export replaces the whole folder; "
            "give an empty or new folder"
        )
    if writable:
        where = path.parent if path.parent.exists() else _existing_ancestor(path)
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".kdlight-write-check-", dir=where))
        except OSError as err:
            raise KDLightError(
                f"export_dir {str(path)!r} cannot be written: {err.strerror or err} in {str(where)!r}; set "
                "model.export_dir to a writable folder"
            ) from None
