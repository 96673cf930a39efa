"""Atomic file writes: the target holds the old or the new content, never part of one."""
import json

import pytest

from resdepth.utils.atomic import replacing, write_json_atomic


def test_success_renames_and_failure_keeps_old(tmp_path):
    target = tmp_path / "index.json"
    write_json_atomic(target, {"v": 1})
    assert json.loads(target.read_text()) == {"v": 1}
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_text('{"v": 2, "cut')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_unserialisable_values_fail_unless_asked(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "a.json", {"p": tmp_path})
    assert not (tmp_path / "a.json").exists()
    write_json_atomic(tmp_path / "a.json", {"p": tmp_path}, default=str)
    assert json.loads((tmp_path / "a.json").read_text()) == {"p": str(tmp_path)}
