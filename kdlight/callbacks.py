"""Callbacks the CLI adds to every run."""

from __future__ import annotations

import csv
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from kdlight.errors import RunInterrupted


class LatestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps the best checkpoints by ``val/score`` and a ``last.ckpt`` that
    always holds the latest state.

    Lightning writes ``last.ckpt`` only when a top-k checkpoint is written, so after a plateau
    ``--ckpt_path last`` would resume from the last *improvement*. Here ``last.ckpt`` is refreshed
    after every top-k decision (never before it: a save marks the step as saved, and Lightning then
    skips the top-k save of that step), at the end of training, and when the run receives SIGTERM
    (a scheduler's pre-emption) or Ctrl-C (SIGINT), after which the run stops; ``--ckpt_path last``
    continues from there. Ctrl-C ends with one line saying so (exit 130); a second Ctrl-C stops at once.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last_written_at: int | None = None  # global step of the newest last.ckpt
        self._stopping = False  # SIGTERM received and last.ckpt saved: stop at the next hook
        self._interrupted = False  # Ctrl-C seen during training: stop after the current batch
        self._previous_sigint: Any = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Paths are recorded absolute: in a copied or moved run folder they name the old place, whose
        files are another run's (or gone), and Lightning would still export the old ``best_model_path``.
        Each recorded file is read as the same name in this run's own folder (dropped if absent there)."""
        recorded_dir = state_dict.get("dirpath")
        if recorded_dir and self.dirpath and os.path.realpath(recorded_dir) != os.path.realpath(self.dirpath):
            state_dict = dict(state_dict)

            def here(recorded: Any) -> str:
                name = Path(str(recorded)).name if recorded else ""
                own = Path(self.dirpath) / name
                return str(own) if name.endswith(".ckpt") and own.is_file() else ""

            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state_dict:
                    state_dict[key] = here(state_dict[key])
            kept = {here(path): score for path, score in (state_dict.get("best_k_models") or {}).items()}
            state_dict["best_k_models"] = {path: score for path, score in kept.items() if path}
            state_dict["dirpath"] = self.dirpath
            if not state_dict.get("best_model_path"):
                state_dict["best_model_score"] = None
            rank_zero_info(
                f"[kdlight] the checkpoint's run folder was {recorded_dir}; its checkpoints are looked up in "
                f"{self.dirpath} (best: {state_dict.get('best_model_path') or 'none there yet'})"
            )
        super().load_state_dict(state_dict)

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_written_at = trainer.global_step

    def _refresh_last(self, trainer) -> None:
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self._last_written_at != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    # Ctrl-C: like SIGTERM, the batch in progress ends, last.ckpt is written and the run stops with one
    # line saying how to continue. A second Ctrl-C stops at once (Python's KeyboardInterrupt).
    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) in (
            signal.default_int_handler,
            None,
        ):
            self._interrupted = False
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        if self._interrupted:
            raise KeyboardInterrupt
        self._interrupted = True

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._restore_sigint()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._interrupted:
            self._restore_sigint()
            self._refresh_last(trainer)
            where = self.last_model_path or "no checkpoint (save_last is off)"
            raise RunInterrupted(
                f"interrupted (Ctrl-C) at step {trainer.global_step}; saved {where}; run the same command with "
                "--ckpt_path last to continue from there"
            )
        if trainer.received_sigterm and not self._stopping:
            # Saved now, stopped at the next hook: Lightning logs this batch's step metrics only after
            # this hook, and a stop here would lose that metrics.csv row for good (the resumed run
            # starts after this batch). Under DDP Lightning itself stops at the next batch's start.
            self._refresh_last(trainer)
            self._stopping = True

    def _stop_if_terminated(self, trainer) -> None:
        if self._stopping and trainer.state.fn == "fit":
            self._stopping = False
            print(
                f"[kdlight] stopped by SIGTERM at step {trainer.global_step}; "
                f"the same command with --ckpt_path last continues from {self.last_model_path}",
                flush=True,
            )
            raise SIGTERMException  # the loggers flush their rows as Lightning handles the stop

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._stop_if_terminated(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._stop_if_terminated(trainer)  # a pre-empted run does not validate first

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):  # else the top-k decision comes at epoch end
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop_if_terminated(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        self._refresh_last(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop_if_terminated(trainer)
        super().on_train_end(trainer, pl_module)
        self._refresh_last(trainer)


class ExactResume(Callback):
    """What Lightning leaves out of an exact resume: the RNG states, and the training loader's position.

    RNG states (torch, CUDA, Python, NumPy) go into every checkpoint and are restored right before the
    first training batch of a resumed fit, so dropout masks continue as in an uninterrupted run.
    Lightning saves a stateful loader's position (see :mod:`kdlight.data.sampler`) but only hands it
    back when the loader is first built after the restore; kdlight's LR schedule asks for the epoch
    length while the optimisers are set up, which builds the loader before the restore, so the
    position is handed over here.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        fit_loop = trainer.fit_loop
        if fit_loop._combined_loader_states_to_load and fit_loop._combined_loader is not None:
            fit_loop._combined_loader._load_state_dicts(fit_loop._combined_loader_states_to_load)
            fit_loop._combined_loader_states_to_load = []

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Restored here rather than at load time: setting up loaders and the sanity check in between
        # must not see (or advance) the training RNG.
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, *rest = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))


class PredictionWriter(BasePredictionWriter):
    """Writes ``kdlight predict`` output to ``<log_dir>/predictions.csv``: idx, prediction, label, logits.

    Under DDP each rank writes ``predictions_rank<r>.csv`` (the distributed sampler splits the rows).

    Args:
        output_file: where to write; default ``<log_dir or default_root_dir>/predictions.csv``.
    """

    def __init__(self, output_file: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_file = output_file

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        # trainer.log_dir is a collective under DDP: every rank asks, even one with nothing to write
        path = (
            Path(self.output_file)
            if self.output_file
            else Path(trainer.log_dir or trainer.default_root_dir) / "predictions.csv"
        )
        if not predictions:
            return
        batches = predictions[0] if isinstance(predictions[0], list) else predictions
        idx = torch.cat([b["idx"] for b in batches]).tolist()
        preds = torch.cat([b["prediction"] for b in batches]).tolist()
        logits = torch.cat([b["logits"].float() for b in batches]).tolist()
        task = getattr(pl_module, "task", None)
        names = list(task.label_names) if getattr(task, "label_names", None) else None
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}_rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["idx", "prediction", "label", "logits"])
            for i, p, row_logits in zip(idx, preds, logits, strict=True):
                label = names[int(p)] if names and float(p).is_integer() and 0 <= int(p) < len(names) else ""
                writer.writerow([i, p, label, " ".join(f"{v:.5f}" for v in row_logits)])
        print(f"[kdlight] wrote {len(idx)} predictions to {path}")
