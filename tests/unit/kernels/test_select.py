"""select: the one place that decides the fast paths, by device, dtype, autocast and mode."""

from __future__ import annotations

import torch

from seq2seq_core.kernels import REFERENCE, Kernels, select

CPU = torch.device("cpu")


def test_training_on_cpu_takes_packed_rnn_and_never_packed_weights() -> None:
    for dtype in (torch.float32, torch.float64):
        kernels = select(CPU, dtype)
        assert kernels.packed_rnn and kernels.weights is None
    with torch.no_grad():  # validation under no_grad: gradients could still be wanted
        no_grad = select(CPU, torch.float32)
    # ...but none flow now: torch's packed loop (C++, no autograd nodes) is the faster one
    assert no_grad.weights is None and not no_grad.packed_rnn


def test_decoding_on_cpu_packs_weights_once_per_call() -> None:
    with torch.inference_mode():
        first, second = select(CPU, torch.float32), select(CPU, torch.float32)
    assert not first.packed_rnn and first.weights is not None
    assert first.weights is not second.weights  # a fresh cache for every call
    with torch.inference_mode():
        assert select(CPU, torch.float64).weights is None  # oneDNN packs float32 only


def test_autocast_other_dtypes_and_cuda_fall_back_to_torch() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not select(CPU, torch.float32).packed_rnn
        with torch.inference_mode():
            assert select(CPU, torch.float32).weights is not None  # packed in bf16
    assert not select(CPU, torch.bfloat16).packed_rnn
    cuda = Kernels(packed_rnn=False, chunked_scores=False, fused_cells=True)
    with torch.inference_mode():
        assert select(torch.device("cuda"), torch.float32) == cuda
    assert select(torch.device("cuda"), torch.float32) == cuda


def test_cpu_keeps_its_kernels_and_cuda_takes_torchs() -> None:
    """The CPU-tuned attention kernel on CPU only; torch's fused cells on CUDA only."""
    cpu = select(CPU, torch.float32)
    assert cpu.chunked_scores and not cpu.fused_cells and cpu.rnn_dtype is None
    cuda = select(torch.device("cuda"), torch.float32)
    assert not cuda.chunked_scores and cuda.fused_cells and not cuda.packed_rnn
    assert REFERENCE.chunked_scores and not REFERENCE.fused_cells
