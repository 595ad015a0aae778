"""The error type and row shape shared by every corpus reader and the ingest stage."""

from __future__ import annotations

# (pair id, raw source, raw target, drop reason a reader already knows, or None)
Row = tuple[str, str, str, str | None]


class DataError(ValueError):
    """Bad input: the message names the file, the 1-based line where there is one, and the
    problem."""
