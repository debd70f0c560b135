"""Data folders: which shard files are which split, and the folder's tokenizer.

A data folder (what `make data` writes, what training/eval read):
    manifest.json                 sources + hashes, tokenizer {kind, file, sha256, vocab_size}, and per
                                  split its shard files, each with its token count and sha256
    tokenizer.model | tokenizer.json
    fineweb_train_000000.bin ...  fineweb_val_000000.bin ...

A split is the manifest's list of files, never a filename pattern: `<corpus>_train_*.bin` once
matched `wiki_train_00_val_000000.bin` and trained on the validation text (golf issue 13). Shards get
the challenge's fixed names whatever the corpus is called, so no corpus name can make two splits
collide and the challenge's own scripts read a golf folder as it is. A folder without golf's
manifest (the challenge's download) is read by exactly those names.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from golf.core.utils import GolfError, main_guard, sha256_file
from golf.data.caseops import IDENTITY, NAME
from golf.data.shards import read_header, read_shard
from golf.data.tokenizer import load_tokenizer

SPLITS = ("train", "val")


def read_manifest(data_path: str | os.PathLike) -> dict:
    path = Path(data_path) / "manifest.json"
    if not path.is_file():
        raise GolfError(f"{path} not found: {data_path} is not a prepared data folder; run `make data` "
                        f"(or `make data-fineweb`) or set DATA_PATH to one")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GolfError(f"{path} is not valid JSON ({e}); re-create the folder with `make data`") from None
    if not isinstance(manifest.get("tokenizer"), dict):
        raise GolfError(f"{path} has no 'tokenizer' entry; re-create the folder with `make data`")
    return manifest


def shard_name(split: str, index: int) -> str:
    """A shard's file name: the challenge's (`fineweb_train_000000.bin`), whatever the corpus."""
    return f"fineweb_{split}_{index:06d}.bin"


def _manifest_split(data_path: Path, manifest: dict, split: str) -> list[Path]:
    """A split's files as the manifest lists them, each checked against its header's token count."""
    mpath = data_path / "manifest.json"
    fix = "re-create the folder with `make data` (or `make data-fineweb`)"
    entry = (manifest.get("splits") or {}).get(split)
    if entry is None or (isinstance(entry, dict) and not entry.get("files") and not entry.get("tokens")):
        return []  # the folder has no such split (an eval-only folder has no train split)
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), list) or not entry["files"]:
        raise GolfError(f"{mpath}: splits.{split} lists no shard files; {fix}")
    files, total = [], 0
    for item in entry["files"]:
        # golf-data-1 listed bare names; golf-data-2 lists {name, tokens, sha256}
        name, want = (item, None) if isinstance(item, str) else (item.get("name"), item.get("tokens"))
        if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
            raise GolfError(f"{mpath}: {split} shard entry {item!r} is not a plain file name in the folder; {fix}")
        path = data_path / name
        n = read_header(path)
        if want is not None and n != int(want):
            raise GolfError(f"{path} holds {n:,} tokens but {mpath} says {int(want):,}: the folder changed after it "
                            f"was written; {fix}")
        files.append(path)
        total += n
    if entry.get("tokens") is not None and total != int(entry["tokens"]):
        raise GolfError(f"the {split} shards of {data_path} hold {total:,} tokens but {mpath} says "
                        f"{int(entry['tokens']):,}; {fix}")
    return files


def split_layout(data_path: str | os.PathLike) -> dict[str, list[Path]]:
    """Both splits' shard files, checked before any work: taken from golf's manifest (else the
    challenge's names `fineweb_{train,val}_*.bin`), token counts equal to the manifest's, and no file
    in both splits (compared by inode too, so links cannot smuggle one in)."""
    data_path = Path(data_path)
    if not data_path.is_dir():
        raise GolfError(f"data folder {data_path} not found; run `make data` or set DATA_PATH to a prepared folder")
    if (data_path / "manifest.json").is_file():
        manifest = read_manifest(data_path)
        layout = {s: _manifest_split(data_path, manifest, s) for s in SPLITS}
    else:
        # exactly the challenge's numbered names: `fineweb_train_val_000000.bin` belongs to no split
        layout = {s: sorted(f for f in data_path.glob(f"fineweb_{s}_*.bin") if re.fullmatch(rf"fineweb_{s}_\d+\.bin", f.name))
                  for s in SPLITS}
        for f in layout["train"] + layout["val"]:
            read_header(f)
    seen = {}
    for s in SPLITS:
        for f in layout[s]:
            st = f.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen and seen[key][0] != s:
                raise GolfError(f"{data_path}: {f.name} ({s}) is the same file as {seen[key][1].name} "
                                f"({seen[key][0]}): the train and val splits must not share shards; re-create the "
                                f"folder with `make data`")
            seen[key] = (s, f)
    return layout


def shard_files(data_path: str | os.PathLike, split: str) -> list[Path]:
    """One split's shard files (see split_layout: the manifest's list, checked)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = split_layout(data_path)[split]
    if not files:
        where = ("its manifest.json lists none" if (Path(data_path) / "manifest.json").is_file()
                 else f"it has no manifest.json and no fineweb_{split}_NNNNNN.bin (the challenge's names)")
        raise GolfError(f"no {split} shards in {data_path}: {where}; run `make data` or set DATA_PATH to a "
                        f"prepared data folder")
    return files


def split_tokens(data_path: str | os.PathLike, split: str) -> int:
    return sum(read_header(f) for f in shard_files(data_path, split))


def check_data_folder(data_path: str | os.PathLike) -> dict:
    """split_layout plus every shard's sha256 against the manifest (reads every byte)."""
    data_path = Path(data_path)
    layout = split_layout(data_path)
    manifest = read_manifest(data_path) if (data_path / "manifest.json").is_file() else {}
    for s in SPLITS:
        for item in (manifest.get("splits", {}).get(s, {}).get("files") or []):
            if isinstance(item, dict) and item.get("sha256"):
                have = sha256_file(data_path / item["name"])
                if have != item["sha256"]:
                    raise GolfError(f"{data_path / item['name']}: sha256 {have[:12]}… but the manifest says "
                                    f"{item['sha256'][:12]}…; re-create the folder with `make data`")
    return {s: {"files": [f.name for f in layout[s]], "tokens": sum(read_header(f) for f in layout[s])}
            for s in SPLITS if layout[s]}


def describe_folder(data_path: str | os.PathLike, tokenizer: str | os.PathLike = "") -> dict:
    """golf's manifest of a folder, or for a folder without one (the challenge's download) the same
    shape built from what is there: each split's files with their token counts, and the tokenizer
    file's sha256. Shards are not hashed (8 GB of training shards): names and counts pin the split."""
    data_path = Path(data_path)
    if (data_path / "manifest.json").is_file():
        return read_manifest(data_path)
    layout = split_layout(data_path)
    tok_file = Path(tokenizer) if tokenizer else tokenizer_path(data_path)
    splits = {}
    for s in SPLITS:
        files = [{"name": f.name, "tokens": read_header(f)} for f in layout[s]]
        splits[s] = {"files": files, "tokens": sum(f["tokens"] for f in files)}
    return {"format": "challenge-layout", "name": data_path.name,
            "tokenizer": {"file": str(tok_file), "sha256": sha256_file(tok_file),
                          "vocab_size": load_tokenizer(tok_file).vocab_size},
            "splits": splits}


def manifest_vocab_size(data_path: str | os.PathLike) -> int | None:
    try:
        return int(read_manifest(data_path)["tokenizer"]["vocab_size"])
    except (GolfError, KeyError, TypeError, ValueError):
        return None


def load_split(data_path: str | os.PathLike, split: str, vocab_size: int | None = None,
               max_tokens: int = 0) -> np.ndarray:
    """All tokens of a split (shards in order), validated; max_tokens > 0 keeps only a prefix.

    With vocab_size None the manifest's vocab size (if any) is checked."""
    if vocab_size is None:
        vocab_size = manifest_vocab_size(data_path)
    parts, total = [], 0
    for f in shard_files(data_path, split):
        toks = read_shard(f, vocab_size)
        if max_tokens and total + toks.size > max_tokens:
            toks = toks[: max_tokens - total]
        parts.append(toks)
        total += toks.size
        if max_tokens and total >= max_tokens:
            break
    if len(parts) == 1 and not max_tokens:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def sidecar_name(index: int) -> str:
    """A val shard's byte sidecar (the CaseOps record's layout, PR #1729): fineweb_val_bytes_NNNNNN.bin,
    the shard format with one uint16 per token of fineweb_val_NNNNNN.bin: the original-text UTF-8
    bytes that token accounts for (BOS 0)."""
    return f"fineweb_val_bytes_{index:06d}.bin"


def text_transform(data_path: str | os.PathLike, tokenizer=None) -> str:
    """The folder's text transform: its manifest's `text_transform`, else "lossless_caps_caseops_v1"
    when the tokenizer reserves CaseOps' operators (a challenge-layout CaseOps download), else identity."""
    if (Path(data_path) / "manifest.json").is_file():
        name = read_manifest(data_path).get("text_transform")
        if name:
            return str(name)
    return NAME if getattr(tokenizer, "is_caseops", False) else IDENTITY


def byte_sidecar_files(data_path: str | os.PathLike) -> list[Path]:
    """The val split's byte sidecar files, one per val shard in order ([] if the folder has none);
    each checked to hold exactly as many entries as its shard has tokens."""
    data_path = Path(data_path)
    val = split_layout(data_path)["val"]
    entry = {}
    if (data_path / "manifest.json").is_file():
        entry = ((read_manifest(data_path).get("splits") or {}).get("val") or {}).get("byte_sidecar") or {}
    if entry:
        names = [f["name"] if isinstance(f, dict) else f for f in entry.get("files") or []]
    else:
        # the challenge layout (a CaseOps download): fineweb_val_bytes_NNNNNN.bin beside fineweb_val_NNNNNN.bin
        names = [sidecar_name(int(re.fullmatch(r"fineweb_val_(\d+)\.bin", f.name).group(1))) for f in val
                 if re.fullmatch(r"fineweb_val_(\d+)\.bin", f.name)]
        if not any((data_path / n).is_file() for n in names):
            return []
    if len(names) != len(val):
        raise GolfError(f"{data_path}: {len(names)} byte sidecar file(s) for {len(val)} val shard(s); re-create the "
                        f"folder with `make data CASEOPS=1`")
    files = []
    for name, shard in zip(names, val):
        if not isinstance(name, str) or Path(name).name != name:
            raise GolfError(f"{data_path / 'manifest.json'}: byte sidecar entry {name!r} is not a plain file name")
        path = data_path / name
        if not path.is_file():
            raise GolfError(f"{path} not found: the byte sidecar of {shard.name} is missing; re-create the folder "
                            f"with `make data CASEOPS=1` (or download it again with `make data-fineweb`)")
        if read_header(path) != read_header(shard):
            raise GolfError(f"{path} holds {read_header(path):,} entries but {shard.name} {read_header(shard):,} "
                            f"tokens: the sidecar is not this split's; re-create the folder with `make data CASEOPS=1`")
        files.append(path)
    return files


def load_byte_sidecar(data_path: str | os.PathLike, tokenizer=None, max_tokens: int = 0) -> np.ndarray | None:
    """The val split's per-token original bytes (int32, aligned with load_split(data_path, "val")),
    or None when the folder has no sidecar and BPB counts bytes with the tokenizer's LUTs. A CaseOps
    folder without its sidecar is refused: its LUT bytes would count the transformed text."""
    files = byte_sidecar_files(data_path)
    if not files:
        transform = text_transform(data_path, tokenizer)
        if transform != IDENTITY:
            raise GolfError(
                f"{Path(data_path) / sidecar_name(0)} not found: {data_path} holds {transform} text, whose BPB must "
                f"count the original bytes from the val byte sidecar (fineweb_val_bytes_*.bin), not the tokenizer's "
                f"LUTs; re-create the folder with `make data CASEOPS=1` or download the variant again with "
                f"`make data-fineweb` (it fetches the sidecar)")
        return None
    parts, total = [], 0
    for f in files:
        part = read_shard(f)
        if max_tokens and total + part.size > max_tokens:
            part = part[: max_tokens - total]
        parts.append(np.asarray(part, dtype=np.int32))
        total += part.size
        if max_tokens and total >= max_tokens:
            break
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def challenge_tokenizer_path(data_path: str | os.PathLike) -> Path | None:
    """Where the challenge's download keeps a dataset's tokenizer: data/datasets/fineweb10B_sp1024 ->
    data/tokenizers/fineweb_1024_bpe.model, as named by data/manifest.json (its dataset entry's
    tokenizer_name, that tokenizer's model_path), else by the published file name. None if absent."""
    folder = Path(os.path.abspath(data_path))
    root = folder.parent.parent  # data/
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        entry = next(d for d in manifest.get("datasets", []) if d.get("name") == folder.name)
        tok = next(t for t in manifest.get("tokenizers", []) if t.get("name") == entry.get("tokenizer_name"))
        for key in ("model_path", "path"):
            if tok.get(key) and (root / str(tok[key])).is_file():
                return root / str(tok[key])
    except (OSError, ValueError, StopIteration, AttributeError, TypeError):
        pass
    m = re.fullmatch(r"fineweb10B_sp(\d+)(_[a-z0-9_]+)?", folder.name)  # sp8192_lossless_caps_caseops_v1_reserved
    name = f"fineweb_{m.group(1)}_bpe{m.group(2) or ''}.model" if m else ""
    if m and (root / "tokenizers" / name).is_file():
        return root / "tokenizers" / name
    return None


def tokenizer_path(data_path: str | os.PathLike) -> Path:
    """The data folder's tokenizer file: from golf's manifest; else tokenizer.model / tokenizer.json
    in the folder; else the challenge layout's data/tokenizers/ (see challenge_tokenizer_path)."""
    data_path = Path(data_path)
    mpath = data_path / "manifest.json"
    if mpath.is_file():
        name = read_manifest(data_path)["tokenizer"].get("file")
        if name:
            p = data_path / name
            if not p.is_file():
                raise GolfError(f"{mpath} names tokenizer {name} but {p} is missing; re-create the folder "
                                f"with `make data`")
            return p
    for name in ("tokenizer.model", "tokenizer.json"):
        if (data_path / name).is_file():
            return data_path / name
    found = challenge_tokenizer_path(data_path)
    if found is not None:
        return found
    raise GolfError(f"no tokenizer for {data_path}: no tokenizer.model / tokenizer.json in it and none in the "
                    f"challenge's data/tokenizers/ beside it; set TOKENIZER_PATH (e.g. "
                    f"./data/tokenizers/fineweb_1024_bpe.model) or run `make data` / `make data-fineweb`")


def check_tokenizer_matches(data_path: str | os.PathLike, tokenizer) -> None:
    """Raise if `tokenizer` is not the one the folder's shards were made with (by SHA-256)."""
    manifest = read_manifest(data_path)
    want = manifest["tokenizer"].get("sha256")
    if want and tokenizer.sha256 != want:
        raise GolfError(
            f"tokenizer (sha256 {tokenizer.sha256[:12]}…, vocab {tokenizer.vocab_size}) does not match the one "
            f"the shards in {data_path} were made with (sha256 {want[:12]}…, vocab "
            f"{manifest['tokenizer'].get('vocab_size')}, see {Path(data_path) / 'manifest.json'}); use "
            f"{tokenizer_path(data_path)} (leave TOKENIZER_PATH empty) or re-create the shards with `make data`")
    vs = manifest["tokenizer"].get("vocab_size")
    if vs is not None and int(vs) != tokenizer.vocab_size:
        raise GolfError(f"tokenizer vocab {tokenizer.vocab_size} != {vs} in {Path(data_path) / 'manifest.json'}; "
                        f"use the folder's own tokenizer or re-create the shards with `make data`")


def load_data_tokenizer(data_path: str | os.PathLike, path: str | os.PathLike | None = None):
    """The tokenizer for a data folder (its own, or `path`), checked against the manifest."""
    tok = load_tokenizer(path or tokenizer_path(data_path))
    if (Path(data_path) / "manifest.json").is_file():
        check_tokenizer_matches(data_path, tok)
    return tok


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m golf.data.folder", description=__doc__.split("\n")[0])
    p.add_argument("cmd", choices=["check", "info"],
                   help="check: disjoint splits, token counts, every shard's sha256; info: the manifest's summary")
    p.add_argument("data_path")
    args = p.parse_args(argv)

    @main_guard
    def run():
        if args.cmd == "check":
            json.dump(check_data_folder(args.data_path), sys.stdout, indent=2)
            print(f"\n{args.data_path}: OK")
        else:
            m = read_manifest(args.data_path)
            json.dump({k: m.get(k) for k in ("name", "tokenizer", "splits")}, sys.stdout, indent=2)
            print()

    run()


if __name__ == "__main__":
    main()
