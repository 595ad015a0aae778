"""The README's layout and docs/architecture.md against the code on disk.

The layout is how a newcomer finds a module, and it drifted once when the core moved into
folders; these tests make a moved, added or removed module fail here until the docs say so.

The README's `## Layout` section opens with a fenced block, one folder per line, each with
its modules (file names without `.py`):

    seq2seq_core/  config special_tokens stages
      runtime/     device precision ...
    flows/         cli cli_registry ...

An unindented line is a top-level package; an indented one is a folder of the last package.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
ARCHITECTURE = REPO / "docs" / "architecture.md"
CORE = "seq2seq_core"


def layout_block(markdown: str) -> list[str]:
    """The lines of the first fenced block after the `## Layout` heading."""
    section = re.search(r"^## Layout\s*$(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert section, "README.md has no `## Layout` section"
    block = re.search(r"^```[^\n]*\n(.*?)^```", section.group(1), re.M | re.S)
    assert block, "README.md's `## Layout` section has no fenced code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def documented_layout(markdown: str) -> dict[str, set[str]]:
    """Folder path relative to the repo (`seq2seq_core`, `seq2seq_core/data`, `flows`) ->
    the module names its line lists."""
    layout: dict[str, set[str]] = {}
    package = None
    for line in layout_block(markdown):
        folder, *modules = line.split()
        assert folder.endswith("/"), f"README layout line does not start with a folder: {line!r}"
        name = folder.removesuffix("/")
        if line[0].isspace():
            assert package, f"README layout: {line!r} is indented under no package"
            path = f"{package}/{name}"
        else:
            package = path = name
        assert path not in layout, f"README layout lists {path}/ twice"
        layout[path] = set(modules)
    return layout


def modules_on_disk(folder: str) -> set[str]:
    return {p.stem for p in (REPO / folder).glob("*.py") if p.name != "__init__.py"}


def core_folders_on_disk() -> set[str]:
    """The core's subpackages: every folder with an `__init__.py`, at any depth."""
    return {
        p.parent.relative_to(REPO).as_posix()
        for p in (REPO / CORE).rglob("__init__.py")
        if p.parent != REPO / CORE
    }


def test_readme_layout_lists_exactly_the_modules_of_each_folder() -> None:
    layout = documented_layout(README.read_text(encoding="utf-8"))
    assert CORE in layout, "README layout has no seq2seq_core/ line"
    assert "flows" in layout, "README layout has no flows/ line"
    problems = []
    for folder, listed in sorted(layout.items()):
        if not (REPO / folder).is_dir():
            problems.append(f"{folder}/: listed in README.md, no such folder")
            continue
        actual = modules_on_disk(folder)
        if missing := sorted(actual - listed):
            problems.append(f"{folder}/: not in README.md: {' '.join(missing)}")
        if extra := sorted(listed - actual):
            problems.append(f"{folder}/: in README.md, no such file: {' '.join(extra)}")
    assert not problems, "README.md's Layout differs from the code:\n" + "\n".join(problems)


def test_readme_layout_names_every_core_folder() -> None:
    layout = documented_layout(README.read_text(encoding="utf-8"))
    unlisted = sorted(core_folders_on_disk() - set(layout))
    assert not unlisted, f"folders missing from README.md's Layout: {', '.join(unlisted)}"


def test_architecture_names_every_core_folder() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    names = sorted(folder.removeprefix(f"{CORE}/") for folder in core_folders_on_disk())
    unnamed = [name for name in names if f"`{name}/`" not in text]
    assert not unnamed, (
        f"docs/architecture.md does not name these folders as `name/`: {', '.join(unnamed)}"
    )
