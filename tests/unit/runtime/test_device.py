"""runtime.device: resolving `auto` and `cuda` on a host without CUDA."""

from __future__ import annotations

import pytest
import torch


def test_device_auto_without_cuda_says_so_and_cuda_without_it_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from seq2seq_core.runtime import device as device_module

    monkeypatch.setattr(device_module, "_logged", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    caplog.set_level("INFO")
    assert device_module.resolve_device("auto") == torch.device("cpu")
    assert device_module.resolve_device("auto") == torch.device("cpu")
    assert caplog.messages.count("device: cpu (no CUDA available)") == 1
    with pytest.raises(RuntimeError, match="no CUDA device"):
        device_module.resolve_device("cuda")
