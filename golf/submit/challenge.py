"""`make submission RECORD=records/<track>/<record>`: the challenge's pull-request folder, from a golf record.

    <OUT>/records/track_10min_16mb/<date>_<name>/      (OUT defaults to dist/parameter-golf)
        README.md          what was run, the per-seed table, how to run it, where it came from
        submission.json    the challenge's fields (seed_results keyed by seed, artifact_bytes, steps,
                           step_avg_ms, eval_time_s, pytorch_version, technique_summary, ...) and golf's
                           provenance under "golf"
        train_gpt.py       the single-file bundle of the record's commit with its recipe baked in as the
                           defaults: alone in the folder, run as the challenge runs it, it trains, exports,
                           round-trips and prints the record's lines (golf/compress/bundle.py)
        requirements.txt   what that file imports
        train_seed<N>.log  each seed's log as the script printed it

Nothing is re-run: the numbers are the record's. The code is the record's commit (checked out in a
temporary folder when HEAD differs), so the file is the one whose bytes the runs counted; if the size
differs (a record counted before the recipe was baked in), the folder reports the shipped size.
A record on golf's own challenge track goes to the challenge's `track_10min_16mb`; anything else
(other hardware, other data) is a `track_non_record_16mb` entry.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterator

from golf.compress.bundle import bundle_bytes, record_config
from golf.core.config import BYTES_CAP
from golf.core.utils import (GolfError, atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text, repo_root,
                             sweep_stale)
from golf.submit import records as R
from golf.submit import stats

DEFAULT_OUT = "dist/parameter-golf"  # laid out as the challenge repository: copy its records/ into a fork
RECORD_TRACK, NON_RECORD_TRACK = "track_10min_16mb", "track_non_record_16mb"
# lines the challenge's reviewers read in a log; the score's line is named by its evaluation strategy.
# A record whose logs lack them predates the one-process script.
REQUIRED_LINES = ("Total submission size", "final_int_zstd_roundtrip_exact",
                  ("final_sliding_window_exact", "final_score_first_sgd_exact", "final_ttt_lora_exact",
                   "final_ttt_phased_exact"))
REQUIREMENTS = ("numpy", "sentencepiece", "zstandard")
_VERSIONS = re.compile(r"^versions:(\{.*\})$", re.M)


@contextlib.contextmanager
def code_at(commit: str) -> Iterator[Path]:
    """A source tree of golf at `commit`: this checkout when its golf/ and train_gpt.py are that
    commit's, else a `git archive` of it in a temporary folder."""
    root = repo_root()

    def git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=60, check=check)

    if git("cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
        raise GolfError(f"the record's commit {commit} is not in this repository; fetch it (git fetch) and run again")
    same = git("diff", "--quiet", commit, "--", "golf", "train_gpt.py", check=False).returncode == 0
    untracked = git("ls-files", "--others", "--exclude-standard", "--", "golf").stdout.strip()
    if same and not untracked:
        yield root
        return
    with tempfile.TemporaryDirectory(prefix="golf-at-") as tmp:
        archive = Path(tmp) / "code.tar"
        with open(archive, "wb") as f:
            subprocess.run(["git", "archive", commit, "golf", "train_gpt.py"], cwd=root, stdout=f, check=True, timeout=120)
        with tarfile.open(archive) as t:
            t.extractall(Path(tmp) / "src", filter="data")
        yield Path(tmp) / "src"


def _pytorch_version(log: Path) -> str:
    m = _VERSIONS.search(log.read_text(encoding="utf-8", errors="replace"))
    try:
        return str(json.loads(m.group(1)).get("torch", "")) if m else ""
    except ValueError:
        return ""


def missing_lines(log_text: str) -> list[str]:
    """The REQUIRED_LINES a seed's log lacks (each by its first alternative)."""
    return [alts[0] for alts in (r if isinstance(r, tuple) else (r,) for r in REQUIRED_LINES)
            if not any(a in log_text for a in alts)]


def check_record(folder: Path) -> dict[str, Any]:
    """The record's submission.json, refused (with every reason) unless it is valid, pinned to a
    clean commit, and its logs hold the lines the challenge reads."""
    sub, problems = R.validate_record(folder)
    if sub is None or problems:
        raise GolfError(f"{folder} is not a valid record: {'; '.join(problems)}")
    problems += R.data_leak_problems(folder.parent.parent, folder, sub.get("data"))
    commit = str(sub.get("commit") or "")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        problems.append(f"its commit {commit!r} does not pin the code (a tree with uncommitted changes); "
                        f"commit, then re-create the record")
    for s in sub["seeds"]:
        text = (folder / f"train_seed{s}.log").read_text(encoding="utf-8", errors="replace")
        missing = missing_lines(text)
        if missing:
            problems.append(f"train_seed{s}.log has no {', '.join(repr(m) for m in missing)} line: the record predates "
                            f"the one-process train_gpt.py (golf issue 14); re-run it with `make train-and-submit`")
    if problems:
        raise GolfError(f"{folder} cannot be submitted: {'; '.join(problems)}")
    return sub


def seed_entry(r: dict[str, Any], code_bytes: int) -> dict[str, Any]:
    """One seed in the challenge's shape (and the pre-quantisation figure where it was measured on
    the same tokens as the round trip)."""
    steps = r.get("steps")
    train_s = r.get("train_seconds")
    out = {
        "val_loss": r["val_loss"], "val_bpb": r["val_bpb"],
        "artifact_bytes": int(r.get("bytes_model") or (r["bytes_total"] - int(r.get("bytes_code") or 0))) + code_bytes,
        "steps": steps,
        "step_avg_ms": round(1000.0 * train_s / steps, 2) if steps and train_s else None,
        "eval_time_s": round(float(r["eval_seconds"]), 1) if r.get("eval_seconds") is not None else None,
    }
    if r.get("val_loss_prequant") is not None:
        out.update(pre_quant_val_loss=r["val_loss_prequant"], pre_quant_val_bpb=r["val_bpb_prequant"])
    return out


def challenge_submission(sub: dict[str, Any], record: Path, code_bytes: int, github_id: str, author: str,
                         track: str, pytorch: str) -> dict[str, Any]:
    seeds = [int(s) for s in sub["seeds"]]
    by_seed = {int(r["seed"]): r for r in sub["seed_results"]}
    results = {str(s): seed_entry(by_seed[s], code_bytes) for s in seeds}
    rows = list(results.values())
    art = [r["artifact_bytes"] for r in rows]
    steps = [r["steps"] for r in rows if r["steps"]]
    step_ms = [r["step_avg_ms"] for r in rows if r["step_avg_ms"]]
    out: dict[str, Any] = {
        "author": author, "github_id": github_id, "name": sub["name"], "blurb": sub.get("blurb", ""),
        "date": sub["date"], "track": track.removeprefix("track_"),
        "val_loss": sub["val_loss"], "val_bpb": sub["val_bpb"],
        "val_loss_std": sub.get("val_loss_std"), "val_bpb_std": sub.get("val_bpb_std"),
        "seeds": seeds, "seed_results": results,
    }
    if all("pre_quant_val_bpb" in r for r in rows):
        out["pre_quant_val_loss"] = stats.mean([r["pre_quant_val_loss"] for r in rows])
        out["pre_quant_val_bpb"] = stats.mean([r["pre_quant_val_bpb"] for r in rows])
    out.update({
        "bytes_total": max(art), "bytes_code": code_bytes,
        "artifact_bytes_mean": round(stats.mean(art)), "artifact_bytes_max": max(art),
        "train_steps_mean": round(stats.mean(steps), 2) if steps else None,
        "step_avg_ms_mean": round(stats.mean(step_ms), 2) if step_ms else None,
        "hardware": sub.get("hardware"), "pytorch_version": pytorch,
        "technique_summary": "; ".join(R.techniques(sub["config"])),
        "golf": {"record": str(record), "commit": sub["commit"], "config": sub["config"], "data": sub.get("data"),
                 "bytes_code_recorded": sub.get("bytes_code"),
                 "val_bpb_roundtrip_nonsliding": [by_seed[s].get("val_bpb_roundtrip_nonsliding") for s in seeds]},
    })
    return out


def render_readme(ch: dict[str, Any], sub: dict[str, Any], nproc: int) -> str:
    cfg = sub["config"]
    lines = [f"# {ch['name']}", "", ch["blurb"] or "", "",
             f"**val_bpb {ch['val_bpb']:.8f}** (mean of {len(ch['seeds'])} seeds, std {ch['val_bpb_std'] or 0:.5f}; "
             f"val_loss {ch['val_loss']:.8f} nats): the quantised artifact, decompressed and scored with sliding "
             f"windows (seq {cfg.get('eval_seq_len')}, stride {cfg.get('eval_stride')}) over the whole validation split.",
             f"Largest submission: {ch['bytes_total']:,} bytes (artifact + this train_gpt.py's {ch['bytes_code']:,}) "
             f"of the {BYTES_CAP:,} cap. Hardware: {ch['hardware']}; PyTorch {ch['pytorch_version'] or '?'}.", "",
             "| seed | val_bpb | val_loss | pre-quant val_bpb | artifact_bytes | steps | step_avg_ms | eval_time_s |",
             "|---|---|---|---|---|---|---|---|"]
    for s, r in ch["seed_results"].items():
        pre = f"{r['pre_quant_val_bpb']:.5f}" if "pre_quant_val_bpb" in r else "-"
        lines.append(f"| {s} | {r['val_bpb']:.8f} | {r['val_loss']:.8f} | {pre} | {r['artifact_bytes']:,} | "
                     f"{r['steps']} | {r['step_avg_ms']} | {r['eval_time_s']} |")
    lines += ["", "Pre-quant val_bpb: the trained weights before quantisation, scored on the same tokens and "
              "windows as the plain (non-sliding) round trip, so the difference is the quantisation gap.", "",
              "## Techniques", ""] + [f"- {t}" for t in R.techniques(cfg)]
    data = Path(str(cfg.get("data_path") or "data/datasets/fineweb10B_sp1024"))
    lines += ["", "## Run", "",
              "From this folder, with the challenge's data (`python3 data/cached_challenge_fineweb.py "
              f"--variant sp{cfg.get('vocab_size')}` in the repository root, then linked or copied here as `./data`):", "",
              "```", "pip install -r requirements.txt"]
    for s in ch["seeds"]:
        lines.append(f"SEED={s} RUN_ID=seed{s} DATA_PATH=./{data.as_posix()}/ VOCAB_SIZE={cfg.get('vocab_size')} "
                     f"torchrun --standalone --nproc_per_node={nproc} train_gpt.py")
    lines += ["```", "",
              "The file's defaults are this record's settings; environment variables (the challenge's names, or "
              "golf's) override them. It writes `logs/<RUN_ID>.txt` and `runs/<RUN_ID>/` (checkpoint, `model.ptz`, "
              "eval report) and prints `Total submission size ...`, `final_int_zstd_roundtrip_exact ...` and "
              "`final_sliding_window_exact ...` (the score).", "",
              "## Provenance", "",
              f"Generated by golf (`make submission RECORD={ch['golf']['record']}`) from the record at commit "
              f"`{ch['golf']['commit']}`; train_gpt.py is that commit's golf package in one file (lzma + base85, "
              f"comments stripped). Logs: " + ", ".join(f"[train_seed{s}.log](train_seed{s}.log)" for s in ch["seeds"]) + "."]
    recorded = ch["golf"]["bytes_code_recorded"]
    if recorded is not None and recorded != ch["bytes_code"]:
        lines += ["", f"Note: the runs counted {recorded:,} code bytes; the file shipped here is {ch['bytes_code']:,} "
                  f"bytes, and every figure above uses the shipped size."]
    return "\n".join(lines) + "\n"


def write_submission(record: str | Path, out: str | Path = DEFAULT_OUT, github_id: str = "", author: str = "",
                     track: str = "") -> Path:
    """Write the challenge folder for `record`; returns it. Refuses before writing anything if the
    record is invalid, the GitHub id is missing, the folder exists or a seed would be over the cap."""
    record = Path(record)
    if not (record / "submission.json").is_file():
        raise GolfError(f"{record / 'submission.json'} not found; RECORD must be a golf record folder "
                        f"(records/<track>/<date>_<name>)")
    if not github_id:
        raise GolfError("the challenge's submission.json needs your GitHub id: GITHUB_ID=<you> make submission ...")
    sub = check_record(record)
    record_config(record)  # every setting exists in this code (else: bundle at the record's commit)
    track = track or (RECORD_TRACK if record.parent.name == R.CHALLENGE_TRACK else NON_RECORD_TRACK)
    dest = Path(out) / "records" / track / f"{sub['date']}_{sub['name']}"
    if dest.exists():
        raise GolfError(f"{dest} already exists; remove it or pass another OUT (a submission is never overwritten)")
    with code_at(sub["commit"]) as src:
        code = bundle_bytes(config=sub["config"], root=src, commit=sub["commit"][:12])
    ch = challenge_submission(sub, record, len(code), github_id, author or str(sub.get("author") or ""), track,
                              _pytorch_version(record / f"train_seed{sub['seeds'][0]}.log"))
    over = {s: r["artifact_bytes"] for s, r in ch["seed_results"].items() if r["artifact_bytes"] > BYTES_CAP}
    if over:
        raise GolfError(f"with the shipped train_gpt.py ({len(code):,} bytes) seeds {over} are over the "
                        f"{BYTES_CAP:,}-byte cap; nothing was written")
    torch_req = ch["pytorch_version"] or ""
    reqs = [f"torch=={torch_req}" if torch_req else "torch", *REQUIREMENTS]
    if sub["config"].get("compressor") == "brotli":
        reqs.append("brotli")
    sweep_stale(dest.parent)
    with atomic_dir(dest) as tmp:
        atomic_write_bytes(tmp / "train_gpt.py", code)
        atomic_write_json(tmp / "submission.json", ch)
        atomic_write_text(tmp / "README.md", render_readme(ch, sub, int(sub.get("nproc") or 1)))
        atomic_write_text(tmp / "requirements.txt", "\n".join(reqs) + "\n")
        for s in sub["seeds"]:
            shutil.copyfile(record / f"train_seed{s}.log", tmp / f"train_seed{s}.log")
    return dest
