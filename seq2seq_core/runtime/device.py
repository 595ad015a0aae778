"""The one device decision: ``train.device`` (auto | cpu | cuda) -> a torch.device.

Training, validation, evaluation, the translate CLI and serving all take their device from
``resolve_device``; it logs the decision once per process ("device: cuda:0 (NVIDIA H200)",
"device: cpu (no CUDA available)"), so ``auto`` never falls back to the CPU silently.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
_logged: set[str] = set()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU (with a warning saying why).
    ``cuda`` without a GPU is an error, not a slow run on the CPU. Under torchrun each
    process takes the GPU of its LOCAL_RANK."""
    if name not in DEVICES:
        raise ValueError(f"device: {name!r} is not one of {', '.join(DEVICES)}")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        _log_once(f"device: {device} ({torch.cuda.get_device_name(device.index)})")
        return device
    if name == "cuda":
        raise RuntimeError(
            f"device: cuda, but torch {torch.__version__} sees no CUDA device "
            f"(built with CUDA {torch.version.cuda or 'no'})"
        )
    reason = "no CUDA available" if name == "auto" else "device: cpu"
    _log_once(f"device: cpu ({reason})", logging.WARNING if name == "auto" else logging.INFO)
    return torch.device("cpu")


def _log_once(message: str, level: int = logging.INFO) -> None:
    if message not in _logged:
        _logged.add(message)
        log.log(level, message)
