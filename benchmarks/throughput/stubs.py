"""Import-time stand-ins for two optional dependencies the peers import but never use in this benchmark.

* ``torchvision`` (torchdistill imports it for its CNN model zoo and image-dataset registry only).
  The PyPI wheel that matches torch 2.13 (torchvision 0.28.0) is a CUDA build: its ``_C.so`` needs
  ``libc10_cuda.so``, which the CPU torch lacks, so ``import torchvision`` fails with
  ``RuntimeError: operator torchvision::nms does not exist``; the CPU wheel lives on
  download.pytorch.org, which this machine cannot reach. torchdistill's distillation code
  (``DistillationBox``, ``KDLoss``, hooks, optimiser/scheduler registries) never calls torchvision.
* ``tensorboardX`` (textbrewer imports ``SummaryWriter`` at import time; it only instantiates it when
  ``TrainingConfig.log_dir`` is set, which it is not here). Installing tensorboard into the shared
  environment would switch Lightning's default logger for every other kdlight run, so we do not.

A real module, if importable, always wins: a stub is installed only when the import fails. Every stub
raises if anything is actually called on it, so a measurement can never silently run stub code.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types


class _Unavailable:
    """A placeholder class/function: subclassing it is fine, calling or instantiating it is an error."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("benchmarks.throughput.stubs: this stand-in must never be used")


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # importlib.util.find_spec must not raise
    module.__dict__.update(attrs)
    module.__stub__ = True
    sys.modules[name] = module
    return module


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # torchvision's CUDA wheel raises RuntimeError, not ImportError
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        return False


def install_torchvision_stub() -> bool:
    """Make ``import torchdistill.core.distillation`` work without a working torchvision. Returns
    True when the stub was installed (False: the real torchvision imported)."""
    if _importable("torchvision"):
        return False
    densenet = _module("torchvision.models.densenet", _DenseBlock=_Unavailable, _Transition=_Unavailable)
    resnet = _module("torchvision.models.resnet", BasicBlock=_Unavailable, conv1x1=_Unavailable)
    detection = _module("torchvision.models.detection")
    segmentation = _module("torchvision.models.segmentation")
    quantization = _module("torchvision.models.quantization")
    models = _module(
        "torchvision.models",
        densenet=densenet,
        resnet=resnet,
        detection=detection,
        segmentation=segmentation,
        quantization=quantization,
    )
    datasets = _module("torchvision.datasets")
    transforms = _module("torchvision.transforms")
    _module("torchvision", models=models, datasets=datasets, transforms=transforms, __version__="stub")
    return True


def install_tensorboardx_stub() -> bool:
    """Make ``import textbrewer`` work without tensorboard. Returns True when the stub was installed."""
    if _importable("tensorboardX") or _importable("torch.utils.tensorboard"):
        return False
    _module("tensorboardX", SummaryWriter=_Unavailable)
    return True
