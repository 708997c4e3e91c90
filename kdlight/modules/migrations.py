"""Checkpoint migrations: what older kdlight versions wrote, rewritten into today's layout on load.

Plain functions on the checkpoint dict, called from the modules' ``on_load_checkpoint`` (before
Lightning loads the state dict and restores the loops), so the modules keep only their algorithm.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from kdlight.modules.manual import AUXILIARY_STEPS, STEP_COUNT_KEY, STUDENT_UPDATES, subtract_optimizer_steps

LEGACY_MIXER_KEY = "kdlight_alm_mixer"  # ALM: the mixing weights beside the state dict, before kdlight.components
LEGACY_GENERATOR_KEY = "kdlight_generator"  # zero-shot: the generator beside the state dict, before it was a submodule


def pop_moved(kwargs: dict[str, Any], moved: Iterable[str]) -> dict[str, Any]:
    """The given (not None) values of init arguments that moved into a component (ALM's ``meta:``, the
    generator), taken out of ``kwargs``. They reach ``__init__`` from a script's call or from an old checkpoint's
    hyper-parameters (``load_from_checkpoint`` passes them all through ``**kwargs``); the CLI's parser no longer
    takes them and names the new key instead."""
    taken = {key: kwargs.pop(key) for key in moved if key in kwargs}
    return {key: value for key, value in taken.items() if value is not None}


def migrate_alm_checkpoint(checkpoint: dict[str, Any]) -> None:
    """ALM-KD: the mixer's weights and the meta schedule's batch counter where ``meta`` keeps them now."""
    state = checkpoint["state_dict"]
    legacy = checkpoint.pop(LEGACY_MIXER_KEY, None)
    if legacy is not None:
        state.update({f"meta.mixer.{k}": v for k, v in legacy["state_dict"].items()})
    if "meta_progress" in state:  # the batch counter on the module itself
        state["meta.batches_seen"] = state.pop("meta_progress")
    if "meta.batches_seen" not in state:  # written before the counter existed: Lightning's batch count
        loops = checkpoint.get("loops", {}).get("fit_loop", {})
        done = loops.get("epoch_loop.batch_progress", {}).get("total", {}).get("completed", 0)
        state["meta.batches_seen"] = torch.tensor([done], dtype=torch.long)


def migrate_zeroshot_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Zero-shot KD: the generator's weights and its step counter where the component keeps them now."""
    state = checkpoint["state_dict"]
    legacy = checkpoint.pop(LEGACY_GENERATOR_KEY, None)
    if legacy is not None:
        state.update({f"generator.network.{k}": v for k, v in legacy.items()})
    if "generator.steps" not in state and "progress" in state:
        state["generator.steps"] = state["progress"][AUXILIARY_STEPS].clone()


def zeroshot_generator_optimizer_steps(checkpoint: dict[str, Any]) -> None:
    """Zero-shot KD's global step counted the generator's updates too: take them out (its ``progress``
    buffer records them), so a resumed fit's ``max_steps`` counts student updates, as a new one's does."""
    progress = checkpoint["state_dict"].get("progress")
    if progress is not None and checkpoint.get(STEP_COUNT_KEY) != STUDENT_UPDATES:
        subtract_optimizer_steps(checkpoint, int(progress[AUXILIARY_STEPS]))


__all__ = [
    "LEGACY_GENERATOR_KEY",
    "LEGACY_MIXER_KEY",
    "migrate_alm_checkpoint",
    "migrate_zeroshot_checkpoint",
    "pop_moved",
    "zeroshot_generator_optimizer_steps",
]
