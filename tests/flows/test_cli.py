"""The `seq2seq` CLI: `translate` (arguments, --input, stdin, beam/n-best output, limits) and
the stage commands' errors on bad input and unknown parameters."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from seq2seq_core.config import load_config
from seq2seq_core.decoding.translator import InputTooLongError, Translator
from tests.support import TrainedWorkspace, copy_workspace

SENTENCES = ["Im Anfang schuf Gott die Himmel und die Erde.", "Und Gott sprach: Es werde Licht!"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, trained_workspace: TrainedWorkspace) -> Path:
    """A copy of the session's trained workspace that allows 40 source tokens."""
    return copy_workspace(
        trained_workspace,
        tmp_path_factory.mktemp("translate") / "ws",
        decode={"max_input_tokens": 40},
    )


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def _translator() -> Translator:
    cfg = load_config("params.yaml")
    return Translator.load("models/checkpoints/best.pt", cfg.vocab.out_dir, cfg.decode)


def test_arguments_file_and_stdin_give_the_same_translations(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    ckpt = ["--model", "models/checkpoints"]
    expected = _translator().translate(SENTENCES, beam_size=3)
    code, out, _ = _run(["translate", *SENTENCES, *ckpt, "--beam", "3"], capsys)
    assert code == 0 and out == expected
    (trained / "in.txt").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    code, out, _ = _run(["translate", "--input", "in.txt", *ckpt, "--beam", "3"], capsys)
    assert code == 0 and out == expected
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(SENTENCES)))
    code, out, _ = _run(["translate", *ckpt, "--beam", "3", "--output", "out.txt"], capsys)
    assert code == 0 and out == []
    assert (trained / "out.txt").read_text(encoding="utf-8").splitlines() == expected
    greedy = _translator().translate(SENTENCES, beam_size=1)
    code, out, _ = _run(
        ["translate", *SENTENCES, *ckpt, "--beam", "1", "--batch-size", "1"], capsys
    )
    assert out == greedy


def test_nbest_lines(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    code, out, _ = _run(
        ["translate", *SENTENCES, "--model", "models/checkpoints", "--beam", "4", "--nbest", "3"],
        capsys,
    )
    assert code == 0 and len(out) == 6
    fields = [line.split(" ||| ") for line in out]
    assert [f[0] for f in fields] == ["0", "0", "0", "1", "1", "1"]
    for i in (0, 3):
        scores = [float(f[2]) for f in fields[i : i + 3]]
        assert scores == sorted(scores, reverse=True)
        assert len({f[1] for f in fields[i : i + 3]}) == 3
    code, _, err = _run(["translate", "x", "--model", "models/checkpoints", "--nbest", "9"], capsys)
    assert code == 1 and "--nbest 9 needs --beam of at least 9" in err


def test_over_long_input_is_rejected_with_a_clear_message(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    long_text = " ".join(["Gott"] * 100)
    with pytest.raises(InputTooLongError, match=r"input 1 has \d+ source tokens; the limit is 40"):
        _translator().translate(["kurz", long_text])
    code, _, err = _run(["translate", long_text, "--model", "models/checkpoints"], capsys)
    assert code == 1 and "the limit is 40 (decode.max_input_tokens)" in err
    code, _, err = _run(["translate", "--input", "missing.txt"], capsys)
    assert code == 1 and "missing.txt: input file not found" in err


def test_cli_reports_bad_input_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tsv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "ingest",
            "--set",
            f"data.source={missing}",
            "--set",
            f"data.prepared_dir={tmp_path / 'prepared'}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "nope.tsv" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_rejects_unknown_parameter(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ingest", "--set", "train.epochs=3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "train: unknown key(s) epochs" in proc.stderr
