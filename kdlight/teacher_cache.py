"""Teacher logits computed once for a fixed training set and looked up by example ``idx``.

When the student's inputs do not change between epochs (VanillaKD, ALM-KD), the frozen teacher's
forward pass is pure waste after the first epoch. The cache is a ``datasets`` table of
``(idx, logits)`` saved under ``<kdlight cache>/teacher_logits/<fingerprint>``; the fingerprint
hashes the teacher's weights and config and the tokenised training set (token ids, masks, idx),
so a different teacher, data file or tokenisation (tokenizer, max length) never reuses stale logits.

Logits are computed in eval mode in batches padded to their own longest example; training batches
are padded differently, so cached and live logits agree to float rounding (~1e-6), not bit for bit.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import datasets
import pyarrow as pa
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdlight.data.base import MODEL_INPUTS


def _hash_model(model: nn.Module, digest) -> None:
    digest.update(model.config.to_json_string().encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())


def _hash_dataset(dataset: datasets.Dataset, digest) -> None:
    columns = [c for c in (*MODEL_INPUTS, "idx") if c in dataset.column_names]
    # canonical form: one chunk, no schema metadata (the same rows must hash the same however stored)
    table = dataset.select_columns(columns).flatten_indices().data.table.combine_chunks().replace_schema_metadata(None)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    digest.update(sink.getvalue())


def fingerprint(teacher: nn.Module, dataset: datasets.Dataset) -> str:
    digest = hashlib.sha256()
    _hash_model(teacher, digest)
    _hash_dataset(dataset, digest)
    return digest.hexdigest()[:24]


class TeacherLogitCache:
    """A dense ``(max_idx + 1, num_labels)`` table of teacher logits, with a presence mask."""

    def __init__(self, idx: Tensor, logits: Tensor) -> None:
        size = int(idx.max()) + 1 if len(idx) else 0
        self.logits = torch.zeros(size, logits.shape[-1], dtype=logits.dtype)
        self.present = torch.zeros(size, dtype=torch.bool)
        self.logits[idx] = logits
        self.present[idx] = True
        self._present_host = self.present  # stays on the host when the cache moves to a device

    def to(self, device: torch.device) -> TeacherLogitCache:
        self.logits, self.present = self.logits.to(device), self.present.to(device)
        return self

    def covers(self, idx: Tensor) -> bool:
        """Whether every example of ``idx`` (host tensor) is cached, answered from a host copy of
        the index so that no device tensor is read."""
        if getattr(self, "_present_host", None) is None or len(self._present_host) != len(self.present):
            self._present_host = self.present.cpu()
        idx = idx.cpu()
        return len(idx) > 0 and int(idx.max()) < len(self._present_host) and bool(self._present_host[idx].all())

    def lookup(self, idx: Tensor, covered: bool | None = None) -> Tensor | None:
        """Cached logits for every example of the batch, or None if any is missing. ``covered``: the
        answer of :meth:`covers` taken before the batch moved to the device (else worked out here)."""
        if covered is None:
            covered = self.covers(idx)
        return self.logits[idx] if covered else None

    @staticmethod
    @torch.no_grad()
    def compute(teacher: nn.Module, loader: DataLoader, device: torch.device) -> tuple[Tensor, Tensor]:
        was_training = teacher.training
        teacher.eval()
        all_idx, all_logits = [], []
        for batch in loader:
            inputs = {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}
            all_logits.append(teacher(**inputs).logits.float().cpu())
            all_idx.append(batch["idx"])
        teacher.train(was_training)
        return torch.cat(all_idx), torch.cat(all_logits)

    @classmethod
    def load_or_compute(
        cls,
        teacher: nn.Module,
        dataset: datasets.Dataset,
        loader: DataLoader | Callable[[], DataLoader] | None,
        device: torch.device,
        root: Path,
        compute: bool = True,
    ) -> tuple[TeacherLogitCache, Path, bool]:
        """Load the cache for (teacher, dataset) from ``root``, computing and saving it if absent.

        ``loader`` serves ``dataset`` for the computation: a loader, or a function that builds one
        (called only when the logits are computed). Returns the cache, its folder, and whether it was
        computed now. With ``compute=False`` (non-zero ranks under DDP, after rank 0 has written it)
        a missing cache is an error, and no loader is needed.
        """
        folder = Path(root) / fingerprint(teacher, dataset)
        if (folder / "dataset_info.json").is_file():
            table = datasets.load_from_disk(str(folder)).with_format("torch")[:]
            return cls(table["idx"], table["logits"]), folder, False
        if not compute:
            raise RuntimeError(f"teacher-logit cache {folder} was not written by rank 0")
        if callable(loader):
            loader = loader()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            idx, logits = cls.compute(teacher, loader, device)  # iterating a loader draws from the global RNG
        # A folder of this process's own, renamed into place: runs that share the cache (study workers, two
        # users' jobs) and compute the same logits at once must not delete or half-overwrite each other's.
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp", dir=folder.parent))
        datasets.Dataset.from_dict({"idx": idx.tolist(), "logits": logits.tolist()}).save_to_disk(str(tmp))
        if folder.exists() and not (folder / "dataset_info.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # not a finished cache: replace it
        try:
            tmp.rename(folder)
        except OSError:  # another run wrote the same (teacher, dataset) logits first: theirs equal ours
            shutil.rmtree(tmp, ignore_errors=True)
            if not (folder / "dataset_info.json").is_file():
                raise
        return cls(idx, logits), folder, True
