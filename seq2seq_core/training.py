"""The training loop: encode, batch, train epoch by epoch, validate, checkpoint, resume.

``train_model`` reads top to bottom: set-up (threads, seed, device, data, model, optimizer),
an optional resume from ``last.pt``, then one iteration per epoch of
train steps -> validation loss and BLEU -> best/last checkpoints -> callbacks.
Metrics leave through ``TrainCallback``s only (MLflow attaches there; the core never
imports it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import sacrebleu
import torch
from tqdm import tqdm

from seq2seq_core.batching import Batch, EncodedPairs, encode_pairs, epoch_batches, fixed_batches
from seq2seq_core.checkpoint import load_checkpoint, model_payload, save_checkpoint
from seq2seq_core.config import PipelineConfig
from seq2seq_core.decoding import greedy_decode
from seq2seq_core.distributed import any_rank, broadcast, init_distributed, shard, wrap
from seq2seq_core.host_memory import retain_freed_host_memory
from seq2seq_core.optim import LearningRate, build_optimizer, teacher_forcing_ratio
from seq2seq_core.precision import autocast
from seq2seq_core.seq2seq import Seq2Seq, build_model

log = logging.getLogger(__name__)


class TrainCallback(Protocol):
    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """metrics: loss, lr, grad_norm, tokens_per_s (running, this epoch)."""

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """metrics: train_loss, valid_loss, valid_ppl, valid_bleu, epoch_seconds, tokens_per_s."""


class Tokenizer(Protocol):
    src_vocab_size: int
    tgt_vocab_size: int

    def encode_src(self, texts: list[str]) -> list[list[int]]: ...
    def encode_tgt(self, texts: list[str]) -> list[list[int]]: ...
    def decode_tgt(self, ids: list[list[int]]) -> list[str]: ...


@dataclass
class TrainResult:
    best_checkpoint: str
    last_checkpoint: str
    epochs: int
    steps: int
    best_valid_bleu: float
    best_valid_loss: float
    stop_reason: str  # "max_epochs" | "time_budget" | "early_stopping"
    train_tokens_per_s: float
    seconds: float
    skipped_long: int
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Progress:
    """Everything about the run's position that last.pt carries across a resume."""

    epoch: int = 0
    step: int = 0
    elapsed: float = 0.0  # seconds of this run's time budget spent (training + validation)
    train_tokens: int = 0
    train_seconds: float = 0.0
    best_valid_bleu: float = -1.0
    best_valid_loss: float = math.inf
    bad_epochs: int = 0  # validations since the best one (early stopping)
    # Position inside the epoch being trained, for a mid-epoch resume.
    batch_in_epoch: int = 0
    epoch_loss_sum: float = 0.0
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def pick_threads(requested: int) -> int:
    """Torch intra-op threads: ``requested`` if > 0, else the number of idle cores (>= 1).

    Measured on the 2-core Zen 4 VM (bi-GRU 256, Luong attention, vocab 8k, 3000-token
    batches, synthetic Bible-like lengths), in target tokens/s: idle machine, 1 thread
    ~3,300, 2 threads ~5,400; with one core kept busy by another process, 1 thread ~3,300,
    2 threads ~1,700 (OpenMP threads wait on each other when one shares its core). So
    "one thread per core" is right only for idle cores: the rule samples /proc/stat for
    0.3 s and uses the cores that were idle, rounded to the nearest whole core.
    """
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    idle = _idle_cores(0.3)
    if idle is None:
        return 1
    return max(1, min(cores, int(idle + 0.5)))


def _idle_cores(seconds: float) -> float | None:
    """How many cores' worth of CPU time was idle during ``seconds`` (Linux), else None."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values[:8])  # idle + iowait, all but guest time

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    ticks = total1 - total0
    return (idle1 - idle0) / ticks * (os.cpu_count() or 1) if ticks > 0 else None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_model(
    cfg: PipelineConfig,
    *,
    tokenizer: Tokenizer,
    train_pairs: list[tuple[str, str]],
    valid_pairs: list[tuple[str, str]],
    checkpoint_dir: Path,
    callbacks: list[TrainCallback],
) -> TrainResult:
    tc = cfg.train
    checkpoint_dir = Path(checkpoint_dir)
    best_path, last_path = checkpoint_dir / "best.pt", checkpoint_dir / "last.pt"
    topo, device = init_distributed(pick_device(tc.device))
    if topo.is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        torch.set_num_threads(pick_threads(tc.threads))
    retain_freed_host_memory()
    torch.manual_seed(tc.seed)

    train_data = encode_pairs(tokenizer, train_pairs, tc.max_len)
    valid_data = encode_pairs(tokenizer, valid_pairs, tc.max_len)
    if not len(train_data):
        raise ValueError("no training pairs left after encoding and the max_len filter")
    valid_batches = fixed_batches(valid_data, tc.batch_tokens)
    bleu_pairs = valid_pairs[: tc.valid_bleu_sentences]
    bleu_src = tokenizer.encode_src([s for s, _ in bleu_pairs])
    bleu_refs = [t for _, t in bleu_pairs]

    src_vocab, tgt_vocab = tokenizer.src_vocab_size, tokenizer.tgt_vocab_size
    model = build_model(cfg.model, src_vocab, tgt_vocab).to(device)
    optimizer = build_optimizer(list(model.parameters()), tc)
    schedule = LearningRate.from_config(tc)
    fingerprint = run_fingerprint(cfg, src_vocab, tgt_vocab, train_data, valid_pairs)
    progress = _resume(last_path, fingerprint, model, optimizer, schedule, device) or _Progress()
    trainer = wrap(model, topo, device)  # DDP when torchrun started several processes

    def save_last() -> None:
        if topo.is_main:
            progress.elapsed = time.monotonic() - clock0
            payload = model_payload(model, cfg.model, src_vocab, tgt_vocab)
            save_checkpoint(
                last_path, _resume_payload(payload, optimizer, schedule, progress, fingerprint)
            )

    budget_s = tc.time_budget_min * 60.0
    clock0 = time.monotonic() - progress.elapsed
    stop_reason = "max_epochs"
    while progress.epoch < tc.max_epochs and stop_reason == "max_epochs":
        epoch = progress.epoch + 1
        # 1. train one epoch, from where a resumed run left off inside it
        model.train()
        batches = shard(epoch_batches(train_data, tc.batch_tokens, tc.seed, epoch), topo)
        t0 = time.monotonic() - progress.epoch_seconds
        bar = tqdm(
            total=len(batches), initial=progress.batch_in_epoch, desc=f"epoch {epoch}",
            disable=not (sys.stderr.isatty() and topo.is_main), leave=False,
        )  # fmt: skip
        out_of_time = False
        for index in range(progress.batch_in_epoch, len(batches)):
            if any_rank(time.monotonic() - clock0 >= budget_s, topo, device):
                out_of_time = True
                break
            batch = batches[index].to(device)
            ratio = teacher_forcing_ratio(tc, progress.step)
            loss = forward_backward(trainer, batch, ratio, tc, _precision(cfg))
            progress.batch_in_epoch = index + 1
            progress.epoch_loss_sum += loss * batch.ntokens
            progress.epoch_tokens += batch.ntokens
            bar.update(1)
            if progress.batch_in_epoch % tc.accumulate_steps and index + 1 < len(batches):
                continue
            progress.step += 1
            lr = schedule.apply(optimizer, progress.step)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.epoch_seconds = time.monotonic() - t0
            tok_s = progress.epoch_tokens / max(progress.epoch_seconds, 1e-9) * topo.world
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:.0f}")
            if progress.step % tc.checkpoint_every_steps == 0:
                save_last()  # mid-epoch: a kill loses at most checkpoint_every_steps steps
            step_metrics = {
                "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tok_s,
                "teacher_forcing": ratio,
            }  # fmt: skip
            for cb in callbacks:
                cb.on_step(progress.step, step_metrics)
        bar.close()
        if out_of_time and progress.batch_in_epoch == 0:
            stop_reason = "time_budget"
            break
        train_seconds = time.monotonic() - t0
        tokens = progress.epoch_tokens
        progress.train_tokens += tokens * topo.world
        progress.train_seconds += train_seconds

        # 2. validate on rank 0: loss over all valid pairs, BLEU on greedy decodes of N
        metrics = None
        if topo.is_main:
            valid_loss = evaluate_loss(model, valid_batches, device, _precision(cfg))
            valid_bleu = validation_bleu(model, tokenizer, bleu_src, bleu_refs, cfg, device)
            metrics = {
                "train_loss": progress.epoch_loss_sum / max(tokens, 1),
                "valid_loss": valid_loss,
                "valid_ppl": math.exp(min(valid_loss, 100.0)),
                "valid_bleu": valid_bleu,
                "epoch_seconds": time.monotonic() - t0,
                "tokens_per_s": tokens * topo.world / max(train_seconds, 1e-9),
                "lr": schedule.at(max(progress.step, 1)),
            }
        metrics = broadcast(metrics, topo)
        schedule.observe(metrics["valid_bleu"])
        progress.epoch = epoch
        progress.batch_in_epoch, progress.epoch_loss_sum = 0, 0.0
        progress.epoch_tokens, progress.epoch_seconds = 0, 0.0
        progress.history.append({"epoch": epoch, **metrics})

        # 3. checkpoints: best by valid BLEU (ties -> lower loss), last every epoch
        improved = (metrics["valid_bleu"], -metrics["valid_loss"]) > (
            progress.best_valid_bleu, -progress.best_valid_loss
        )  # fmt: skip
        if improved:
            progress.best_valid_bleu = metrics["valid_bleu"]
            progress.best_valid_loss = metrics["valid_loss"]
            progress.bad_epochs = 0
            if topo.is_main:
                payload = model_payload(model, cfg.model, src_vocab, tgt_vocab)
                save_checkpoint(best_path, {**payload, "epoch": epoch, "valid": metrics})
        else:
            progress.bad_epochs += 1
        save_last()
        if topo.is_main:
            _write_json(checkpoint_dir / "history.json", progress.history)
        log.info("epoch %d %s", epoch, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        for cb in callbacks:
            cb.on_epoch(epoch, metrics)
        if out_of_time:
            stop_reason = "time_budget"
        elif tc.early_stopping_patience and progress.bad_epochs >= tc.early_stopping_patience:
            stop_reason = "early_stopping"
        elif time.monotonic() - clock0 >= budget_s and progress.epoch < tc.max_epochs:
            stop_reason = "time_budget"

    if topo.is_main:
        _write_json(checkpoint_dir / "history.json", progress.history)
    for cb in callbacks:
        if hasattr(cb, "on_train_end"):
            cb.on_train_end(model)
    return TrainResult(
        best_checkpoint=str(best_path),
        last_checkpoint=str(last_path),
        epochs=progress.epoch,
        steps=progress.step,
        best_valid_bleu=progress.best_valid_bleu,
        best_valid_loss=progress.best_valid_loss,
        stop_reason=stop_reason,
        train_tokens_per_s=progress.train_tokens / max(progress.train_seconds, 1e-9),
        seconds=time.monotonic() - clock0,
        skipped_long=train_data.skipped_long,
        history=progress.history,
    )


def forward_backward(
    model: torch.nn.Module, batch: Batch, teacher_forcing: float, tc: Any, precision: str
) -> float:
    """Loss and gradients of one batch (accumulated over `train.accumulate_steps`
    batches); returns the loss per target token. `model` may be DDP-wrapped: the loss
    goes through `forward` so that its gradient hooks run."""
    with autocast(batch.src.device, precision):
        loss = model(
            batch.src, batch.src_len, batch.tgt_in, tgt_out=batch.tgt_out,
            teacher_forcing=teacher_forcing, label_smoothing=tc.label_smoothing,
        )  # fmt: skip
    loss = loss / batch.ntokens
    (loss / tc.accumulate_steps).backward()
    return loss.item()


def train_step(
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    *,
    teacher_forcing: float,
    clip_grad: float,
    precision: str = "fp32",
) -> tuple[float, float]:
    """One plain update (no accumulation, no smoothing): (loss per token, grad norm)."""
    with autocast(batch.src.device, precision):
        loss = model(batch.src, batch.src_len, batch.tgt_in, batch.tgt_out, teacher_forcing)
    loss = loss / batch.ntokens
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    return loss.item(), grad_norm.item()


def _precision(cfg: PipelineConfig) -> str:
    return cfg.train.precision


def evaluate_loss(
    model: Seq2Seq, batches: Sequence[Batch], device: torch.device, precision: str = "fp32"
) -> float:
    """Teacher-forced loss per target token (nan when there are no batches)."""
    model.eval()
    total, tokens = 0.0, 0
    with torch.inference_mode(), autocast(device, precision):
        for batch in batches:
            b = batch.to(device)
            total += float(model(b.src, b.src_len, b.tgt_in, tgt_out=b.tgt_out))
            tokens += b.ntokens
    return total / tokens if tokens else math.nan


def validation_bleu(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    src_ids: list[list[int]],
    refs: list[str],
    cfg: PipelineConfig,
    device: torch.device,
) -> float:
    if not src_ids:
        return 0.0
    out = greedy_decode(
        model,
        src_ids,
        batch_size=cfg.decode.batch_size,
        max_len_ratio=cfg.decode.max_len_ratio,
        max_len_extra=cfg.decode.max_len_extra,
        device=device,
        precision=cfg.decode.precision,
    )
    return float(sacrebleu.corpus_bleu(tokenizer.decode_tgt(out.ids), [refs]).score)


# --- resume -------------------------------------------------------------------------------

# Train settings that change what the run computes; the others (max_epochs, the time budget,
# threads, device, paths) may change between a run and its resumption.
FINGERPRINT_TRAIN_KEYS = (
    "teacher_forcing",
    "teacher_forcing_schedule",
    "teacher_forcing_min",
    "teacher_forcing_decay_steps",
    "optimizer",
    "weight_decay",
    "lr_schedule",
    "warmup_steps",
    "plateau_factor",
    "plateau_patience",
    "min_lr",
    "label_smoothing",
    "accumulate_steps",
    "batch_tokens",
    "lr",
    "clip_grad",
    "seed",
    "max_len",
    "precision",
)


def run_fingerprint(
    cfg: PipelineConfig,
    src_vocab_size: int,
    tgt_vocab_size: int,
    train_data: EncodedPairs,
    valid_pairs: Sequence[tuple[str, str]],
) -> str:
    """A hash of the model/train config and of the data as the model sees it (subword ids:
    this covers both the corpus and the tokenizer) plus the raw validation pairs."""
    digest = hashlib.sha256()
    train = dataclasses.asdict(cfg.train)
    settings = {
        "model": dataclasses.asdict(cfg.model),
        "train": {k: train[k] for k in FINGERPRINT_TRAIN_KEYS if k in train},
        "vocab": [src_vocab_size, tgt_vocab_size],
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for side in (train_data.src, train_data.tgt):
        for ids in side:
            digest.update(b",".join(str(i).encode() for i in ids) + b"\n")
    for src, tgt in valid_pairs:
        digest.update(f"{src}\t{tgt}\n".encode())
    return digest.hexdigest()


def _resume_payload(
    payload: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    schedule: LearningRate,
    progress: _Progress,
    fingerprint: str,
) -> dict[str, Any]:
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        **payload,
        "optimizer_state": optimizer.state_dict(),
        "lr_schedule": schedule.state_dict(),
        "progress": dataclasses.asdict(progress),
        "rng": rng,
        "fingerprint": fingerprint,
    }


def _resume(
    path: Path,
    fingerprint: str,
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    schedule: LearningRate,
    device: torch.device,
) -> _Progress | None:
    """Restore model, optimizer, RNG and progress from ``path`` if it belongs to this run."""
    if not path.is_file():
        return None
    state = load_checkpoint(path, device)
    if state.get("fingerprint") != fingerprint:
        log.warning("%s: config or data changed since it was written; training from scratch", path)
        return None
    model.load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer_state"])
    schedule.load_state_dict(state.get("lr_schedule", {}))
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
    progress = _Progress(**state["progress"])
    log.info(
        "resuming from %s: epoch %d, batch %d of the next, step %d",
        path, progress.epoch, progress.batch_in_epoch, progress.step,
    )  # fmt: skip
    return progress


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
