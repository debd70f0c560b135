"""Download the challenge's published FineWeb shards and tokenizer into a golf data folder.

    python -m golf.data.fineweb --variant sp1024 --train-shards 10 [--local-dir DIR]     (make data-fineweb)

Manifest-driven, as the challenge's data/cached_challenge_fineweb.py: the Hugging Face dataset repo
`willdepueoai/parameter-golf` holds `datasets/manifest.json`, which lists each dataset (shard
counts in `stats.files_train` / `stats.files_val`, its `tokenizer_name`) and each tokenizer (its
files in `model_path` / `vocab_path` / `path`); shards live under
`datasets/datasets/<dataset>/fineweb_{train,val}_NNNNNN.bin`.

The result is an ordinary golf data folder (manifest.json, tokenizer.model|json, shards), so
DATA_PATH=data/datasets/fineweb10B_sp1024 works for training and eval. Resumable: a shard already
present and complete (header and size check) is not fetched again, and every file is copied in
under a temporary name, so an interrupted download never leaves a partial file that looks complete.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from golf.core.utils import GolfError, atomic_path, atomic_write_json, main_guard, sha256_file
from golf.data.shards import read_header
from golf.data.tokenizer import load_tokenizer

REPO_ID = os.environ.get("MATCHED_FINEWEB_REPO_ID", "willdepueoai/parameter-golf")
REMOTE_ROOT = os.environ.get("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "datasets")
VARIANTS = {
    "byte260": "fineweb10B_byte260",
    "sp512": "fineweb10B_sp512",
    "sp1024": "fineweb10B_sp1024",
    "sp2048": "fineweb10B_sp2048",
    "sp4096": "fineweb10B_sp4096",
    "sp8192": "fineweb10B_sp8192",
}

Downloader = Callable[[str], Path]  # remote path (relative to the repo) -> a local file holding it


def hub_download(remote_path: str) -> Path:
    """Fetch one file of the dataset repo through huggingface_hub's cache (which resumes partial blobs)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise GolfError("huggingface_hub is needed for `make data-fineweb`; `pip install huggingface_hub`") from None
    remote = Path(remote_path)
    try:
        return Path(hf_hub_download(repo_id=REPO_ID, filename=remote.name, repo_type="dataset",
                                    subfolder=remote.parent.as_posix() if remote.parent != Path(".") else None))
    except Exception as e:
        raise GolfError(f"could not download {remote_path} from the Hugging Face dataset {REPO_ID} "
                        f"({type(e).__name__}: {e}); check your network / HF_TOKEN, then run the same command "
                        f"again: finished files are kept") from None


def plan_download(manifest: dict, variant: str, train_shards: int) -> dict:
    """Which remote files a variant needs, from the challenge manifest."""
    if variant not in VARIANTS:
        raise GolfError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    name = VARIANTS[variant]
    entry = next((d for d in manifest.get("datasets", []) if d.get("name") == name), None)
    if entry is None:
        have = [d.get("name") for d in manifest.get("datasets", [])]
        raise GolfError(f"dataset {name} is not in the challenge manifest ({REMOTE_ROOT}/manifest.json lists {have}); "
                        f"pick another --variant")
    stats = entry.get("stats") or {}
    try:
        max_train, n_val = int(stats["files_train"]), int(stats["files_val"])
    except (KeyError, TypeError, ValueError):
        raise GolfError(f"challenge manifest entry for {name} lacks stats.files_train/files_val") from None
    if train_shards < 0 or train_shards > max_train:
        raise GolfError(f"--train-shards {train_shards}: {variant} has {max_train} training shards; choose 0..{max_train}")
    tok_name = entry.get("tokenizer_name")
    tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == tok_name), None)
    if tok is None:
        raise GolfError(f"tokenizer {tok_name!r} of {name} is not in the challenge manifest")
    artifacts = [str(tok[k]) for k in ("model_path", "vocab_path", "path") if tok.get(k)]
    if not artifacts:
        raise GolfError(f"tokenizer {tok_name!r} in the challenge manifest names no files")
    prefix = f"{REMOTE_ROOT}/datasets/{name}"
    return {
        "dataset": entry,
        "tokenizer": tok,
        "val": [f"{prefix}/fineweb_val_{i:06d}.bin" for i in range(n_val)],
        "train": [f"{prefix}/fineweb_train_{i:06d}.bin" for i in range(train_shards)],
        "tokenizer_files": [f"{REMOTE_ROOT}/{a}" for a in artifacts],
    }


def _fetch(remote: str, dest: Path, download: Downloader) -> bool:
    """Copy `remote` to `dest` unless a complete copy is there; True if it was fetched."""
    if dest.is_file():
        if dest.suffix != ".bin":
            return False
        try:
            read_header(dest)
            return False
        except GolfError:
            print(f"{dest} is incomplete or corrupt; fetching it again", flush=True)
    src = download(remote)
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    if dest.suffix == ".bin":
        read_header(dest)  # a bad download is an error now, not at training time
    return True


def download(variant: str = "sp1024", train_shards: int = 1, local_dir: str | os.PathLike | None = None,
             download_fn: Downloader = hub_download) -> dict:
    """Fetch manifest, val shards, `train_shards` train shards and the tokenizer; write a golf manifest."""

    out = Path(local_dir) if local_dir else Path("data") / "datasets" / VARIANTS.get(variant, variant)
    out.mkdir(parents=True, exist_ok=True)
    challenge_manifest = out / "challenge_manifest.json"
    _fetch(f"{REMOTE_ROOT}/manifest.json", challenge_manifest, download_fn)
    try:
        manifest = json.loads(challenge_manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        challenge_manifest.unlink()
        raise GolfError(f"{challenge_manifest} was not valid JSON ({e}); removed it, run again") from None
    plan = plan_download(manifest, variant, train_shards)
    fetched = 0
    for remote in plan["val"] + plan["train"] + plan["tokenizer_files"]:
        got = _fetch(remote, out / Path(remote).name, download_fn)
        fetched += got
        print(f"{'fetched' if got else 'have   '} {Path(remote).name}", flush=True)

    # Our contract names the tokenizer tokenizer.model / tokenizer.json.
    model_file = next(Path(r).name for r in plan["tokenizer_files"] if r.endswith((".model", ".json")))
    contract = "tokenizer.model" if model_file.endswith(".model") else "tokenizer.json"
    with atomic_path(out / contract) as tmp:
        shutil.copyfile(out / model_file, tmp)
    tok = load_tokenizer(out / contract)

    def split_info(remotes):
        files = [{"name": Path(r).name, "tokens": read_header(out / Path(r).name),
                  "sha256": sha256_file(out / Path(r).name)} for r in remotes]
        return {"files": files, "tokens": sum(f["tokens"] for f in files), "docs": None, "text_bytes": None}

    golf_manifest = {
        "format": "golf-data-2",
        "name": "fineweb",
        "tokenizer": {"kind": tok.kind, "file": contract, "sha256": sha256_file(out / contract),
                      "vocab_size": tok.vocab_size, "bos_id": tok.bos_id},
        "source": {"repo_id": REPO_ID, "remote_root": REMOTE_ROOT, "variant": variant,
                   "dataset": plan["dataset"].get("name"), "challenge_manifest": challenge_manifest.name},
        "splits": {"train": split_info(plan["train"]), "val": split_info(plan["val"])},
    }
    atomic_write_json(out / "manifest.json", golf_manifest)
    print(f"{out}: {len(plan['train'])} train + {len(plan['val'])} val shards "
          f"({golf_manifest['splits']['train']['tokens']:,} + {golf_manifest['splits']['val']['tokens']:,} tokens), "
          f"{fetched} file(s) fetched", flush=True)
    return golf_manifest


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m golf.data.fineweb", description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="sp1024", choices=sorted(VARIANTS))
    p.add_argument("--train-shards", type=int, default=1)
    p.add_argument("--local-dir", default="", help="default data/datasets/fineweb10B_<variant>")
    args = p.parse_args(argv)
    download(args.variant, args.train_shards, args.local_dir or None)


if __name__ == "__main__":
    main()
