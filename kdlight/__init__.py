"""kdlight: knowledge distillation for NLP on PyTorch Lightning."""

__version__ = "0.1.0"
