"""Download the challenge's published FineWeb shards and tokenizer, laid out as the challenge lays them.

    python -m golf.data.fineweb --variant sp1024 [--train-shards 80] [--local-dir data]     (make data-fineweb)

Manifest-driven, as the challenge's data/cached_challenge_fineweb.py, and to the same paths: the
Hugging Face dataset repo `willdepueoai/parameter-golf` holds `datasets/manifest.json` (each dataset's
shard counts in `stats.files_train` / `stats.files_val` and its `tokenizer_name`; each tokenizer's
files in `model_path` / `vocab_path` / `path`); with the remote root dropped, it lands at

    data/manifest.json
    data/datasets/fineweb10B_sp1024/fineweb_{train,val}_NNNNNN.bin     (80 training shards by default)
    data/tokenizers/fineweb_1024_bpe.model, fineweb_1024_bpe.vocab

Nothing else is written: golf reads such a folder as it is (splits by the challenge's exact file
names, the tokenizer from data/tokenizers/ via data/manifest.json; golf/data/folder.py), and so do
the challenge's own scripts. Resumable: a shard already present and complete (header and size
check) is not fetched again, and every file is copied in under a temporary name, so an interrupted
download never leaves a partial file that looks complete.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from golf.core.utils import GolfError, atomic_path, atomic_write_json, main_guard, sweep_stale
from golf.data.folder import split_layout, tokenizer_path
from golf.data.shards import read_header
from golf.data.tokenizer import load_tokenizer

REPO_ID = os.environ.get("MATCHED_FINEWEB_REPO_ID", "willdepueoai/parameter-golf")
# Where each published variant lives when MATCHED_FINEWEB_REPO_ID is not set: the challenge's repo has
# sp1024 and byte260; the SP4096 / SP8192 records download from kevclark/parameter-golf and the CaseOps
# records (PR #1729) from romeerp/parameter-golf-caseops-v1, whose val has a byte sidecar
# (fineweb_val_bytes_*.bin, the manifest entry's val_bytes_glob).
VARIANT_REPOS = {"sp1024": "willdepueoai/parameter-golf", "byte260": "willdepueoai/parameter-golf",
                 "sp4096": "kevclark/parameter-golf", "sp8192": "kevclark/parameter-golf",
                 "sp8192_lossless_caps_caseops_v1_reserved": "romeerp/parameter-golf-caseops-v1"}
REMOTE_ROOT = os.environ.get("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "datasets")
DEFAULT_TRAIN_SHARDS = 80  # the challenge downloader's default: 8B training tokens


def dataset_name(variant: str) -> str:
    """byte260 -> fineweb10B_byte260; sp<N> -> fineweb10B_sp<N> (which exist: the manifest says)."""
    if variant == "byte260" or re.fullmatch(r"sp\d+(_[a-z0-9_]+)?", variant or ""):
        return f"fineweb10B_{variant}"
    raise GolfError(f"unknown variant {variant!r}; use byte260 or sp<VOCAB_SIZE>[_suffix] ({', '.join(VARIANT_REPOS)})")


def repo_for(variant: str) -> str:
    """The Hugging Face dataset repo a variant is fetched from (MATCHED_FINEWEB_REPO_ID overrides)."""
    return os.environ.get("MATCHED_FINEWEB_REPO_ID") or VARIANT_REPOS.get(variant, REPO_ID)


def local_path(root: Path, remote: str) -> Path:
    """Where the challenge's downloader puts a remote file: the remote root prefix dropped, the rest
    under data/ (datasets/manifest.json -> data/manifest.json, datasets/datasets/X -> data/datasets/X)."""
    parts = Path(remote).parts
    if REMOTE_ROOT and parts[:1] == (REMOTE_ROOT,):
        parts = parts[1:]
    return Path(root).joinpath(*parts)


Downloader = Callable[[str], Path]  # remote path (relative to the repo) -> a local file holding it


def hub_download(remote_path: str, repo_id: str = REPO_ID) -> Path:
    """Fetch one file of the dataset repo through huggingface_hub's cache (which resumes partial blobs)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise GolfError("huggingface_hub is needed for `make data-fineweb`; `pip install huggingface_hub`") from None
    remote = Path(remote_path)
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=remote.name, repo_type="dataset",
                                    subfolder=remote.parent.as_posix() if remote.parent != Path(".") else None))
    except Exception as e:
        raise GolfError(f"could not download {remote_path} from the Hugging Face dataset {repo_id} "
                        f"({type(e).__name__}: {e}); check your network / HF_TOKEN, then run the same command "
                        f"again: finished files are kept") from None


def plan_download(manifest: dict, variant: str, train_shards: int) -> dict:
    """Which remote files a variant needs, from the challenge manifest."""
    name = dataset_name(variant)
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
        # a CaseOps export's per-token original bytes, one file per val shard (golf.data.folder.byte_sidecar_files)
        "val_bytes": [f"{prefix}/fineweb_val_bytes_{i:06d}.bin" for i in range(n_val)] if entry.get("val_bytes_glob") else [],
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


def download(variant: str = "sp1024", train_shards: int = DEFAULT_TRAIN_SHARDS,
             local_dir: str | os.PathLike | None = None, download_fn: Downloader | None = None) -> dict:
    """Fetch the manifest, every val shard, `train_shards` train shards and the tokenizer into the
    challenge's layout under `local_dir` (default ./data). Returns what DATA_PATH / TOKENIZER_PATH are."""
    root = Path(local_dir) if local_dir else Path("data")
    for folder in (root, root / "tokenizers", root / "datasets" / dataset_name(variant)):
        sweep_stale(folder)  # partial files of an earlier interrupted download
    if download_fn is None:
        import functools

        download_fn = functools.partial(hub_download, repo_id=repo_for(variant))
    manifest_file = local_path(root, f"{REMOTE_ROOT}/manifest.json")
    _fetch(f"{REMOTE_ROOT}/manifest.json", manifest_file, download_fn)
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        manifest_file.unlink()
        raise GolfError(f"{manifest_file} was not valid JSON ({e}); removed it, run again") from None
    if not any(d.get("name") == dataset_name(variant) for d in manifest.get("datasets", [])):
        # the variant lives in another repo than the one data/manifest.json came from: merge that repo's
        # manifest in (by name), so every variant downloaded so far keeps its entry (and its tokenizer)
        remote = json.loads(Path(download_fn(f"{REMOTE_ROOT}/manifest.json")).read_text(encoding="utf-8"))
        for key in ("datasets", "tokenizers"):
            new = {e.get("name"): e for e in remote.get(key, [])}
            manifest[key] = [e for e in manifest.get(key, []) if e.get("name") not in new] + list(new.values())
        atomic_write_json(manifest_file, manifest)
    plan = plan_download(manifest, variant, train_shards)
    fetched = 0
    for remote in plan["val"] + plan["val_bytes"] + plan["train"] + plan["tokenizer_files"]:
        got = _fetch(remote, local_path(root, remote), download_fn)
        fetched += got
        print(f"{'fetched' if got else 'have   '} {local_path(root, remote)}", flush=True)
    data_path = local_path(root, plan["val"][0]).parent if plan["val"] else root / "datasets" / dataset_name(variant)
    layout = split_layout(data_path)  # the names golf and the challenge read, disjoint
    tok_file = tokenizer_path(data_path)
    tok = load_tokenizer(tok_file)
    info = {"data_path": str(data_path), "tokenizer_path": str(tok_file), "vocab_size": tok.vocab_size,
            "train_tokens": sum(read_header(f) for f in layout["train"]),
            "val_tokens": sum(read_header(f) for f in layout["val"])}
    print(f"{data_path}: {len(layout['train'])} train + {len(layout['val'])} val shards ({info['train_tokens']:,} + "
          f"{info['val_tokens']:,} tokens), tokenizer {tok_file} (vocab {tok.vocab_size}); {fetched} file(s) fetched. "
          f"Train on it with DATA_PATH={data_path} VOCAB_SIZE={tok.vocab_size}", flush=True)
    return info


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m golf.data.fineweb", description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="sp1024", help=f"byte260 or sp<VOCAB_SIZE>[_suffix]: {', '.join(VARIANT_REPOS)}")
    p.add_argument("--train-shards", type=int, default=DEFAULT_TRAIN_SHARDS)
    p.add_argument("--local-dir", default="", help="default ./data (the challenge's data/ folder)")
    args = p.parse_args(argv)
    download(args.variant, args.train_shards, args.local_dir or None)


if __name__ == "__main__":
    main()
