"""data.report: the data report's markdown."""

from __future__ import annotations

from seq2seq_core.data.report import report_markdown
from tests.support import messy_tsv, prepare


def test_report_markdown_lists_splits_and_drops(tmp_path):
    report = prepare(tmp_path, messy_tsv(tmp_path))
    text = report_markdown(report)
    assert "13 pairs read, 5 kept." in text
    assert "| train | 5 |" in text and "| duplicate | 2 |" in text
    assert "| too_short |" not in text  # zero counts are left out
