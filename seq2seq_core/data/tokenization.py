"""Tokenizers behind one interface: SentencePiece subwords (unigram or BPE) and counted
word or character vocabularies; one joint model for both sides or one per side.

Special ids are fixed in every kind (``special_tokens.py``: pad 0, unk 1, bos 2, eos 3).

SentencePiece models use the `identity` normalisation rule: `data.py` has already
NFC-normalised and whitespace-collapsed the text, and SentencePiece's default NFKC would
turn full-width Chinese punctuation into ASCII, so decode(encode(x)) != x and target-side
BLEU would be scored on text the references never contained.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from seq2seq_core.config import VocabConfig
from seq2seq_core.runtime.files import publish, staging_dir, write_json
from seq2seq_core.special_tokens import BOS_ID, EOS_ID, PAD_ID, SPECIALS, UNK_ID

MANIFEST = "tokenizer.json"
KINDS = ("sentencepiece", "word", "char")
_MODEL_FILES = ("spm.model", "src.model", "tgt.model", "vocab.json", "src.json", "tgt.json")
_SAMPLE_SEED = 0


class TokenizerError(ValueError):
    """A tokenizer cannot be trained or loaded; the message names the directory or file."""


def _sample(texts: Sequence[str], limit: int) -> list[str]:
    """Non-empty texts, at most `limit` of them, sampled with a fixed seed (order kept)."""
    texts = [t for t in texts if t]
    if len(texts) <= limit:
        return texts
    keep = sorted(random.Random(_SAMPLE_SEED).sample(range(len(texts)), limit))
    return [texts[i] for i in keep]


def _content_ids(seq: Sequence[int]) -> list[int]:
    """Ids up to the first eos, without pad and bos."""
    out = []
    for i in seq:
        i = int(i)
        if i == EOS_ID:
            break
        if i != PAD_ID and i != BOS_ID:
            out.append(i)
    return out


# --------------------------------------------------------------------------- one side


class _SentencePieceSide:
    def __init__(self, blob: bytes):
        self.blob = blob
        self.sp = spm.SentencePieceProcessor(model_proto=blob)
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise TokenizerError(f"model has special ids {ids}, expected (0, 1, 2, 3)")
        self.size = self.sp.get_piece_size()
        self.threads = os.cpu_count() or 1

    @staticmethod
    def train(sentences: list[str], cfg: VocabConfig, side: str) -> bytes:
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=model,
                model_type=cfg.model_type,
                vocab_size=cfg.size,
                # A soft limit: a tiny corpus yields fewer pieces instead of an error.
                hard_vocab_limit=False,
                character_coverage=cfg.character_coverage,
                normalization_rule_name="identity",
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                input_sentence_size=0,  # already sampled, deterministically, by _sample
                num_threads=os.cpu_count() or 1,
                minloglevel=2,
            )
        except RuntimeError as exc:
            raise TokenizerError(
                f"vocab: SentencePiece failed on the {side} side (vocab.size={cfg.size}, "
                f"vocab.character_coverage={cfg.character_coverage}): {exc}"
            ) from None
        return model.getvalue()

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int, num_threads=self.threads)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.sp.decode(ids)

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(i)


class _CountedSide:
    """A word (split on spaces) or character vocabulary, most frequent first."""

    def __init__(self, blob: bytes):
        self.blob = blob
        data = json.loads(blob)
        self.kind, self.pieces = data["kind"], data["pieces"]
        if tuple(self.pieces[:4]) != SPECIALS:
            raise TokenizerError(f"vocabulary starts with {self.pieces[:4]}, expected {SPECIALS}")
        self.ids = {p: i for i, p in enumerate(self.pieces)}
        self.size = len(self.pieces)

    @staticmethod
    def train(sentences: list[str], cfg: VocabConfig, kind: str, min_freq: int) -> bytes:
        counts: Counter[str] = Counter()
        for text in sentences:
            counts.update(text.split() if kind == "word" else text)
        # Ties broken by the token itself, so the vocabulary does not depend on input order.
        ranked = sorted(
            (t for t, n in counts.items() if n >= min_freq and t not in SPECIALS),
            key=lambda t: (-counts[t], t),
        )
        limit = cfg.max_size or cfg.size
        pieces = [*SPECIALS, *ranked[: max(limit - len(SPECIALS), 0)]]
        return json.dumps({"kind": kind, "pieces": pieces}, ensure_ascii=False).encode("utf-8")

    def encode(self, texts: list[str]) -> list[list[int]]:
        get = self.ids.get
        if self.kind == "word":
            return [[get(t, UNK_ID) for t in text.split()] for text in texts]
        return [[get(c, UNK_ID) for c in text] for text in texts]

    def decode(self, ids: list[list[int]]) -> list[str]:
        joiner = " " if self.kind == "word" else ""
        return [joiner.join(self.pieces[i] for i in seq) for seq in ids]

    def piece(self, i: int) -> str:
        return self.pieces[i]


_SIDES = {"sentencepiece": _SentencePieceSide, "word": _CountedSide, "char": _CountedSide}
_FILES = {
    "sentencepiece": ("spm.model", "src.model", "tgt.model"),
    "word": ("vocab.json", "src.json", "tgt.json"),
    "char": ("vocab.json", "src.json", "tgt.json"),
}


# --------------------------------------------------------------------------- tokenizer


class SubwordTokenizer:
    """The pipeline's tokenizer for every `vocab.kind`, despite its name: SentencePiece
    subwords (unigram or BPE, the default) or a counted word or character vocabulary, as
    the manifest records. Holds the source and target sides (one object when `joint`)."""

    def __init__(self, blobs: dict[str, bytes], settings: dict[str, Any], out_dir: Path):
        self.settings = settings
        self.out_dir = Path(out_dir)
        side_cls = _SIDES[settings["kind"]]
        self._src = side_cls(blobs["src"])
        self._tgt = self._src if blobs["tgt"] is blobs["src"] else side_cls(blobs["tgt"])

    @classmethod
    def train(
        cls, src_texts: list[str], tgt_texts: list[str], cfg: VocabConfig, out_dir: Path
    ) -> SubwordTokenizer:
        """Train on (a deterministic sample of) the texts and save into `out_dir`.

        The kind comes from `vocab.kind` (sentencepiece | word | char) where the config
        has that key; `vocab.min_freq` applies to word/char only."""
        kind = cfg.kind
        min_freq = cfg.min_freq
        if kind not in KINDS:
            raise TokenizerError(f"vocab.kind: {kind!r} is not one of {', '.join(KINDS)}")
        if cfg.joint:
            groups = {"joint": [*src_texts, *tgt_texts]}
        else:
            groups = {"src": src_texts, "tgt": tgt_texts}
        trained = {}
        for side, texts in groups.items():
            sentences = _sample(texts, cfg.max_sentences)
            if not sentences:
                raise TokenizerError(f"vocab: no non-empty {side} sentences to train on")
            if kind == "sentencepiece":
                trained[side] = _SentencePieceSide.train(sentences, cfg, side)
            else:
                trained[side] = _CountedSide.train(sentences, cfg, kind, min_freq)
        joint_name, src_name, tgt_name = _FILES[kind]
        if cfg.joint:
            blobs = {"src": trained["joint"], "tgt": trained["joint"]}
            files = {"src": joint_name, "tgt": joint_name}
        else:
            blobs, files = trained, {"src": src_name, "tgt": tgt_name}
        settings: dict[str, Any] = {
            "kind": kind,
            "size": cfg.size,
            "joint": cfg.joint,
            "max_sentences": cfg.max_sentences,
            "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
            "trained_on": {"src_sentences": len(src_texts), "tgt_sentences": len(tgt_texts)},
            "files": files,
        }
        if kind == "sentencepiece":
            settings |= {
                "model_type": cfg.model_type,
                "character_coverage": cfg.character_coverage,
                "normalization": "identity",
                "sentencepiece_version": spm.__version__,
            }
        else:
            settings |= {"min_freq": min_freq, "max_size": cfg.max_size or cfg.size}
        tokenizer = cls(blobs, settings, out_dir)
        settings["src_vocab_size"] = tokenizer.src_vocab_size
        settings["tgt_vocab_size"] = tokenizer.tgt_vocab_size
        tokenizer._save()
        return tokenizer

    def _save(self) -> None:
        """Write into a sibling temp dir, then rename into place (the manifest last)."""
        out_dir = self.out_dir
        with staging_dir(out_dir) as tmp:
            names = self.settings["files"]
            (tmp / names["src"]).write_bytes(self._src.blob)
            (tmp / names["tgt"]).write_bytes(self._tgt.blob)
            write_json(tmp / MANIFEST, self.settings)
            publish(tmp, out_dir, [*{*names.values()}, MANIFEST])
            for stale in set(_MODEL_FILES) - set(names.values()):
                (out_dir / stale).unlink(missing_ok=True)

    @classmethod
    def load(cls, out_dir: Path) -> SubwordTokenizer:
        out_dir = Path(out_dir)
        manifest = out_dir / MANIFEST
        if not manifest.is_file():
            raise TokenizerError(
                f"{out_dir}: no tokenizer here ({MANIFEST} is missing); "
                "run the vocab stage first (seq2seq vocab)"
            )
        try:
            settings = json.loads(manifest.read_text(encoding="utf-8"))
            names = settings["files"]
            if settings["kind"] not in KINDS:
                raise KeyError(f"unknown kind {settings['kind']!r}")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TokenizerError(f"{manifest}: not a tokenizer manifest ({exc})") from None
        blobs: dict[str, bytes] = {}
        for name in {names["src"], names["tgt"]}:
            path = out_dir / name
            if not path.is_file():
                raise TokenizerError(f"{path}: model file missing; run the vocab stage again")
            blobs[name] = path.read_bytes()
        # A joint model is one object, so `joint` survives a save/load round trip.
        try:
            return cls({"src": blobs[names["src"]], "tgt": blobs[names["tgt"]]}, settings, out_dir)
        except (TokenizerError, ValueError, RuntimeError) as exc:
            raise TokenizerError(f"{out_dir}: cannot load the tokenizer: {exc}") from None

    def files(self) -> list[Path]:
        """Every file needed to reload this tokenizer (the manifest and the model(s))."""
        names = dict.fromkeys([MANIFEST, *self.settings["files"].values()])
        return [self.out_dir / name for name in names]

    @property
    def kind(self) -> str:
        return self.settings["kind"]

    @property
    def joint(self) -> bool:
        return self._src is self._tgt

    @property
    def src_vocab_size(self) -> int:
        return self._src.size

    @property
    def tgt_vocab_size(self) -> int:
        return self._tgt.size

    def encode_src(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, without bos/eos."""
        return self._src.encode(list(texts))

    def encode_tgt(self, texts: list[str]) -> list[list[int]]:
        return self._tgt.encode(list(texts))

    def decode_src(self, ids: list[list[int]]) -> list[str]:
        return self._src.decode([_content_ids(seq) for seq in ids])

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        """Text per id sequence: stops at the first eos, skips pad and bos."""
        return self._tgt.decode([_content_ids(seq) for seq in ids])

    def coverage(self, src_texts: list[str], tgt_texts: list[str]) -> dict[str, float]:
        """Per side: the share of tokens that are <unk> and the mean tokens per sentence
        (for the vocab report, on held-out text such as the valid split)."""
        stats: dict[str, float] = {}
        for side, ids in (("src", self.encode_src(src_texts)), ("tgt", self.encode_tgt(tgt_texts))):
            total = sum(map(len, ids))
            unk = sum(seq.count(UNK_ID) for seq in ids)
            stats[f"{side}_unk_rate"] = round(unk / total, 6) if total else 0.0
            stats[f"{side}_tokens_per_sentence"] = round(total / len(ids), 2) if ids else 0.0
        return stats

    def id_to_piece(self, ids: list[int], side: str = "tgt") -> list[str]:
        vocab = self._src if side == "src" else self._tgt
        return [vocab.piece(int(i)) for i in ids]

    # Picklable (e.g. for DataLoader workers): the model bytes travel, not the C++ object.
    def __getstate__(self) -> dict[str, Any]:
        blobs = {"src": self._src.blob, "tgt": self._tgt.blob}
        return {"blobs": blobs, "settings": self.settings, "out_dir": str(self.out_dir)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["blobs"], state["settings"], Path(state["out_dir"]))  # type: ignore[misc]

    def __repr__(self) -> str:
        return (
            f"SubwordTokenizer({self.kind}, joint={self.joint}, "
            f"src={self.src_vocab_size}, tgt={self.tgt_vocab_size}, dir={self.out_dir})"
        )
