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


def test_stale_temporaries_of_killed_writes_are_removed_and_named(tmp_path, capsys):
    """A kill -9 in the middle of an atomic write leaves `.<name>.<pid>.<random>.tmp` behind; the next
    run removes it when its writer is gone, leaves a live writer's alone, and says what it removed."""
    import os
    import subprocess
    import sys
    import time

    from golf.core.utils import STALE_UNOWNED_SECONDS, atomic_dir, atomic_path, sweep_stale

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".model.ptz.{dead.pid}.ab12cd34.tmp").write_bytes(b"half")
    (tmp_path / f".2026-01-01_rec.{dead.pid}.x1y2z3w4.tmp").mkdir()  # an atomic_dir record folder
    (tmp_path / f".final.pt.{child.pid}.qq11ww22.tmp").write_bytes(b"being written")
    old = tmp_path / ".size.json.k9k9k9k9.tmp"  # an older golf's name, no pid: stale after an hour
    old.write_bytes(b"{")
    os.utime(old, (time.time() - STALE_UNOWNED_SECONDS - 5,) * 2)
    young = tmp_path / ".eval.json.j8j8j8j8.tmp"
    young.write_bytes(b"{")
    keep = tmp_path / "model.ptz"
    keep.write_bytes(b"done")
    try:
        removed = sorted(p.name for p in sweep_stale(tmp_path))
    finally:
        child.kill()
    assert removed == sorted([f".model.ptz.{dead.pid}.ab12cd34.tmp", f".2026-01-01_rec.{dead.pid}.x1y2z3w4.tmp",
                              ".size.json.k9k9k9k9.tmp"])
    assert (tmp_path / f".final.pt.{child.pid}.qq11ww22.tmp").exists() and young.exists() and keep.exists()
    assert "removed" in capsys.readouterr().out
    # golf's own temporaries carry the writer's pid
    with atomic_path(tmp_path / "x.bin") as t:
        assert f".x.bin.{os.getpid()}." in t.name and t.name.endswith(".tmp")
        assert sweep_stale(tmp_path) == []  # our own live write is never swept
    with atomic_dir(tmp_path / "rec") as t:
        assert f".rec.{os.getpid()}." in t.name
