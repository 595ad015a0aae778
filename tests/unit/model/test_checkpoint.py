import dataclasses
from pathlib import Path

import pytest
import torch

from seq2seq_core.config import ModelConfig
from seq2seq_core.model.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    load_model,
    model_payload,
    save_checkpoint,
)
from seq2seq_core.model.seq2seq import build_model


@pytest.mark.parametrize("attention", ["none", "luong", "bahdanau"])
def test_round_trip_rebuilds_the_same_model(tmp_path: Path, attention: str) -> None:
    cfg = ModelConfig(
        cell="lstm", attention=attention, emb_size=8, hidden_size=12, tie_embeddings="none"
    )
    torch.manual_seed(0)
    model = build_model(cfg, 20, 25).eval()
    path = tmp_path / "ckpt" / "best.pt"
    save_checkpoint(path, {**model_payload(model, cfg, 20, 25), "epoch": 3})
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temp file left

    loaded, meta = load_model(path)
    assert not loaded.training
    assert meta["epoch"] == 3 and meta["model_config"]["attention"] == attention
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, weight in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], weight), name
    src, src_len = torch.tensor([[4, 5, 6], [7, 8, 0]]), torch.tensor([3, 2])
    tgt_in = torch.tensor([[2, 9, 10], [2, 11, 0]])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.logits(src, src_len, tgt_in), model.logits(src, src_len, tgt_in)
        )


def test_payload_loads_with_weights_only(tmp_path: Path) -> None:
    cfg = ModelConfig(emb_size=8, hidden_size=12, tie_embeddings="none")
    model = build_model(cfg, 20, 25)
    optimizer = torch.optim.Adam(model.parameters())
    model(
        torch.tensor([[4, 5]]), torch.tensor([2]), torch.tensor([[2, 6]]), torch.tensor([[6, 3]])
    ).backward()
    optimizer.step()
    payload = {
        **model_payload(model, cfg, 20, 25),
        "optimizer_state": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        "history": [{"epoch": 1, "valid_bleu": 1.5}],
        "best": float("inf"),
    }
    save_checkpoint(tmp_path / "last.pt", payload)
    loaded = torch.load(tmp_path / "last.pt", weights_only=True)
    assert loaded["history"] == payload["history"]
    torch.testing.assert_close(loaded["rng"]["torch"], payload["rng"]["torch"])


def test_missing_or_foreign_files_raise(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "other.pt")


def test_format_version_is_checked_on_load(tmp_path: Path) -> None:
    cfg = ModelConfig(emb_size=8, hidden_size=12, tie_embeddings="none")
    payload = model_payload(build_model(cfg, 20, 25), cfg, 20, 25)
    assert payload["format_version"] == FORMAT_VERSION
    for version in (FORMAT_VERSION + 1, 0, "2"):
        save_checkpoint(tmp_path / "new.pt", {**payload, "format_version": version})
        with pytest.raises(CheckpointError, match=f"format_version {version!r} .*newer or unknown"):
            load_model(tmp_path / "new.pt")
    del payload["format_version"]  # written before the key existed: the first layout
    save_checkpoint(tmp_path / "old.pt", payload)
    assert load_model(tmp_path / "old.pt")[1]["src_vocab_size"] == 20


def test_checkpoint_from_before_tying_existed_rebuilds_untied() -> None:
    """tie_embeddings now defaults to decoder; a payload saved before the key existed was
    untied, and must come back untied (tying would silently merge two trained matrices)."""
    from seq2seq_core.model.checkpoint import model_config_from

    old = dataclasses.asdict(ModelConfig())
    del old["tie_embeddings"]
    assert ModelConfig().tie_embeddings == "decoder"
    assert model_config_from({"model_config": old}).tie_embeddings == "none"
    saved = {**old, "tie_embeddings": "decoder"}
    assert model_config_from({"model_config": saved}).tie_embeddings == "decoder"
