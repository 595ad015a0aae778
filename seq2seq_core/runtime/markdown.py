"""Markdown table cells that survive what they quote.

Reports quote text the pipeline does not control: sacrebleu signatures (`nrefs:1|case:mixed|…`),
corpus sentences, exception messages, registry reasons. A `|` in a cell splits a GitHub-style
table (the Prefect UI showed only "`nrefs:1" of each signature), and a newline ends the row.
Every table cell the project writes goes through `cell` or `code_cell`.
"""

from __future__ import annotations

from typing import Any


def cell(value: Any) -> str:
    """Plain text for one table cell: pipes escaped, line breaks folded to spaces."""
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("|", "\\|").replace("\n", " ")


def code_cell(value: Any) -> str:
    """Text shown as code in one table cell (GFM honours `\\|` inside code spans too)."""
    return f"`{cell(value).replace('`', chr(39))}`"
