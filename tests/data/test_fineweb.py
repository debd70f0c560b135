"""golf.data.fineweb against a local stand-in for the Hugging Face repo (no network here)."""
import json
from pathlib import Path

import numpy as np
import pytest

from golf.core.utils import GolfError
from golf.data import fineweb
from golf.data.folder import load_split, shard_files, tokenizer_path
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


def test_download_lays_files_out_as_the_challenge_and_resumes(tmp_path):
    hub = make_fake_hub(tmp_path / "hub")
    root = tmp_path / "data"
    ds = root / "datasets" / "fineweb10B_byte260"
    # First attempt dies after the manifest and two files: nothing partial may look complete.
    first = FakeHub(hub, fail_after=3)
    with pytest.raises(GolfError, match="simulated"):
        fineweb.download("byte260", 3, root, download_fn=first)
    assert not list(root.rglob(".*.tmp"))
    # Corrupt one finished shard (truncated): it must be fetched again.
    done = sorted(ds.glob("*.bin"))
    assert len(done) == 2
    with open(done[0], "r+b") as f:
        f.truncate(1500)
    second = FakeHub(hub)
    info = fineweb.download("byte260", 3, root, download_fn=second)
    fetched = {Path(r).name for r in second.calls}
    assert done[0].name in fetched and done[1].name not in fetched
    # exactly the challenge's paths (data/cached_challenge_fineweb.py), and nothing of golf's
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["datasets/fineweb10B_byte260/fineweb_train_000000.bin",
                     "datasets/fineweb10B_byte260/fineweb_train_000001.bin",
                     "datasets/fineweb10B_byte260/fineweb_train_000002.bin",
                     "datasets/fineweb10B_byte260/fineweb_val_000000.bin",
                     "manifest.json", "tokenizers/fineweb_pure_byte_260.json"]
    assert info["data_path"] == str(ds) and info["train_tokens"] == 1000 + 1001 + 1002
    # golf reads it as it is: splits by the challenge's names, the tokenizer from data/tokenizers/
    assert len(shard_files(ds, "train")) == 3 and len(shard_files(ds, "val")) == 1
    assert tokenizer_path(ds) == root / "tokenizers" / "fineweb_pure_byte_260.json"
    tok = load_tokenizer(tokenizer_path(ds))
    assert tok.kind == "byte" and tok.vocab_size == 260
    assert load_split(ds, "val").size == 500
    # Third run: everything present, nothing fetched.
    third = FakeHub(hub)
    fineweb.download("byte260", 3, root, download_fn=third)
    assert third.calls == []


def test_variants_and_default_shard_count():
    assert fineweb.dataset_name("sp8192") == "fineweb10B_sp8192" and fineweb.dataset_name("byte260") == "fineweb10B_byte260"
    with pytest.raises(GolfError, match="unknown variant"):
        fineweb.dataset_name("sp")
    assert fineweb.DEFAULT_TRAIN_SHARDS == 80
    assert fineweb.local_path(Path("data"), "datasets/tokenizers/fineweb_1024_bpe.model") == \
        Path("data/tokenizers/fineweb_1024_bpe.model")


def test_challenge_tokenizer_found_by_published_name_without_manifest(tmp_path):
    ds = tmp_path / "data" / "datasets" / "fineweb10B_sp1024"
    write_shard(ds / "fineweb_train_000000.bin", np.arange(4, 100))
    write_shard(ds / "fineweb_val_000000.bin", np.arange(4, 50))
    with pytest.raises(GolfError, match="TOKENIZER_PATH"):
        tokenizer_path(ds)
    (tmp_path / "data" / "tokenizers").mkdir(parents=True)
    (tmp_path / "data" / "tokenizers" / "fineweb_1024_bpe.model").write_bytes(b"x")
    assert tokenizer_path(ds) == tmp_path / "data" / "tokenizers" / "fineweb_1024_bpe.model"
    assert tokenizer_path(str(ds) + "/") == tmp_path / "data" / "tokenizers" / "fineweb_1024_bpe.model"  # DATA_PATH=.../


def test_caseops_variant_fetches_its_byte_sidecar_and_merges_manifests(tmp_path):
    """sp8192_lossless_caps_caseops_v1_reserved (PR #1729's export) lives in another repo than sp1024/byte260:
    its manifest is merged into data/manifest.json and its val byte sidecar comes along."""
    assert fineweb.repo_for("sp8192_lossless_caps_caseops_v1_reserved") == "romeerp/parameter-golf-caseops-v1" or \
        fineweb.os.environ.get("MATCHED_FINEWEB_REPO_ID")
    assert fineweb.dataset_name("sp8192_lossless_caps_caseops_v1_reserved") == \
        "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
    local = tmp_path / "data"
    fineweb.download("byte260", 1, local, FakeHub(make_fake_hub(tmp_path / "hub")))
    hub2 = tmp_path / "hub2"
    name = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
    ds = hub2 / fineweb.REMOTE_ROOT / "datasets" / name
    write_shard(ds / "fineweb_train_000000.bin", np.arange(4, 200) % 250 + 4)
    write_shard(ds / "fineweb_val_000000.bin", np.r_[1, np.arange(4, 50)])
    write_shard(ds / "fineweb_val_bytes_000000.bin", np.r_[0, np.ones(46, dtype=int)])
    ByteTokenizer().save(hub2 / fineweb.REMOTE_ROOT / "tokenizers" / "caseops.json")
    (hub2 / fineweb.REMOTE_ROOT / "manifest.json").write_text(json.dumps({
        "datasets": [{"name": name, "tokenizer_name": "cz", "val_bytes_glob": "x/fineweb_val_bytes_*.bin",
                      "stats": {"files_train": 1, "files_val": 1}}],
        "tokenizers": [{"name": "cz", "path": "tokenizers/caseops.json"}]}))
    info = fineweb.download("sp8192_lossless_caps_caseops_v1_reserved", 1, local, FakeHub(hub2))
    merged = json.loads((local / "manifest.json").read_text())
    assert {d["name"] for d in merged["datasets"]} == {"fineweb10B_byte260", name}
    assert (Path(info["data_path"]) / "fineweb_val_bytes_000000.bin").is_file()
    from golf.data.folder import load_byte_sidecar

    assert load_byte_sidecar(info["data_path"]).tolist() == [0] + [1] * 46
    assert [f.name for f in shard_files(info["data_path"], "val")] == ["fineweb_val_000000.bin"]
