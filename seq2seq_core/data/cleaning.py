"""Per-pair text cleaning and filters, each switchable in `params.yaml` (data section).

Nothing here assumes spaces between words: lengths are counted in `count_tokens`, where
a CJK, kana or hangul character is one token and other scripts count whitespace words,
so Chinese, Japanese or Thai pass the same filters as German.
"""

from __future__ import annotations

import re
import unicodedata

from seq2seq_core.config import DataConfig

# C0/C1 control characters except tab/newline/VT/FF/CR (whitespace, collapsed later),
# plus stray byte-order marks inside the text.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufeff]")
_HAS_TEXT = re.compile(r"[^\W_]")  # a letter or digit in any script
# Scripts written without spaces between words: CJK ideographs (+ extension A and
# compatibility), kana, hangul syllables, Thai, Lao, Khmer, Myanmar.
_UNSPACED = (
    "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
    "\u0e00-\u0eff\u1780-\u17ff\u1000-\u109f"
)
_TOKEN = re.compile(f"[{_UNSPACED}]|[^\\s{_UNSPACED}]+")


def clean_text(
    text: str,
    lowercase: bool = False,
    *,
    normalization: str = "NFC",
    collapse_whitespace: bool = True,
    remove_control: bool = True,
) -> str:
    """Remove control characters, optionally lowercase, normalise, collapse whitespace."""
    if remove_control and not text.isprintable():  # fast path: most lines have none
        text = _CONTROL.sub("", text)
    if lowercase:
        text = text.lower()
    if normalization != "none":
        text = unicodedata.normalize(normalization, text)
    return " ".join(text.split()) if collapse_whitespace else text.strip()


def clean_with(text: str, cfg: DataConfig) -> str:
    return clean_text(
        text,
        cfg.lowercase,
        normalization=cfg.unicode_normalization,
        collapse_whitespace=cfg.collapse_whitespace,
        remove_control=cfg.remove_control_chars,
    )


def count_tokens(text: str) -> int:
    """Language-agnostic length: one per CJK/kana/hangul/Thai character, else per word."""
    if text.isascii():  # fast path for most Latin-script text
        return len(text.split())
    return len(_TOKEN.findall(text))


def pair_drop_reason(src: str, tgt: str, cfg: DataConfig) -> str | None:
    """The per-pair filters on cleaned text (duplicates and ratios need the corpus)."""
    if not src:
        return "empty_source"
    if not tgt:
        return "empty_target"
    if len(src) > cfg.max_chars or len(tgt) > cfg.max_chars:
        return "too_long"
    if _HAS_TEXT.search(src) is None or _HAS_TEXT.search(tgt) is None:
        return "no_text"
    src_tokens, tgt_tokens = count_tokens(src), count_tokens(tgt)
    if src_tokens > cfg.max_tokens or tgt_tokens > cfg.max_tokens:
        return "too_long"
    if src_tokens < cfg.min_tokens or tgt_tokens < cfg.min_tokens:
        return "too_short"
    return None
