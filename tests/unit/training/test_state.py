"""training.state: the saved progress reads back, also from older checkpoints."""

from seq2seq_core.training.state import Best, EpochPosition, TrainState


def test_progress_written_before_the_state_had_parts_still_resumes() -> None:
    flat = {"epoch": 2, "step": 9, "elapsed": 3.5, "train_tokens": 70, "train_seconds": 1.5,
            "best_valid_bleu": 4.0, "best_valid_loss": 2.5, "bad_epochs": 1,
            "batch_in_epoch": 3, "epoch_loss_sum": 6.0, "epoch_tokens": 20,
            "epoch_seconds": 0.5, "history": [{"epoch": 1}]}  # fmt: skip
    state = TrainState.from_dict(flat)
    assert (state.epoch, state.step, state.elapsed, state.history) == (2, 9, 3.5, [{"epoch": 1}])
    assert state.best == Best(valid_bleu=4.0, valid_loss=2.5, bad_epochs=1)
    assert state.position == EpochPosition(batch=3, loss_sum=6.0, tokens=20, seconds=0.5)
    assert TrainState.from_dict(state.to_dict()) == state
