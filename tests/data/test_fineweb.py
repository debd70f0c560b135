"""golf.data.fineweb against a local stand-in for the Hugging Face repo (no network here)."""
import json
from pathlib import Path

import numpy as np
import pytest

from golf.core.utils import GolfError
from golf.data import fineweb
from golf.data.folder import load_split, read_manifest, shard_files, tokenizer_path
from golf.data.shards import write_shard
from golf.data.tokenizer import ByteTokenizer, load_tokenizer


def make_fake_hub(root: Path, n_train=3, n_val=1) -> Path:
    """A folder laid out like willdepueoai/parameter-golf: datasets/manifest.json, shards, tokenizer."""
    base = root / fineweb.REMOTE_ROOT
    ds = base / "datasets" / "fineweb10B_byte260"
    rng = np.random.default_rng(0)
    for i in range(n_train):
        write_shard(ds / f"fineweb_train_{i:06d}.bin", rng.integers(4, 260, 1000 + i))
    for i in range(n_val):
        write_shard(ds / f"fineweb_val_{i:06d}.bin", rng.integers(4, 260, 500))
    ByteTokenizer().save(base / "tokenizers" / "fineweb_pure_byte_260.json")
    manifest = {
        "datasets": [{"name": "fineweb10B_byte260", "tokenizer_name": "pure_byte_260",
                      "stats": {"files_train": n_train, "files_val": n_val}}],
        "tokenizers": [{"name": "pure_byte_260", "kind": "byte", "path": "tokenizers/fineweb_pure_byte_260.json"}],
    }
    (base / "manifest.json").write_text(json.dumps(manifest))
    return root


class FakeHub:
    def __init__(self, root: Path, fail_after: int | None = None):
        self.root, self.fail_after, self.calls = root, fail_after, []

    def __call__(self, remote: str) -> Path:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise GolfError("network down (simulated)")
        self.calls.append(remote)
        return self.root / remote


def test_plan_from_manifest(tmp_path):
    hub = make_fake_hub(tmp_path / "hub")
    manifest = json.loads((hub / "datasets" / "manifest.json").read_text())
    plan = fineweb.plan_download(manifest, "byte260", 2)
    assert plan["train"] == ["datasets/datasets/fineweb10B_byte260/fineweb_train_000000.bin",
                             "datasets/datasets/fineweb10B_byte260/fineweb_train_000001.bin"]
    assert plan["val"] == ["datasets/datasets/fineweb10B_byte260/fineweb_val_000000.bin"]
    assert plan["tokenizer_files"] == ["datasets/tokenizers/fineweb_pure_byte_260.json"]
    with pytest.raises(GolfError, match="has 3 training shards"):
        fineweb.plan_download(manifest, "byte260", 4)
    with pytest.raises(GolfError, match="not in the challenge manifest"):
        fineweb.plan_download(manifest, "sp1024", 1)


def test_download_makes_a_data_folder_and_resumes(tmp_path):
    hub = make_fake_hub(tmp_path / "hub")
    out = tmp_path / "local"
    # First attempt dies after the manifest and two files: nothing partial may look complete.
    first = FakeHub(hub, fail_after=3)
    with pytest.raises(GolfError, match="simulated"):
        fineweb.download("byte260", 3, out, download_fn=first)
    assert not (out / "manifest.json").exists()
    assert not list(out.glob(".*.tmp"))
    # Corrupt one finished shard (truncated): it must be fetched again.
    done = sorted(out.glob("*.bin"))
    assert len(done) == 2
    with open(done[0], "r+b") as f:
        f.truncate(1500)
    second = FakeHub(hub)
    m = fineweb.download("byte260", 3, out, download_fn=second)
    fetched = {Path(r).name for r in second.calls}
    assert done[0].name in fetched and done[1].name not in fetched
    assert m == read_manifest(out)
    assert len(shard_files(out, "train")) == 3 and len(shard_files(out, "val")) == 1
    assert m["splits"]["train"]["tokens"] == 1000 + 1001 + 1002
    tok = load_tokenizer(tokenizer_path(out))
    assert tok.kind == "byte" and tok.vocab_size == 260
    assert load_split(out, "val").size == 500
    # Third run: everything present, only the manifest is re-read from disk.
    third = FakeHub(hub)
    fineweb.download("byte260", 3, out, download_fn=third)
    assert third.calls == []
