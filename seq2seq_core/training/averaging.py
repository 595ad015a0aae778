"""Checkpoint averaging: the element-wise mean of several checkpoints' weights.

Averaging the weights of the last few checkpoints of one run (Vaswani et al. 2017; Popel
and Bojar 2018, "Training Tips for the Transformer Model") smooths out the noise of the last
updates and usually scores a little higher than any one of them. Only checkpoints of one
architecture and one vocabulary can be averaged; anything else raises naming the file.
Training (``snapshots.py``) and ``seq2seq average`` both call ``average_checkpoints``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from seq2seq_core.model.checkpoint import FORMAT_VERSION, load_checkpoint, model_config_from


class AveragingError(ValueError):
    """The checkpoints cannot be averaged (none given, or they differ in what they are)."""


def average_checkpoints(paths: Sequence[Path]) -> dict[str, Any]:
    """A checkpoint payload (``model_payload``'s keys, loadable by ``load_model``) whose
    weights are the mean of ``paths``' weights, summed in float64 and cast back to each
    tensor's dtype; non-float tensors are the last checkpoint's. It carries no optimizer
    state (nothing resumes from an average) and lists its sources in ``averaged_from``."""
    if not paths:
        raise AveragingError("no checkpoints to average")
    first_path, first = Path(paths[0]), load_checkpoint(paths[0])
    sums = {k: v.to(torch.float64) for k, v in first["model_state"].items()}
    last_state = first["model_state"]
    for path in paths[1:]:
        payload = load_checkpoint(path)
        _check_same_model(first_path, first, Path(path), payload)
        for name, tensor in payload["model_state"].items():
            sums[name] += tensor.to(torch.float64)
        last_state = payload["model_state"]
    state = {
        name: (sums[name] / len(paths)).to(t.dtype) if t.is_floating_point() else t.clone()
        for name, t in last_state.items()
    }
    return {
        "format_version": FORMAT_VERSION,
        "model_state": state,
        "model_config": dataclasses.asdict(model_config_from(first)),
        "src_vocab_size": int(first["src_vocab_size"]),
        "tgt_vocab_size": int(first["tgt_vocab_size"]),
        "vocab_sha256": first.get("vocab_sha256"),
        "averaged_from": [str(p) for p in paths],
    }


def _check_same_model(
    first_path: Path, first: dict[str, Any], path: Path, payload: dict[str, Any]
) -> None:
    """Raise ``AveragingError`` naming ``path`` and what differs from ``first_path``."""
    ours, theirs = (dataclasses.asdict(model_config_from(p)) for p in (first, payload))
    differ = [f"model.{k} {theirs[k]!r} (vs {ours[k]!r})" for k in ours if theirs[k] != ours[k]]
    for key in ("src_vocab_size", "tgt_vocab_size"):
        if int(payload[key]) != int(first[key]):
            differ.append(f"{key} {payload[key]} (vs {first[key]})")
    sha_a, sha_b = first.get("vocab_sha256"), payload.get("vocab_sha256")
    if sha_a and sha_b and sha_a != sha_b:
        differ.append(f"vocabulary sha {sha_b[:8]} (vs {sha_a[:8]})")
    a, b = first["model_state"], payload["model_state"]
    if not differ and {k: v.shape for k, v in a.items()} != {k: v.shape for k, v in b.items()}:
        differ.append("its tensors' names or shapes")
    if differ:
        raise AveragingError(
            f"{path}: cannot average with {first_path}: it has " + "; ".join(differ)
        )
