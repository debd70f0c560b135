"""golf.submit.records: names, tracks, techniques, reproduce command, README, validation."""
import json

import pytest

from golf.core.config import load_config
from golf.core.utils import GolfError
from golf.submit import records as R


def make_record(folder, seed_list=(1, 2), bpbs=(1.50, 1.52), losses=(2.5, 2.52), bytes_total=1_000_000, **over):
    """A valid record written by hand (used by the leaderboard tests too)."""
    cfg = load_config(argv=[], env={}, preset="tiny").to_dict()
    results = [{"seed": s, "val_bpb": b, "val_loss": l, "bytes_total": bytes_total} for s, b, l in zip(seed_list, bpbs, losses)]
    sub = {
        "author": "ann", "github_id": "ann-gh", "name": folder.name[11:], "blurb": "a | b", "date": folder.name[:10],
        "val_loss": sum(losses) / len(losses), "val_bpb": sum(bpbs) / len(bpbs), "bytes_total": bytes_total,
        "bytes_code": 50_000, "seeds": list(seed_list), "seed_results": results, "val_bpb_std": 0.0, "commit": "abc",
        "config": cfg, "hardware": "cpu", "train_seconds": 1.0, "eval_seconds": 1.0, "data": {"manifest_sha256": "x"},
    }
    sub.update(over)
    folder.mkdir(parents=True)
    (folder / "submission.json").write_text(json.dumps(sub))
    (folder / "README.md").write_text("# r\n")
    for s in seed_list:
        (folder / f"train_seed{s}.log").write_text("log\n")
        (folder / f"eval_seed{s}.json").write_text("{}")
    return sub


def test_record_names():
    assert R.check_record_name("memtok64_int5-v2.1") == "memtok64_int5-v2.1"
    for bad in ("", "../x", "a b", "x/y", ".hidden"):
        with pytest.raises(GolfError):
            R.check_record_name(bad)


def test_hardware_and_tracks():
    assert R.hardware_slug("cpu (2 cores, x86_64)") == "cpu"
    assert R.hardware_slug("8x NVIDIA H100 80GB HBM3") == "8xH100"
    assert R.hardware_slug("1x NVIDIA H200") == "1xH200"
    d = "data/datasets/shakespeare_sp1024"
    assert R.default_track("tiny", "cpu (2 cores)", d, d) == "cpu_tiny"
    assert R.default_track("record", "8x NVIDIA H100 80GB HBM3", "data/datasets/fineweb10B_sp1024", d) == R.CHALLENGE_TRACK
    assert R.default_track("record", "1x NVIDIA H100 80GB HBM3", "data/wiki_sp1024", d) == "1xH100_record_wiki_sp1024"


def test_techniques_follow_the_config():
    rec = load_config(argv=[], env={}, preset="record").to_dict()
    t = "\n".join(R.techniques(rec))
    for s in ("64 memory tokens", "BigramHash embedding 10240x128", "SmearGate", "partial RoPE (16/64", "MLP int5",
              "attention int6", "EMA", "QAT", "zstd-22", "GQA"):
        assert s in t, s
    base = "\n".join(R.techniques(load_config(argv=[], env={}, preset="baseline").to_dict()))
    for s in ("memory tokens", "BigramHash", "SmearGate", "EMA", "QAT", "MTP"):
        assert s not in base, s
    mixed = dict(rec, mixers="attn,stream,attn,stream,attn,attn,attn,attn,attn,deltanet", mtp_num_heads=2)
    t = "\n".join(R.techniques(mixed))
    assert "2x stream" in t and "1x deltanet" in t and "2 MTP" in t
    # mechanism lines come from the mechanisms themselves (golf/model/mechanisms/), one each when on
    t = R.techniques(dict(rec, persistent_memory=6, unique_layers=5))
    assert "persistent memory: 6 learned K/V slots per attention layer" in t
    assert "weight-tied depth: 5 unique blocks run as 10 layers" in t
    assert sum("memory tokens" in line for line in t) == 1


def test_reproduce_command_lists_only_non_default_settings():
    cfg = load_config(argv=[], env={"NUM_LAYERS": "3", "SMEAR_GATE": "0"}, preset="tiny").to_dict()
    cmd = R.reproduce_command("x", cfg, [1, 2])
    assert cmd == "make train-and-submit NAME=x PRESET=tiny SEEDS=1,2 NUM_LAYERS=3 SMEAR_GATE=0"
    plain = load_config(argv=[], env={}, preset="record").to_dict()
    assert R.reproduce_command("y", plain, [7]) == "make train-and-submit NAME=y PRESET=record SEEDS=7"


def test_render_readme_has_table_techniques_and_command(tmp_path):
    sub = make_record(tmp_path / "2026-01-01_r")
    sub.update(track="cpu_tiny", record_path="records/cpu_tiny/2026-01-01_r")
    text = R.render_readme(sub)
    assert "| 1 | 1.5000 | 2.5000 |" in text and "| 2 | 1.5200 |" in text
    assert "memory tokens" in text
    assert "make train-and-submit NAME=r PRESET=tiny SEEDS=1,2" in text
    assert "git checkout abc" in text


def test_validate_accepts_a_good_record(tmp_path):
    make_record(tmp_path / "2026-01-01_good")
    sub, problems = R.validate_record(tmp_path / "2026-01-01_good")
    assert problems == [] and sub["name"] == "good"


@pytest.mark.parametrize(
    "over, files_gone, expect",
    [
        ({"bytes_total": 16_000_001}, [], "over the 16,000,000-byte cap"),
        ({"seeds": [1, 3]}, [], "do not match"),
        ({"val_bpb": 1.40}, [], "not the mean"),
        ({}, ["train_seed2.log"], "train_seed2.log is missing"),
        ({}, ["README.md"], "README.md is missing"),
        ({"val_bpb": "1.5"}, [], "positive number"),
        ({"seeds": [1, 1]}, [], "duplicates"),
    ],
)
def test_validate_reports_why(tmp_path, over, files_gone, expect):
    folder = tmp_path / "2026-01-01_bad"
    make_record(folder, **over)
    for f in files_gone:
        (folder / f).unlink()
    _, problems = R.validate_record(folder)
    assert any(expect in p for p in problems), problems


def test_validate_refuses_seeds_scored_on_a_val_prefix(tmp_path):
    folder = tmp_path / "2026-01-01_pfx"
    sub = make_record(folder)
    sub["seed_results"][1]["score_max_tokens"] = 600
    sub["seed_results"][0]["score_max_tokens"] = 0  # the whole split
    (folder / "submission.json").write_text(json.dumps(sub))
    _, problems = R.validate_record(folder)
    assert problems == ["seed 2 was scored on the first 600 val tokens (SCORE_MAX_TOKENS), not the whole split"]


def test_validate_missing_fields_and_json(tmp_path):
    folder = tmp_path / "2026-01-01_x"
    folder.mkdir()
    assert R.validate_record(folder)[1] == ["submission.json is missing"]
    (folder / "submission.json").write_text("{not json")
    assert "not valid JSON" in R.validate_record(folder)[1][0]
    (folder / "submission.json").write_text(json.dumps({"name": "x"}))
    assert any("'author' is missing" in p for p in R.validate_record(folder)[1])


def test_find_existing_matches_name_on_any_date(tmp_path):
    make_record(tmp_path / "t" / "2025-12-31_same")
    assert R.find_existing(tmp_path, "t", "same") == tmp_path / "t" / "2025-12-31_same"
    assert R.find_existing(tmp_path, "t", "sam") is None
    assert R.find_existing(tmp_path, "other", "same") is None
