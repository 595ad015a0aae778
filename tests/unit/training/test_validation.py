"""training.validation: validation BLEU tokenizes as the target language needs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import sacrebleu
import torch

from seq2seq_core.config import PipelineConfig
from seq2seq_core.decoding.greedy import GreedyResult

# --- 17.6. validation BLEU with the target language's tokenizer ----------------------------


def test_zh_validation_bleu_uses_the_zh_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unsegmented Chinese is one 13a token per sentence: BLEU ~ 0 for any hypothesis
    short of a perfect one. tok:zh splits characters, as the evaluation does."""
    from seq2seq_core.training import validation

    refs = ["我喜欢吃苹果和香蕉。", "今天天气很好，我们去公园散步吧。"]
    hyps = ["我喜欢吃苹果和橘子。", "今天天气很好，我们去公园走走吧。"]
    monkeypatch.setattr(validation, "greedy_decode", lambda *a, **k: GreedyResult([[1], [2]]))

    class Tok:
        def decode_tgt(self, ids):
            return hyps

    cfg = PipelineConfig()
    data = dataclasses.replace(cfg.data, tgt_lang="zh", prepared_dir=str(tmp_path))
    cfg = dataclasses.replace(cfg, data=data)
    score = validation.validation_bleu(None, Tok(), [[5], [6]], refs, cfg, torch.device("cpu"))  # type: ignore[arg-type]
    zh = sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score
    assert sacrebleu.corpus_bleu(hyps, [refs]).score < 1.0  # 13a
    assert score == pytest.approx(zh) and score > 20.0
