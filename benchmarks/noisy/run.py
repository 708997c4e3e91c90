"""What ``benchmarks/noisy/multiclass.py`` and ``inversion.py`` import from here (the harness's quiet Trainer and
step timer). The binary Rotten Tomatoes noisy-label study that lived here, and its ablation, were removed with
their results in favour of ``benchmarks/noisy/multiclass.py`` (docs/alm.md)."""

from benchmarks.harness import StepTimer  # noqa: F401
from benchmarks.harness import quiet_trainer as trainer  # noqa: F401
