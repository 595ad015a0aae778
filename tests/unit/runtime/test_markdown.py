"""runtime.markdown: table cells keep pipes and newlines inside the cell."""

from __future__ import annotations

from seq2seq_core.runtime.markdown import cell, code_cell
from tests.support import SIGNATURE, table_cells


def test_cells_escape_pipes_and_fold_lines() -> None:
    assert cell("a|b\nc") == "a\\|b c"
    assert code_cell("x|`y`") == "`x\\|'y'`"
    assert table_cells(f"| BLEU | {code_cell(SIGNATURE)} |") == ["BLEU", code_cell(SIGNATURE)]
