"""golf/core/utils.py: atomic writes never leave half files; records are never overwritten."""
import json

import pytest

from golf.core.utils import GolfError, RunLog, atomic_dir, atomic_path, atomic_write_json


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}


def test_atomic_dir_refuses_existing_and_cleans_up(tmp_path):
    rec = tmp_path / "records" / "r1"
    with atomic_dir(rec) as d:
        (d / "x.txt").write_text("ok")
    assert (rec / "x.txt").read_text() == "ok"
    with pytest.raises(GolfError, match="already exists"):
        with atomic_dir(rec):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "records" / "r2") as d:
            (d / "x.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == ["r1"]


def test_runlog_writes_greppable_lines(tmp_path):
    log = RunLog(tmp_path / "train.log", echo=False)
    log.header({"num_layers": 2})
    log.kv(step=3, train_loss=1.23456789)
    log.close()
    text = (tmp_path / "train.log").read_text()
    assert "commit:" in text and 'config:{"num_layers": 2}' in text
    assert "step:3 train_loss:1.23457" in text


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        f = atomic_write_json(tmp_path / "a.json", {})
        with atomic_dir(tmp_path / "rec") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert stat.S_IMODE((tmp_path / "rec").stat().st_mode) == 0o755
