"""atomic_write: the target holds the old bytes or the new ones, never a part; no temporary file is left."""

from __future__ import annotations

import pytest

from vitkit.utils.files import atomic_write


@pytest.mark.parametrize("durable", [False, True])
def test_writes_bytes_or_a_writer_and_leaves_only_the_target(tmp_path, durable):
    target = tmp_path / "sub" / "out.json"
    atomic_write(target, b"one", durable=durable)
    assert target.read_bytes() == b"one"
    atomic_write(target, lambda f: f.write(b"two"), durable=durable)
    assert target.read_bytes() == b"two" and [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"ne")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_concurrent_writers_never_share_a_temporary_name(tmp_path, monkeypatch):
    seen = []
    real_replace = __import__("os").replace
    monkeypatch.setattr("vitkit.utils.files.os.replace", lambda src, dst: seen.append(src) or real_replace(src, dst))
    for _ in range(3):
        atomic_write(tmp_path / "out.json", b"x")
    assert len(set(seen)) == 3 and all(p.name.startswith(".out.json.") for p in seen)
