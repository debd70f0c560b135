"""golf.submit.challenge: `make submission` writes the challenge's pull-request folder from a record."""
import json
import subprocess

import pytest

from golf.compress.bundle import bundle_bytes
from golf.core.config import BYTES_CAP
from golf.core.utils import GolfError, repo_root
from golf.submit import challenge as C
from golf.submit import cli
from tests.submit.test_records import make_record

HEAD = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True).stdout.strip()
LOG = ("versions:{\"python\": \"3.11.7\", \"torch\": \"2.13.0+cpu\"}\nstep:10 train_loss:3.1\n"
       "Total submission size: 612345 bytes (model 560000, code 52345; cap 16000000)\n"
       "final_int_zstd_roundtrip_exact val_loss:2.50000000 val_bpb:1.50000000\n"
       "final_sliding_window_exact val_loss:2.49000000 val_bpb:1.49000000 stride:64 seq_len:256\n")


def golf_record(tmp_path, track="cpu_tiny", name="2026-12-03_tiny_demo", **over):
    folder = tmp_path / "records" / track / name
    extra = dict(commit=HEAD, bytes_code=52_345, nproc=1, **over)
    sub = make_record(folder, bytes_total=612_345, **extra)
    for r, pre in zip(sub["seed_results"], (1.49, 1.51)):
        r.update(bytes_model=560_000, bytes_code=52_345, steps=200, train_seconds=50.0, eval_seconds=12.34,
                 val_bpb_prequant=pre, val_loss_prequant=pre * 1.66, val_bpb_roundtrip_nonsliding=r["val_bpb"] + 0.01)
    (folder / "submission.json").write_text(json.dumps(sub))
    for s in sub["seeds"]:
        (folder / f"train_seed{s}.log").write_text(LOG)
    return folder, sub


def test_folder_holds_the_challenges_files_and_fields(tmp_path):
    rec, sub = golf_record(tmp_path)
    dest = C.write_submission(rec, tmp_path / "pg", github_id="ann-gh")
    # not golf's challenge track -> the challenge's non-record track, named as the challenge names folders
    assert dest == tmp_path / "pg" / "records" / "track_non_record_16mb" / "2026-12-03_tiny_demo"
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "requirements.txt", "submission.json",
                                                      "train_gpt.py", "train_seed1.log", "train_seed2.log"]
    ch = json.loads((dest / "submission.json").read_text())
    code = (dest / "train_gpt.py").read_bytes()
    # the file is the record's commit bundled with its recipe baked in, and its size is the code bytes
    with C.code_at(HEAD) as src:
        assert code == bundle_bytes(config=sub["config"], root=src, commit=HEAD[:12])
    assert b"'PRESET': 'tiny'" in code and ch["bytes_code"] == len(code)
    assert ch["track"] == "non_record_16mb" and ch["github_id"] == "ann-gh" and ch["author"] == "ann"
    assert ch["seeds"] == [1, 2] and set(ch["seed_results"]) == {"1", "2"}  # a dict keyed by seed
    s1 = ch["seed_results"]["1"]
    assert s1 == {"val_loss": 2.5, "val_bpb": 1.5, "artifact_bytes": 560_000 + len(code), "steps": 200,
                  "step_avg_ms": 250.0, "eval_time_s": 12.3, "pre_quant_val_loss": pytest.approx(1.49 * 1.66),
                  "pre_quant_val_bpb": 1.49}
    assert ch["pre_quant_val_bpb"] == pytest.approx(1.50) and ch["val_bpb"] == pytest.approx(1.51)
    assert ch["bytes_total"] == ch["artifact_bytes_max"] == 560_000 + len(code) <= BYTES_CAP
    assert ch["pytorch_version"] == "2.13.0+cpu" and ch["technique_summary"]
    assert ch["golf"]["commit"] == HEAD and ch["golf"]["config"] == sub["config"]
    assert (dest / "requirements.txt").read_text().splitlines() == ["torch==2.13.0+cpu", "numpy", "sentencepiece",
                                                                   "zstandard"]
    assert (dest / "train_seed2.log").read_text() == LOG
    readme = (dest / "README.md").read_text()
    assert "SEED=2 RUN_ID=seed2 DATA_PATH=./data/datasets/shakespeare_sp1024/ VOCAB_SIZE=1024 torchrun --standalone " \
           "--nproc_per_node=1 train_gpt.py" in readme
    assert "Note: the runs counted 52,345 code bytes" in readme  # the hand-made record counted another size
    # never overwritten
    with pytest.raises(GolfError, match="already exists"):
        C.write_submission(rec, tmp_path / "pg", github_id="ann-gh")


def test_golf_challenge_track_goes_to_the_record_track(tmp_path):
    rec, _ = golf_record(tmp_path, track="track_10min_16mb")
    dest = C.write_submission(rec, tmp_path / "pg", github_id="x")
    assert dest.parent.name == "track_10min_16mb"
    assert json.loads((dest / "submission.json").read_text())["track"] == "10min_16mb"


@pytest.mark.parametrize("change,match", [
    (dict(commit=HEAD + "+dirty"), "does not pin the code"),
    (dict(commit="0" * 40), "not in this repository"),
    (dict(val_bpb=9.0), "not the mean"),
])
def test_bad_records_are_refused_before_anything_is_written(tmp_path, change, match):
    rec, sub = golf_record(tmp_path)
    (rec / "submission.json").write_text(json.dumps({**sub, **change}))
    with pytest.raises(GolfError, match=match):
        C.write_submission(rec, tmp_path / "pg", github_id="x")
    assert not (tmp_path / "pg").exists()


def test_logs_without_the_final_lines_or_no_github_id_are_refused(tmp_path):
    rec, _ = golf_record(tmp_path)
    with pytest.raises(GolfError, match="GitHub id"):
        C.write_submission(rec, tmp_path / "pg", github_id="")
    (rec / "train_seed2.log").write_text("step:10 train_loss:3.1\nstep:10 val_bpb:1.6\n")  # a trainer-only log
    with pytest.raises(GolfError, match="train_seed2.log has no 'Total submission size'.*final_sliding_window_exact"):
        C.write_submission(rec, tmp_path / "pg", github_id="x")
    with pytest.raises(GolfError, match="not found"):
        C.write_submission(tmp_path / "nowhere", tmp_path / "pg", github_id="x")
    assert not (tmp_path / "pg").exists()


def test_over_the_cap_with_the_shipped_file_is_refused(tmp_path):
    rec, sub = golf_record(tmp_path)
    for r in sub["seed_results"]:
        r["bytes_model"] = BYTES_CAP - 100  # no train_gpt.py fits beside it
    (rec / "submission.json").write_text(json.dumps(sub))
    with pytest.raises(GolfError, match="over the"):
        C.write_submission(rec, tmp_path / "pg", github_id="x")


def test_cli(tmp_path, capsys):
    rec, _ = golf_record(tmp_path)
    assert cli.main(["submission", "--record", str(rec), "--out", str(tmp_path / "pg"), "--github-id", "g"]) == 0
    assert "track_non_record_16mb" in capsys.readouterr().out
    with pytest.raises(GolfError, match="no training settings"):
        cli.main(["submission", "--record", str(rec), "--num-layers", "3"])
