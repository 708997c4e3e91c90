"""The ``kdlight`` command: LightningCLI in subclass mode for models and datamodules.

``kdlight fit|validate|test|predict --config recipe.yaml``. Configs name classes by short name
(``class_path: VanillaKD``). What the data determines (label count, label names, metric,
tokenizer) is one :class:`~kdlight.data.spec.TaskSpec`, ``data.task``, linked into the model's
``task`` argument, so it is never typed twice. The datamodule's tokenizer in turn defaults to the
model's own (its teacher's, or the fine-tuned model's: the argument the module class names in
``default_tokenizer_arg``), filled into the config before anything is built, so a recipe usually
names a model once.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Any

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

import kdlight.data
import kdlight.models
import kdlight.modules  # noqa: F401  (registers LightningModules)
from kdlight.callbacks import ExactResume, LatestCheckpoint, PredictionWriter
from kdlight.checkpoints import checkpoint_tokenizer, load_lightning_checkpoint, use_atomic_checkpoints
from kdlight.class_paths import check_class_paths
from kdlight.errors import KDLightError, RunInterrupted, file_system_error, first_line, user_error_in
from kdlight.modules.distiller import BaseDistiller
from kdlight.parse_errors import KDLightArgumentParser
from kdlight.resume import resolve_ckpt_path, untrained_hint
from kdlight.versions import as_unclaimed, claim_version_folders


class KDLightCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(LatestCheckpoint, "checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/score",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.link_arguments("data.task", "model.init_args.task", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any):
        trainer = super().instantiate_trainer(**kwargs)
        if os.path.isfile(str(trainer.default_root_dir)):
            raise KDLightError(
                f"trainer.default_root_dir {str(trainer.default_root_dir)!r} is a file; give a folder for the "
                "run's logs, checkpoints and export"
            )
        use_atomic_checkpoints(trainer)  # a failed write keeps the previous last.ckpt whole
        self._claimed_versions = claim_version_folders(trainer)  # runs started together get their own folders
        trainer.callbacks.append(ExactResume())  # exact resume: dropout continues where it stopped
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Only a safety check of ``--ckpt_path``: it deliberately does not call Lightning's version.

        Lightning's ``_parse_ckpt_path`` lays the checkpoint's hyper-parameters over the config, so a
        checkpoint would pick the module class, the teacher and the export folder (a file from elsewhere
        could make an export replace a folder outside the run). In kdlight the config always wins; once
        the model is built, :func:`kdlight.resume.resolve_ckpt_path` compares the checkpoint with it and
        stops on a disagreement that cannot work. A missing or unsafe file is one clear line before
        anything is built (the check maps tensors instead of reading them)."""
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else {}
        if config.get("weights_only") is False:
            raise KDLightError(
                "weights_only=false is not supported: kdlight never unpickles code from a checkpoint, and the "
                "checkpoints it writes load with weights_only=true; drop the option"
            )
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and str(ckpt_path) not in _LIGHTNING_CKPT_NAMES and not str(ckpt_path).startswith("registry"):
            check_same_model_class(load_lightning_checkpoint(ckpt_path, mmap=True), config, ckpt_path)

    def resolve_checkpoint(self, subcommand: str, ckpt_path: str) -> str | None:
        """The file ``--ckpt_path`` names (``last``/``best`` looked up in this recipe's newest run); a fit
        from ``last``/``best`` logs and checkpoints into that run's own folder, not the one claimed for a new run.
        Public so that a script holding a ``run=False`` CLI resumes exactly as the command line does."""
        with as_unclaimed(self.trainer, getattr(self, "_claimed_versions", {})):
            return resolve_ckpt_path(self.trainer, subcommand, ckpt_path, self.model)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("ckpt_path") is not None:
            kwargs["ckpt_path"] = self.resolve_checkpoint(subcommand, str(kwargs["ckpt_path"]))
            if kwargs["ckpt_path"] and kwargs["ckpt_path"] not in _LIGHTNING_CKPT_NAMES + ("registry",):
                load_lightning_checkpoint(kwargs["ckpt_path"], mmap=True)  # a truncated last.ckpt: one line
        else:
            untrained_hint(self.model, subcommand)
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            kwargs["weights_only"] = True  # Lightning's own restore: never the unsafe unpickler
        return kwargs

    def before_instantiate_classes(self) -> None:
        """An empty ``data.init_args.tokenizer`` becomes the model's own tokenizer, in the config: the
        datamodule is then built with it like with any argument given to it, and no datamodule or
        wrapped datamodule is changed after it is built."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        data_args = config.get("data", {}).get("init_args")
        model_args = config.get("model", {}).get("init_args")
        if data_args is None or model_args is None or data_args.get("tokenizer"):
            return
        arg = getattr(_import_class(config["model"].get("class_path")), "default_tokenizer_arg", None)
        source = model_args.get(arg) if arg else None
        if isinstance(source, str) and source:
            data_args["tokenizer"] = tokenizer_of(source)


# --ckpt_path values resolved by name, not read as files (kdlight.resume finds last/best)
_LIGHTNING_CKPT_NAMES = ("last", "best", "hpc")


def _import_class(class_path: str | None) -> type | None:
    """The class a parsed config's ``class_path`` names (already imported by the parser), or None."""
    module, _, name = (class_path or "").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None) if module else None
    except ImportError:
        return None


def tokenizer_of(model_source: str) -> str:
    """Where the tokenizer of a model source lives (a kdlight .ckpt remembers its tokenizer)."""
    if model_source.endswith(".ckpt"):
        tokenizer = checkpoint_tokenizer(model_source)  # safe load; a missing file is a clear error
        if not tokenizer:
            raise KDLightError(f"{model_source!r} does not record its tokenizer; set data.init_args.tokenizer")
        return tokenizer
    return model_source


def check_same_model_class(checkpoint: dict, config, ckpt_path) -> None:
    """Lightning rebuilds the model from a checkpoint's hyper-parameters, its class included: a checkpoint of
    another method would silently replace the model the command names. Refuse that in one line."""
    written_by = str((checkpoint.get("hyper_parameters") or {}).get("_class_path") or "").rpartition(".")[2]
    wanted = str((config.get("model") or {}).get("class_path") or "").rpartition(".")[2]
    if written_by and wanted and written_by != wanted:
        raise KDLightError(
            f"{ckpt_path} was written by {written_by}, but the config builds {wanted}: resume with the model class "
            f"that wrote it, or start a new {wanted} run without --ckpt_path (a trained student is reused through "
            "its export, as teacher or student)"
        )


def lightning_error(err: BaseException) -> KDLightError | None:
    """Lightning's own configuration errors (a bad trainer argument, a monitor it cannot find) as one line."""
    if isinstance(err, MisconfigurationException):
        return KDLightError(first_line(err))
    return None


def cli(args: list[str] | None = None, **kwargs: Any) -> KDLightCLI:
    return KDLightCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_class=KDLightArgumentParser,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
        **kwargs,
    )


def main(args: list[str] | None = None) -> None:
    """Console entry point: bad input exits with one clear line instead of a traceback.

    Set ``KDLIGHT_TRACEBACK=1`` to see the full traceback instead.
    """
    KDLightError.last = None
    # Like `python -m`, the working directory is importable, so `--model my_kd.MyKD` finds my_kd.py there.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        check_class_paths(sys.argv[1:] if args is None else [str(a) for a in args])
        cli(args)
    except SIGTERMException:
        raise SystemExit(128 + signal.SIGTERM) from None  # the shell's code for "terminated", not success
    except RunInterrupted as stop:  # Ctrl-C during fit: last.ckpt saved, the message says how to go on
        print(f"kdlight: error: {stop}", file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None
    except KeyboardInterrupt:
        if os.environ.get("KDLIGHT_TRACEBACK"):
            raise
        print("kdlight: error: interrupted (Ctrl-C) before training started; nothing was saved", file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None
    except Exception as err:
        # kdlight's own errors, Lightning's configuration errors and file-system failures are the user's
        # to fix: each becomes one line; anything else is a bug and keeps its traceback
        user_error = user_error_in(err) or lightning_error(err) or file_system_error(err)
        if user_error is None or os.environ.get("KDLIGHT_TRACEBACK"):
            raise
        print(f"kdlight: error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["BaseDistiller", "KDLightCLI", "cli", "main"]
if __name__ == "__main__":
    main()
