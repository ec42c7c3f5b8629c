"""pipeline.io.atomic: a reader never sees half a file; a failed write leaves nothing behind."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pipeline.io.atomic import PARTIAL_SUFFIX, atomic_path, partial_path, write_json, write_text


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(PARTIAL_SUFFIX))


def test_write_text_and_json(tmp_path: Path) -> None:
    write_text(tmp_path / "a" / "b.txt", "hello")  # parents made
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    text = (tmp_path / "m.json").read_text()
    assert text == json.dumps({"b": 1, "a": [1, 2]}, indent=2) + "\n"  # key order kept, one newline
    write_json(tmp_path / "s.json", {"b": 1, "a": 2}, sort_keys=True)
    assert list(json.loads((tmp_path / "s.json").read_text())) == ["a", "b"]
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "a") == []


def test_failed_write_leaves_neither_target_nor_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(TypeError):
        write_json(target, {"x": object()})  # not serialisable: fails before anything is written
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    write_text(target, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("new, half")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_temporary_name_is_hidden_unique_and_beside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "thresholds.json"
    names = {partial_path(target) for _ in range(200)}
    assert len(names) == 200
    for name in names:
        assert name.parent == tmp_path and name.name.startswith(".thresholds.json.")
        assert name.name.endswith(PARTIAL_SUFFIX)


def test_two_writers_never_share_a_temporary_name(tmp_path: Path) -> None:
    target = tmp_path / "shared.txt"
    seen: list[Path] = []
    inside = threading.Barrier(2)

    def writer(text: str) -> None:
        with atomic_path(target) as tmp:
            seen.append(tmp)
            tmp.write_text(text)
            inside.wait(timeout=10)  # both temporaries exist at once

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 2
    assert target.read_text() in ("first", "second")
    assert _leftovers(tmp_path) == []
