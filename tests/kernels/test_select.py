"""select: the one place that decides the fast paths, by device, dtype, autocast and mode."""

from __future__ import annotations

import torch

from seq2seq_core.kernels import REFERENCE, select

CPU = torch.device("cpu")


def test_training_on_cpu_takes_packed_rnn_and_never_packed_weights() -> None:
    for dtype in (torch.float32, torch.float64):
        kernels = select(CPU, dtype)
        assert kernels.packed_rnn and kernels.weights is None
    with torch.no_grad():  # validation under no_grad: gradients could still be wanted
        assert select(CPU, torch.float32).weights is None


def test_decoding_on_cpu_packs_weights_once_per_call() -> None:
    with torch.inference_mode():
        first, second = select(CPU, torch.float32), select(CPU, torch.float32)
    assert first.packed_rnn and first.weights is not None
    assert first.weights is not second.weights  # a fresh cache for every call
    with torch.inference_mode():
        assert select(CPU, torch.float64).weights is None  # oneDNN packs float32 only


def test_autocast_other_dtypes_and_cuda_fall_back_to_torch() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not select(CPU, torch.float32).packed_rnn
        with torch.inference_mode():
            assert select(CPU, torch.float32).weights is not None  # packed in bf16
    assert not select(CPU, torch.bfloat16).packed_rnn
    with torch.inference_mode():
        assert select(torch.device("cuda"), torch.float32) == REFERENCE
    assert select(torch.device("cuda"), torch.float32) == REFERENCE
