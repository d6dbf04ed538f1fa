"""predict's inputs: folders recursively, glob patterns (quoted, '**'), CSV/TXT path lists, problems named."""

from __future__ import annotations

from pathlib import Path

import pytest

from chestxray.errors import DataError
from chestxray.inference.inputs import check_input_file, expand_inputs


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for rel in ("a/1.png", "a/b/2.jpeg", "a/b/c/3.dcm", "a/noext", "a/.hidden.png", "a/readme.md", "a/.git/x.png",
                "d/4.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    return tmp_path


def test_folders_patterns_and_lists_expand_in_order(tree: Path) -> None:
    (tree / "list.txt").write_text("# scans\nd/4.png\n\na/1.png\n")
    (tree / "list.csv").write_text("patient,path\np1,a/b/2.jpeg\np2,/nowhere/5.png\n")
    (tree / "bare.csv").write_text(f"{tree / 'd/4.png'}\n")
    got = expand_inputs([tree / "a", str(tree / "**" / "*.png"), tree / "list.txt", tree / "list.csv",
                         tree / "bare.csv", tree / "d" / "4.png"])
    rel = [str(p.relative_to(tree)) if p.is_relative_to(tree) else str(p) for p in got.paths]
    assert rel[:4] == ["a/1.png", "a/noext", "a/b/2.jpeg", "a/b/c/3.dcm"]  # sorted per folder, hidden/other skipped
    assert rel[4:6] == ["a/1.png", "d/4.png"]  # '**' pattern, hidden files not matched
    assert rel[6:] == ["d/4.png", "a/1.png", "a/b/2.jpeg", "/nowhere/5.png", "d/4.png", "d/4.png"]
    assert got.problems == []


def test_inputs_that_name_nothing_are_problems(tree: Path) -> None:
    (tree / "empty").mkdir()
    (tree / "empty.txt").write_text("\n# nothing\n")
    got = expand_inputs([str(tree / "*.nope"), tree / "empty", tree / "empty.txt", tree / "missing.png"])
    assert got.paths == [tree / "missing.png"]  # reported when it is read, with the other files
    reasons = [r for _, r in got.problems]
    assert "matched no input file" in reasons[0] and "holds no image files" in reasons[1]
    assert "list of input files is empty" in reasons[2]
    (tree / "nocol.csv").write_text("patient,age\np1,3\n")
    with pytest.raises(DataError, match="nocol.csv: no path column"):
        expand_inputs([tree / "nocol.csv"])


def test_input_file_messages_speak_of_input_files_not_catalog_rows(tree: Path) -> None:
    with pytest.raises(DataError, match="missing.png: input file not found; check the path") as info:
        check_input_file(tree / "missing.png")
    assert "catalog" not in str(info.value)
    with pytest.raises(DataError, match="is a folder, not an image file; pass the folder itself"):
        check_input_file(tree / "a")
    (tree / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty input file"):
        check_input_file(tree / "zero.png")
