"""Encoded pairs -> padded ``Batch``es of similar length, sized by tokens, not sentences.

Batches are cut from a length-sorted order so that little compute goes to padding, and
each holds at most ``batch_tokens`` padded tokens (``B * max(S, T)``), so a batch of long
verses has fewer sentences than a batch of short ones and memory stays flat. The batch
order (and the order of equal-length pairs) is reshuffled every epoch from a seeded
generator, so an epoch's batches depend only on (seed, epoch): that is what lets a resumed
run see exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from seq2seq_core.special_tokens import BOS_ID, EOS_ID, PAD_ID


class PairEncoder(Protocol):
    def encode_src(self, texts: list[str]) -> list[list[int]]: ...
    def encode_tgt(self, texts: list[str]) -> list[list[int]]: ...


@dataclass
class EncodedPairs:
    src: list[list[int]]  # subword ids, no BOS/EOS
    tgt: list[list[int]]
    skipped_long: int  # pairs with more than max_len tokens on either side
    skipped_empty: int  # pairs whose source or target encodes to no tokens

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class Batch:
    src: Tensor  # (B, S) int64, PAD_ID after each sentence's end
    src_len: Tensor  # (B,) int64, kept on CPU (pack_padded_sequence wants it there)
    tgt_in: Tensor  # (B, T) int64, BOS + y
    tgt_out: Tensor  # (B, T) int64, y + EOS
    ntokens: int  # real (non-pad) tokens in tgt_out
    indices: list[int]  # position of each row in the EncodedPairs it came from
    # (ntokens,) int64: where tgt_out's real tokens are in tgt_out.reshape(-1), row-major;
    # counted on the host so that the loss needs no device-side count (Seq2Seq.forward)
    real: Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        """On ``device``; from pinned memory (``pin_memory``) the copies do not block."""
        nb = device.type == "cuda"
        return Batch(
            src=self.src.to(device, non_blocking=nb),
            src_len=self.src_len,
            tgt_in=self.tgt_in.to(device, non_blocking=nb),
            tgt_out=self.tgt_out.to(device, non_blocking=nb),
            ntokens=self.ntokens,
            indices=self.indices,
            real=None if self.real is None else self.real.to(device, non_blocking=nb),
        )

    def pin_memory(self) -> Batch:
        """The device-bound tensors in page-locked memory (src_len stays as it is)."""
        return Batch(
            src=self.src.pin_memory(),
            src_len=self.src_len,
            tgt_in=self.tgt_in.pin_memory(),
            tgt_out=self.tgt_out.pin_memory(),
            ntokens=self.ntokens,
            indices=self.indices,
            real=None if self.real is None else self.real.pin_memory(),
        )


def encode_pairs(
    tokenizer: PairEncoder, pairs: Sequence[tuple[str, str]], max_len: int
) -> EncodedPairs:
    """Encode (src, tgt) text pairs; drop and count pairs too long or empty after encoding."""
    src_all = tokenizer.encode_src([s for s, _ in pairs])
    tgt_all = tokenizer.encode_tgt([t for _, t in pairs])
    src: list[list[int]] = []
    tgt: list[list[int]] = []
    long = empty = 0
    for s, t in zip(src_all, tgt_all, strict=True):
        if not s or not t:
            empty += 1
        elif len(s) > max_len or len(t) > max_len:
            long += 1
        else:
            src.append(s)
            tgt.append(t)
    return EncodedPairs(src, tgt, skipped_long=long, skipped_empty=empty)


def pad_sources(sources: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Non-empty id lists (no BOS/EOS) -> src (B, S) int64, PAD_ID after each sentence's
    end, and src_len (B,) int64 on CPU: the encoder's input, in training and decoding."""
    src_len = torch.tensor([len(s) for s in sources], dtype=torch.long)  # (B,)
    src = torch.full((len(sources), int(src_len.max())), PAD_ID, dtype=torch.long)  # (B, S)
    for row, s in enumerate(sources):
        src[row, : len(s)] = torch.tensor(s, dtype=torch.long)
    return src, src_len


def collate(src: Sequence[list[int]], tgt: Sequence[list[int]], indices: list[int]) -> Batch:
    batch = len(indices)
    src_t, src_len = pad_sources([src[i] for i in indices])  # (B, S), (B,)
    tgt_len = [len(tgt[i]) + 1 for i in indices]  # +1 for BOS (in) / EOS (out)
    tgt_in = torch.full((batch, max(tgt_len)), PAD_ID, dtype=torch.long)  # (B, T)
    tgt_out = torch.full_like(tgt_in, PAD_ID)
    for row, i in enumerate(indices):
        t = tgt[i]
        tgt_in[row, 0] = BOS_ID
        tgt_in[row, 1 : len(t) + 1] = torch.tensor(t, dtype=torch.long)
        tgt_out[row, : len(t)] = torch.tensor(t, dtype=torch.long)
        tgt_out[row, len(t)] = EOS_ID
    ntokens = sum(tgt_len)
    return Batch(
        src_t, src_len, tgt_in, tgt_out, ntokens=ntokens, indices=list(indices),
        real=real_positions(tgt_len, tgt_in.size(1), ntokens),
    )  # fmt: skip


def real_positions(lengths: list[int], width: int, total: int) -> Tensor:
    """Rows of ``lengths[r]`` real tokens then padding, ``width`` wide -> the flat positions
    of the real tokens, row-major (what ``(x != PAD_ID).reshape(-1).nonzero()`` gives)."""
    lens = torch.tensor(lengths, dtype=torch.long)  # (B,)
    row_start = torch.arange(len(lengths), dtype=torch.long) * width  # (B,)
    first = torch.cumsum(lens, 0) - lens  # (B,) index of each row's first real token
    offset = torch.arange(total, dtype=torch.long) - torch.repeat_interleave(
        first, lens, output_size=total
    )  # (N,) position inside its row
    return torch.repeat_interleave(row_start, lens, output_size=total) + offset


def token_batches(
    data: EncodedPairs, batch_tokens: int, generator: torch.Generator | None = None
) -> list[list[int]]:
    """Index lists, each with B * max(S, T) <= batch_tokens (a longer pair goes alone).

    Sorted by target length first (the decoder and the output layer dominate the cost and
    the encoder packs its input anyway), then source length; with a generator, pairs of
    equal lengths and the batch order are shuffled, otherwise the order is deterministic.
    """
    n = len(data)
    tie = torch.randperm(n, generator=generator).tolist() if generator is not None else range(n)
    order = sorted(range(n), key=lambda i: (len(data.tgt[i]), len(data.src[i]), tie[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        size = max(len(data.src[i]), len(data.tgt[i]) + 1)
        if current and (len(current) + 1) * max(longest, size) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, size)
    if current:
        batches.append(current)
    if generator is not None:
        batches = [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def epoch_order(data: EncodedPairs, batch_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """The index lists of one epoch's shuffled batches, a pure function of (data, seed,
    epoch); ``feed`` collates them."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    return token_batches(data, batch_tokens, generator)


def epoch_batches(data: EncodedPairs, batch_tokens: int, seed: int, epoch: int) -> list[Batch]:
    """The shuffled training batches of one epoch, a pure function of (data, seed, epoch)."""
    order = epoch_order(data, batch_tokens, seed, epoch)
    return [collate(data.src, data.tgt, idx) for idx in order]


def collates_in_background(device: torch.device) -> bool:
    """Whether ``feed`` collates in a thread of its own, into pinned memory: on CUDA, where
    the device must not wait on Python between steps. On a CPU the device is the very
    cores that would collate, so a second thread only contends for them (and the GIL)."""
    return device.type == "cuda"


def feed(
    data: EncodedPairs, order: Sequence[list[int]], device: torch.device, ahead: int = 2
) -> Iterator[Batch]:
    """The batches of ``order`` (index lists) on ``device``, in order, each collated just
    before it is needed; on CUDA (``collates_in_background``) ``ahead`` batches early in a
    background thread, pinned, and copied without blocking. Close it when stopping early."""
    if not collates_in_background(device):
        return (collate(data.src, data.tgt, idx).to(device) for idx in order)
    return _BackgroundFeed(data, order, device, ahead)


class _BackgroundFeed(Iterator[Batch]):
    """A thread collates and pins into a bounded queue; the caller copies to the device."""

    _END = object()

    def __init__(
        self, data: EncodedPairs, order: Sequence[list[int]], device: torch.device, ahead: int
    ) -> None:
        self.device = device
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self._produce, args=(data, list(order)), name="collate", daemon=True
        )
        self.thread.start()

    def _produce(self, data: EncodedPairs, order: list[list[int]]) -> None:
        try:
            for idx in order:
                item: object = collate(data.src, data.tgt, idx).pin_memory()
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(self._END)

    def _put(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> Batch:
        if self.stop.is_set():
            raise StopIteration
        item = self.queue.get()
        if item is self._END:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item.to(self.device)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def fixed_batches(data: EncodedPairs, batch_tokens: int) -> list[Batch]:
    """Deterministic length-sorted batches (validation loss)."""
    return [collate(data.src, data.tgt, idx) for idx in token_batches(data, batch_tokens)]
