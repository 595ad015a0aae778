"""The model's CPU fast paths, and ``select``: the one place that decides which to take.

Each kernel computes exactly what a torch reference computes (up to float rounding) and is
tested against it, values and gradients, in ``tests/unit/kernels/``:

| module | computes | torch reference |
| --- | --- | --- |
| ``packed_rnn`` | LSTM/GRU over a PackedSequence | ``nn.LSTM`` / ``nn.GRU`` on it |
| ``cells`` | one LSTM/GRU step | ``torch.lstm_cell`` / ``torch.gru_cell`` |
| ``additive_scores`` | v . tanh(q + k) per query and key | ``torch.tanh(q + k) @ v`` |
| ``linear_cross_entropy`` | summed CE of a linear layer | ``F.cross_entropy(F.linear(...))`` |
| ``packed_weights`` | ``F.linear`` from weights packed per call | ``F.linear`` |
| ``int8_linear`` | ``F.linear`` from int8 weights (int8 decoding) | ``F.linear``, approximately |
| ``step_linears`` | ``F.linear`` in a time loop, W's gradient once over all steps | ``F.linear`` |
| ``compiled`` | a function through torch.compile (inductor) | the function, eagerly |
| ``step_extension`` | builds ``decode_step.cpp``: a decoder step in C++ | the eager step |

``linear_cross_entropy`` runs on every device; the others depend on the device, dtype,
autocast and inference mode of the call, and ``select`` decides them once per forward pass
or decoding call. Nothing here imports the model.

On CUDA ``select`` takes torch's own paths, the ones its GPU kernels are written for: cuDNN
RNNs, plain autograd attention scores (the chunking and the per-sentence backward of
``additive_scores`` are tuned for a CPU's caches) and torch's fused cell kernels. Under CUDA
autocast the RNNs run outside autocast in its dtype (``rnn_dtype``): torch's autocast
wrapper for cuDNN RNNs casts to fp16 whatever the autocast dtype
(aten/src/ATen/cudnn/AutocastRNN.cpp, ``_cudnn_rnn_cast_reflatten``:
``cached_cast(at::kHalf, input)``), so bf16 autocast would run them in fp16.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from seq2seq_core.kernels.additive_scores import additive_scores
from seq2seq_core.kernels.cells import CellWeights, recurrent_cell
from seq2seq_core.kernels.int8_linear import can_use_int8
from seq2seq_core.kernels.packed_weights import PackedWeights, can_pack_weights
from seq2seq_core.kernels.step_linears import StepLinears


@dataclass(frozen=True)
class Kernels:
    """The fast paths of one forward pass or one decoding call, made by ``select``.

    Holds that call's packed weights, if any: created at the start of the call, passed down
    to every module, dropped at its end, so a packed copy never outlives the call (unless
    the caller keeps them for weights that never change: ``select``'s ``kept``).
    """

    packed_rnn: bool  # the encoder's RNN through kernels.packed_rnn, not torch's module
    weights: PackedWeights | None = None  # linears and cells from packed weights (decoding)
    chunked_scores: bool = True  # additive_scores' CPU kernel, else plain autograd
    fused_cells: bool = False  # precomputed input gates through torch's fused CUDA cells
    rnn_dtype: torch.dtype | None = None  # RNNs and cells outside autocast, in this dtype
    step_linears: StepLinears | None = None  # linears whose W gradient is one matmul (training)
    compiled_loop: bool = False  # the input-feeding training loop's step through torch.compile

    def linear(self, x: Tensor, layer: nn.Linear) -> Tensor:
        """``layer(x)``: x (..., in) -> (..., out)."""
        if self.step_linears is not None:
            return self.step_linears.linear(x, layer.weight, layer.bias)
        if self.weights is None:
            return F.linear(x, layer.weight, layer.bias)
        return self.weights.linear(x, layer.weight, layer.bias)

    def cell(
        self,
        x: Tensor,
        h: Tensor,
        c: Tensor | None,
        weights: CellWeights,
        input_gates: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """One LSTM (c given) or GRU step: x (B, in), h (B, H) -> h', c' (None for GRU).

        ``input_gates`` (B, G): a precomputed share of the input gates, b_ih included (the
        embeddings' share under input feeding); ``weights`` then hold w_ih for x only."""
        return recurrent_cell(
            x, h, c, weights, self.weights, input_gates, self.fused_cells, self.rnn_dtype,
            self.step_linears,
        )  # fmt: skip

    def rnn(self, module: nn.RNNBase, x: Tensor | PackedSequence, hx: Any = None) -> Any:
        """``module(x, hx)``; in ``rnn_dtype`` outside autocast when that is set."""
        if self.rnn_dtype is None:
            return module(x, hx)
        return rnn_in_dtype(module, x, hx, self.rnn_dtype)

    def additive_scores(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """v . tanh(q + k) per query and key: q (B, T, A), k (B, S, A), v (A,) -> (B, T, S)."""
        if self.chunked_scores:
            return additive_scores(q, k, v)
        return torch.tanh(q.unsqueeze(2) + k.unsqueeze(1)) @ v  # the torch reference


# torch's modules and functions only: what each fast path must equal.
REFERENCE = Kernels(packed_rnn=False)
# Plain torch ops, no autograd Functions of ours: what torch.compile traces (``compiled``).
TRACEABLE = Kernels(packed_rnn=False, chunked_scores=False)


def select(
    device: torch.device,
    dtype: torch.dtype,
    int8: bool = False,
    kept: PackedWeights | None = None,
    compile_loop: bool = False,
) -> Kernels:
    """The fast paths for a model with parameters of this device and dtype, under the
    autocast and inference mode in force now: call it inside the call's contexts.

    packed_rnn: CPU, float32/float64, no autocast, gradients on (cuDNN is faster on CUDA;
    under autocast torch's module keeps its own dtype handling; without gradients torch's
    own packed loop runs in C++ and is faster, at batch 1 and 64 alike). Packed weights and
    the fused cell: under
    inference mode on a CPU with oneDNN, float32 parameters; never where gradients flow.
    step_linears: where packed_rnn is (the decoder's time loop in training).
    compiled_loop: ``compile_loop`` (``train.compile``) where packed_rnn is.
    chunked_scores: CPU (and the CPU-like devices). fused_cells: CUDA. rnn_dtype: the
    autocast dtype under CUDA autocast (bf16 really bf16, not cuDNN's fp16).
    ``int8`` (int8 decoding): those packed weights are int8 (``int8_linear``); a ValueError
    where torch has no int8 kernels for the device. ``kept``: packed weights that outlive
    the call, used instead of a fresh set where weights are packed (``Translator``: a model
    loaded for inference only, whose weights never change).
    """
    cpu = device.type == "cpu"
    cuda = device.type == "cuda"
    packed_rnn = cpu and dtype in (torch.float32, torch.float64)
    packed_rnn = packed_rnn and not torch.is_autocast_enabled("cpu") and torch.is_grad_enabled()
    decoding = torch.is_inference_mode_enabled() and dtype == torch.float32
    if int8 and not (decoding and can_use_int8(device)):
        raise ValueError(f"int8 decoding needs float32 parameters on a CPU, not {device} {dtype}")
    weights = None
    if decoding and can_pack_weights(device):
        if kept is not None and kept.int8 != int8:
            raise ValueError(f"kept packed weights are {'not ' * (not kept.int8)}int8")
        weights = kept if kept is not None else PackedWeights(int8)
    rnn_dtype = (
        torch.get_autocast_dtype("cuda") if cuda and torch.is_autocast_enabled("cuda") else None
    )
    return Kernels(
        packed_rnn=packed_rnn,
        weights=weights,
        chunked_scores=not cuda,
        fused_cells=cuda,
        rnn_dtype=rnn_dtype,
        step_linears=StepLinears() if packed_rnn else None,
        compiled_loop=compile_loop and packed_rnn,
    )


def rnn_in_dtype(
    module: nn.RNNBase, x: Tensor | PackedSequence, hx: Any, dtype: torch.dtype
) -> Any:
    """``module(x, hx)`` outside autocast, with its input, state and weights cast to ``dtype``
    (casts autograd differentiates: the fp32 parameters get fp32 gradients)."""
    if isinstance(x, PackedSequence):
        x = PackedSequence(x.data.to(dtype), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    else:
        x = x.to(dtype)
    if hx is not None:
        hx = tuple(t.to(dtype) for t in hx) if isinstance(hx, tuple) else hx.to(dtype)
    params = {name: p.to(dtype) for name, p in module.named_parameters()}
    device_type = next(iter(params.values())).device.type
    with torch.autocast(device_type, enabled=False), warnings.catch_warnings():
        # The cast weights are not cuDNN's one flat buffer: cuDNN copies them once per call,
        # as torch's own autocast wrapper for cuDNN RNNs does.
        warnings.filterwarnings("ignore", message=".*not part of single contiguous chunk")
        return torch.func.functional_call(module, params, (x, hx))
