"""golf.submit (pipeline, ablate, verify, runs, settings, cli) with fake stages (fast): records, A/B, cache, verify, bad input, interruption.

The fake stages honour the same file contracts as train_gpt.py / quantize.py / eval_bpb.py, and
their 'loss' depends on the settings they receive through the environment, so the tests also check
that settings reach the stages.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datakit import token_folder

from golf.core.config import Hyperparameters, load_config
from golf.core.utils import GolfError, today
from golf.data.folder import split_tokens
from golf.data.tokenizer import ByteTokenizer
from golf.submit import ablate as AB
from golf.submit import cli as CLI
from golf.submit import leaderboard as L
from golf.submit import pipeline as P
from golf.submit import records as R
from golf.submit import runs as RU
from golf.submit import settings as SE
from golf.submit import verify as VE
from golf.submit.challenge import missing_lines

REPO = Path(__file__).resolve().parents[2]


class FakeStages(RU.Stages):
    echo = False
    extra_train_tokens = 0  # > 0: the 'loader' reads more than the train split (the issue-13 leak)

    def __init__(self, size=1_234_567, fail_on=None):
        super().__init__()
        self.calls = []
        self.size = size
        self.fail_on = fail_on  # (stage, seed, exception) to simulate an interruption

    def _maybe_fail(self, stage, env):
        self.calls.append((stage, env.get("RUN_ID"), int(env.get("SEED", -1))))
        if self.fail_on and self.fail_on[0] == stage and int(env["SEED"]) == self.fail_on[1]:
            raise self.fail_on[2]

    def prepare_data(self, env, log):
        self._maybe_fail("prepare", env)
        tiny_folder(Path(env["DATA_PATH"]))

    def run(self, env, run_dir, log):
        """train_gpt.py's one process: train -> export -> score."""
        self._train(env, run_dir, log)
        self.quantize(env, run_dir, log)
        self.evaluate(env, None, run_dir / "model.ptz", run_dir / "eval.json", log)

    def _train(self, env, run_dir, log):
        self._maybe_fail("train", env)
        seed = int(env["SEED"])
        # loss depends on settings passed through the environment
        loss = 3.0 - 0.05 * int(env["NUM_LAYERS"]) + 0.01 * (seed % 5) - 0.02 * (int(env["NUM_MEMORY_TOKENS"]) > 0)
        cfg = {k.lower(): v for k, v in env.items() if k.lower() in Hyperparameters.__dataclass_fields__}
        (run_dir / "final.pt").write_text(json.dumps({"loss": loss}))
        train_tokens = split_tokens(env["DATA_PATH"], "train") + self.extra_train_tokens
        (run_dir / "train.log").write_text("# fake\nconfig:" + json.dumps(cfg) + f"\ntrain_tokens:{train_tokens}\n"
                                           f"step:10 train_loss:{loss + 1}\n")
        hist = [{"step": s, "train_loss": loss + 1 / s} for s in range(1, 11)]
        (run_dir / "metrics.json").write_text(json.dumps({"steps": 10, "train_seconds": 1.5, "history": hist,
                                                          "config": cfg, "params": 1000 * int(env["NUM_LAYERS"]),
                                                          "val_bpb": loss / math.log(2) * 0.4 + 0.02}))

    def quantize(self, env, run_dir, log):
        self._maybe_fail("quantize", env)
        blob = (run_dir / "final.pt").read_bytes()
        if self.size < 5_000_000:  # the artifact's real size is its claimed one (verify measures the file)
            blob += b" " * (self.size - 50_000 - len(blob))
        (run_dir / "model.ptz").write_bytes(blob)
        (run_dir / "size.json").write_text(json.dumps({"bytes_total": self.size, "bytes_code": 50_000,
                                                       "bytes_model": self.size - 50_000}))

    def evaluate(self, env, h, artifact, out_json, log):
        self._maybe_fail("eval", env)
        loss = json.loads(Path(artifact).read_text())["loss"]
        seq = env["EVAL_SEQ_LEN"]  # the plain round trip: non-overlapping windows at the eval length
        plain = {"val_loss": loss + 0.01, "val_bpb": (loss + 0.01) / math.log(2) * 0.4, "seq_len": int(seq),
                 "stride": int(seq)}
        n = int(env.get("SCORE_MAX_TOKENS") or 0)
        out_json.write_text(json.dumps({"val_loss": loss, "val_bpb": loss / math.log(2) * 0.4, "tokens": n or 1000,
                                        "bytes": 2500, "seconds": 0.5, "contexts": {seq: plain}, "max_tokens": n}))

    def trained(self):
        return [c for c in self.calls if c[0] == "train"]


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """Work in a temp folder (runs/, records/, data/ relative), with the default data prepared."""
    monkeypatch.chdir(tmp_path)
    for mod in (P, AB):  # the hardware a record names
        monkeypatch.setattr(mod, "device_description", lambda: "cpu (2 cores, x86_64)")
    # The real code version hashes uncommitted edits, which change under parallel development.
    monkeypatch.setattr(RU, "code_version", lambda: "c0ffee")
    for k in list(os.environ):
        if k in ("PRESET", "SEED", "NUM_LAYERS", "NPROC"):
            monkeypatch.delenv(k)
    tiny_folder(tmp_path / RU.DEFAULT_DATA_PATH)
    return tmp_path


def tiny_folder(d: Path) -> Path:
    return token_folder(d, ByteTokenizer(), train=np.arange(4, 260), val=np.arange(4, 104))


def submit(stages, **kw):
    kw.setdefault("preset", "tiny")
    return P.submit(stages=stages, records_dir="records", **kw)


def test_submit_writes_a_complete_valid_record(ws):
    st = FakeStages()
    dest = submit(st, name="memtok", seeds="1,2", settings={"num_layers": 3}, author="ann", github_id="ann-gh")
    assert dest.resolve().parent == ws / "records" / "cpu_tiny"
    sub, problems = R.validate_record(dest)
    assert problems == []
    assert sub["seeds"] == [1, 2] and [r["seed"] for r in sub["seed_results"]] == [1, 2]
    for k in R.CHALLENGE_FIELDS + ("val_bpb_std", "commit", "config", "hardware", "train_seconds", "eval_seconds", "data"):
        assert k in sub, k
    exp = [3.0 - 0.15 + 0.01 * s - 0.02 for s in (1, 2)]  # NUM_LAYERS=3 reached the stage, memory tokens on
    assert [r["val_loss"] for r in sub["seed_results"]] == pytest.approx(exp)
    assert sub["val_bpb"] == pytest.approx(sum(r["val_bpb"] for r in sub["seed_results"]) / 2)
    assert sub["config"]["num_layers"] == 3 and sub["config"]["model_dim"] == 128  # full config
    assert sub["seed_results"][0]["steps"] == 10 and sub["seed_results"][0]["val_bpb_roundtrip_nonsliding"]
    assert sub["bytes_total"] == 1_234_567 and sub["bytes_code"] == 50_000
    assert (sub["author"], sub["github_id"], sub["name"]) == ("ann", "ann-gh", "memtok")
    assert len(sub["data"]["manifest_sha256"]) == 64
    for f in ("train_seed1.log", "train_seed2.log", "eval_seed1.json", "eval_seed2.json", "README.md", "loss_curve.png"):
        assert (dest / f).is_file(), f
    assert not list(dest.glob("*.pt*")), "weights must not be in the record"
    readme = (dest / "README.md").read_text()
    assert "make train-and-submit NAME=memtok PRESET=tiny SEEDS=1,2 NUM_LAYERS=3" in readme
    assert "memory tokens" in readme and "BigramHash" in readme


def test_leaderboard_invalidates_records_whose_runs_read_val_in_training(ws):
    ok = submit(FakeStages(), name="honest", seeds="1")
    leaky = FakeStages()
    leaky.extra_train_tokens = split_tokens(RU.DEFAULT_DATA_PATH, "val")
    bad = submit(leaky, name="leaky", seeds="2,3")  # seed 1 would come from the run cache
    sub = json.loads((ok / "submission.json").read_text())
    stored = ws / "records" / R.MANIFESTS / Path(RU.DEFAULT_DATA_PATH).name / f"{sub['data']['manifest_sha256']}.json"
    assert stored.is_file() and sub["data"]["split_tokens"] == {"train": 256, "val": 100}
    valid, invalid, _ = L.scan(ws / "records")
    assert [s["name"] for rows in valid.values() for s in rows] == ["honest"]
    assert [f.name for f, _ in invalid] == [bad.name]
    why = "; ".join(invalid[0][1])
    assert "train_seed2.log, train_seed3.log: training read 356 tokens, train 256 + val 100" in why
    # a record whose pinned manifest is not stored is checked against a stored one of the same folder
    shutil.rmtree(Path(RU.DEFAULT_DATA_PATH))
    tiny_folder(Path(RU.DEFAULT_DATA_PATH))
    (Path(RU.DEFAULT_DATA_PATH) / "manifest.json").write_text(
        (Path(RU.DEFAULT_DATA_PATH) / "manifest.json").read_text() + "\n")  # another sha, same splits
    stored.rename(stored.with_name("0" * 64 + ".json"))
    _, invalid, _ = L.scan(ws / "records")
    assert [f.name for f, _ in invalid] == [bad.name] and "is not stored; same data folder" in invalid[0][1][0]
    # and an ablation whose runs leaked is listed invalid, not in the ablations table
    ab = AB.ablate(name="leakab", a="", b="NUM_LAYERS=3", seeds="2,3", stages=leaky,
                  records_dir="records", preset="tiny")
    _, invalid, ablations = L.scan(ws / "records")
    assert ab.name in [f.name for f, _ in invalid] and not ablations


def test_default_track_and_name(ws):
    dest = submit(FakeStages())
    assert dest.parent.name == "cpu_tiny"
    assert dest.name.startswith(today() + "_")
    assert dest.name[11:].startswith("tiny_")


def test_existing_name_is_refused_before_training(ws):
    submit(FakeStages(), name="x", track="t1")
    st = FakeStages()
    with pytest.raises(GolfError, match="already exists"):
        submit(st, name="x", track="t1")
    assert st.trained() == []


@pytest.mark.parametrize("stage", ["train", "eval"])
def test_interrupted_run_leaves_no_half_record(ws, stage):
    st = FakeStages(fail_on=(stage, 2, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        submit(st, name="cut", seeds="1,2,3", track="t")
    track = ws / "records" / "t"
    assert not track.exists() or list(track.iterdir()) == []


def test_failure_while_writing_record_leaves_nothing(ws, monkeypatch):
    def boom(sub):
        raise RuntimeError("disk full")

    monkeypatch.setattr(R, "render_readme", boom)
    with pytest.raises(RuntimeError):
        submit(FakeStages(), name="w", track="t")
    assert list((ws / "records" / "t").iterdir()) == []  # temp dir removed too


def test_oversize_artifact_is_refused(ws):
    with pytest.raises(GolfError, match="over the 16,000,000-byte cap"):
        submit(FakeStages(size=16_000_001), name="big", track="t")
    assert not (ws / "records" / "t").exists() or list((ws / "records" / "t").iterdir()) == []


def test_missing_default_data_is_prepared(ws):
    import shutil

    shutil.rmtree(ws / RU.DEFAULT_DATA_PATH)
    st = FakeStages()
    submit(st, name="d", track="t")
    assert st.calls[0][0] == "prepare"


def test_missing_other_data_says_how_to_get_it(ws):
    with pytest.raises(GolfError, match="make data"):
        submit(FakeStages(), name="d", settings={"data_path": "data/nowhere"})


def test_unknown_preset_and_setting_suggest_close_names(ws):
    with pytest.raises(GolfError, match="did you mean tiny"):
        submit(FakeStages(), name="p", preset="tiyn")
    with pytest.raises(GolfError, match="NUM_LAYERS"):
        SE.parse_settings("NUM_LAYER=3", "A")
    with pytest.raises(GolfError, match="not a valid int"):
        SE.parse_settings("NUM_LAYERS=three", "B")
    with pytest.raises(GolfError, match="NAME=VALUE"):
        SE.parse_settings("NUM_LAYERS", "B")
    with pytest.raises(GolfError, match="NUM_LAYERS"):
        CLI.main(["submit", "--num-layerz", "3"])


def test_parse_settings_and_seeds():
    assert SE.parse_settings("NUM_LAYERS=3 SMEAR_GATE=0 MIXERS='attn,stream'", "A") == {
        "num_layers": 3, "smear_gate": False, "mixers": "attn,stream"}
    assert SE.parse_settings("", "A") == {}
    assert SE.parse_seeds("1,2,3", 0) == [1, 2, 3]
    assert SE.parse_seeds(None, 42) == [42]
    assert SE.parse_seeds("7", 0) == [7]
    assert SE.parse_seeds("3", 0, count_ok=True) == [1, 2, 3]
    with pytest.raises(GolfError):
        SE.parse_seeds("1,1", 0)
    with pytest.raises(GolfError):
        SE.parse_seeds("a,b", 0)


def test_ablate_records_both_arms_and_reuses_cached_a(ws):
    st = FakeStages()
    dest = AB.ablate("memtok", "NUM_MEMORY_TOKENS=0", "NUM_MEMORY_TOKENS=8", seeds="1,2,3", preset="tiny",
                    records_dir="records", stages=st)
    assert dest.resolve().parent == ws / "records" / "ablations"
    rec = json.loads((dest / "ablation.json").read_text())
    assert len(st.trained()) == 6
    assert rec["comparison"]["basis"] == "nats per token (val_loss)"  # one tokenizer
    assert [p["seed"] for p in rec["per_seed"]] == [1, 2, 3]
    assert rec["comparison"]["mean_diff_nats"] == pytest.approx(-0.02)  # B has memory tokens: 0.02 better
    assert rec["comparison"]["mean_diff_bpb"] == pytest.approx(-0.02 / math.log(2) * 0.4)
    assert rec["comparison"]["p_paired"] == 0.0  # identical differences
    assert rec["comparison"]["meets_challenge_bar"] and rec["comparison"]["meets_practice_bar"]
    for arm in "AB":
        for s in (1, 2, 3):
            assert (dest / f"{arm}_train_seed{s}.log").is_file()
            assert (dest / f"{arm}_eval_seed{s}.json").is_file()
    assert (dest / "ablation.png").stat().st_size > 1000
    assert "paired t-test" in (dest / "README.md").read_text()

    # Second ablation against the same A arm: A is reused from the cache, B is trained.
    st2 = FakeStages()
    dest2 = AB.ablate("layers", "NUM_MEMORY_TOKENS=0", "NUM_MEMORY_TOKENS=0 NUM_LAYERS=5", seeds="1,2,3",
                     preset="tiny", records_dir="records", stages=st2)
    assert len(st2.trained()) == 3
    rec2 = json.loads((dest2 / "ablation.json").read_text())
    assert rec2["A"]["reused_runs"] == rec["A"]["run_ids"]
    assert rec2["B"]["reused_runs"] == []
    assert all(r["reused"] for r in rec2["A"]["seed_results"])
    assert (dest2 / "A_train_seed2.log").is_file()  # reused runs still bring their logs
    n = 1000 * rec["A"]["config"]["num_layers"]
    assert rec2["A"]["params"] == n and rec2["B"]["params"] == 5000
    assert f"- params: A {n:,}, B 5,000 (B-A {5000 - n:+,})" in (dest2 / "README.md").read_text()

    with pytest.raises(GolfError, match="already exists"):
        AB.ablate("layers", "", "NUM_LAYERS=5", preset="tiny", records_dir="records", stages=FakeStages())

    # A cached run whose files are gone or changed is trained again, never turned into a record.
    a_runs = [Path("runs") / r for r in rec["A"]["run_ids"]]
    (a_runs[0] / "model.ptz").unlink()
    (a_runs[1] / "eval.json").write_text((a_runs[1] / "eval.json").read_text().replace("0", "1", 1))
    st3 = FakeStages()
    AB.ablate("again", "NUM_MEMORY_TOKENS=0", "NUM_MEMORY_TOKENS=0 NUM_LAYERS=5", seeds="1,2,3", preset="tiny",
              records_dir="records", stages=st3)
    assert sorted(c[2] for c in st3.trained() if "_A_" in c[1]) == [1, 2]  # seed 3's A and every B are reused
    assert [c for c in st3.trained() if "_B_" in c[1]] == []


def test_a_prefix_score_is_said_in_the_ablation_and_refused_in_a_record(ws):
    st = FakeStages()
    dest = AB.ablate("prefix", "", "NUM_LAYERS=5", seeds="1,2", preset="tiny", records_dir="records", stages=st,
                     settings={"score_max_tokens": 600})
    rec = json.loads((dest / "ablation.json").read_text())
    assert [r["score_max_tokens"] for r in rec["A"]["seed_results"]] == [600, 600]
    assert "the first 600 val tokens (SCORE_MAX_TOKENS" in (dest / "README.md").read_text()
    whole = AB.ablate("whole", "", "NUM_LAYERS=5", seeds="1,2", preset="tiny", records_dir="records", stages=st)
    assert "scored on: the whole val split" in (whole / "README.md").read_text()
    n = len(st.calls)
    with pytest.raises(GolfError, match="SCORE_MAX_TOKENS=600 scores only a val prefix"):
        submit(st, name="pfx", seeds="1", settings={"score_max_tokens": 600})
    assert len(st.calls) == n  # refused before any stage ran


def test_ablate_arms_on_two_data_folders_pin_and_check_both(ws):
    """A tokenizer A/B: arm B reads another folder; its manifest is pinned as data_b and B's logs
    are checked against it (not against A's split counts)."""
    other = token_folder(ws / "data" / "other", ByteTokenizer(), train=np.arange(4, 204), val=np.arange(4, 84))
    b = f"DATA_PATH={other} SCORE_MAX_TOKENS=50"
    dest = AB.ablate("tok", "", b, seeds="1,2", preset="tiny", records_dir="records", stages=FakeStages())
    rec = json.loads((dest / "ablation.json").read_text())
    assert rec["data"]["split_tokens"]["train"] == 256 and rec["data_b"]["split_tokens"]["train"] == 200
    readme = (dest / "README.md").read_text()
    assert f"B `{other}`" in readme and "B the first 50 val tokens" in readme
    # two tokenizers: nats per token do not compare, so the test is on nats per byte
    assert rec["comparison"]["basis"].startswith("nats per byte") and "nats per byte" in readme
    for p in rec["per_seed"]:
        assert p["diff_nats"] == pytest.approx(p["diff_bpb"] * math.log(2))
    assert rec["comparison"]["mean_diff_nats"] == pytest.approx(rec["comparison"]["mean_diff_bpb"] * math.log(2))
    _, invalid, ablations = L.scan(ws / "records")
    assert invalid == [] and [a["name"] for a in ablations] == ["tok"]
    leaky = FakeStages()
    leaky.extra_train_tokens = 80  # B's loader read its val split too
    AB.ablate("tokleak", "", b + " NUM_LAYERS=3", seeds="1,2", preset="tiny", records_dir="records", stages=leaky)
    _, invalid, _ = L.scan(ws / "records")
    assert len(invalid) == 1 and invalid[0][0].name.endswith("tokleak")
    assert "B_train_seed1.log, B_train_seed2.log: training read 280 tokens, train 200 + val 80" in invalid[0][1][0]


def test_ablate_rejects_typo_before_training(ws):
    st = FakeStages()
    with pytest.raises(GolfError, match="SMEAR_GATE"):
        AB.ablate("x", "", "SMEAR_GATES=0", preset="tiny", records_dir="records", stages=st)
    assert st.calls == []
    # a setting that parses but builds no model (an unknown mixer) also stops before arm A trains
    with pytest.raises(GolfError, match="unknown mixer 'foo'"):
        AB.ablate("x", "", "MIXERS=foo", preset="tiny", records_dir="records", stages=st)
    with pytest.raises(GolfError, match="NUM_HEADS=0 is out of range"):
        AB.ablate("x", "", "NUM_HEADS=0", preset="tiny", records_dir="records", stages=st)
    assert st.calls == []


def test_cache_key_depends_on_config_seed_and_code():
    h1 = SE.resolve_config("tiny", {}, 1, "a")
    h2 = SE.resolve_config("tiny", {}, 1, "b")  # run id does not matter
    assert RU.cache_key(h1, "c1") == RU.cache_key(h2, "c1")
    assert RU.cache_key(h1, "c1") != RU.cache_key(h1, "c2")
    assert RU.cache_key(h1, "c1") != RU.cache_key(SE.resolve_config("tiny", {}, 2, "a"), "c1")
    assert RU.cache_key(h1, "c1") != RU.cache_key(SE.resolve_config("tiny", {"num_layers": 2}, 1, "a"), "c1")


def test_code_version_ignores_committed_records_but_not_code(tmp_path, monkeypatch):
    """Committing a record must not invalidate the cache (the next ablation reuses its A arm);
    any change to the code, committed or not, must."""
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # never find a repository above
    assert RU.code_version(tmp_path) is None  # not a repository: no cache rather than a wrong hit
    (tmp_path / "golf").mkdir()
    (tmp_path / "golf" / "m.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "code")
    v0 = RU.code_version(tmp_path)
    assert v0 is not None

    (tmp_path / "records" / "r1").mkdir(parents=True)
    (tmp_path / "records" / "r1" / "README.md").write_text("a record\n")
    assert RU.code_version(tmp_path) == v0  # an untracked record
    git("add", ".")
    git("commit", "-qm", "record")
    assert RU.code_version(tmp_path) == v0  # a committed record: HEAD moved, the code did not

    (tmp_path / "golf" / "m.py").write_text("x = 2\n")
    v_dirty = RU.code_version(tmp_path)
    assert v_dirty != v0
    git("commit", "-qam", "edit")
    v1 = RU.code_version(tmp_path)
    assert v1 not in (v0, None)
    (tmp_path / "golf" / "new.py").write_text("y = 1\n")  # a new module, not yet added
    v_new = RU.code_version(tmp_path)
    assert v_new != v1
    (tmp_path / "golf" / "new.py").write_text("y = 2\n")
    assert RU.code_version(tmp_path) != v_new


def test_verify_artifact_and_rebuild(ws, monkeypatch, capsys):
    dest = submit(FakeStages(), name="v", seeds="1,2", track="t")
    art = next((ws / "runs").glob("v_*_s1")) / "model.ptz"
    with pytest.raises(GolfError, match="one seed's artifact"):
        VE.verify(dest, artifact=art, stages=FakeStages())  # every seed is the default; an artifact is one seed's
    assert VE.verify(dest, artifact=art, seeds="1", stages=FakeStages()) is True
    assert "VERIFIED" in capsys.readouterr().out
    # a claim that the artifact does not reproduce fails
    sub = json.loads((dest / "submission.json").read_text())
    sub["seed_results"][0]["val_bpb"] -= 0.01
    sub["val_bpb"] = (sub["seed_results"][0]["val_bpb"] + sub["seed_results"][1]["val_bpb"]) / 2
    (dest / "submission.json").write_text(json.dumps(sub))
    assert VE.verify(dest, artifact=art, seeds="1", stages=FakeStages()) is False
    # rebuild: needs the record's commit
    monkeypatch.setattr(VE, "git_commit", lambda: "0" * 40)
    with pytest.raises(GolfError, match="git checkout"):
        VE.verify(dest, stages=FakeStages())
    monkeypatch.setattr(VE, "git_commit", lambda: sub["commit"])
    if sub["commit"].endswith("+dirty"):
        with pytest.raises(GolfError, match="clean tree"):
            VE.verify(dest, stages=FakeStages())
        sub["commit"] = sub["commit"].replace("+dirty", "")
        (dest / "submission.json").write_text(json.dumps(sub))
        monkeypatch.setattr(VE, "git_commit", lambda: sub["commit"])
    st = FakeStages()
    assert VE.verify(dest, seeds="2", stages=st) is True  # seed 2's claim is untouched; tolerance 0.01
    assert [c[2] for c in st.trained()] == [2]
    assert VE.verify(dest, seeds="1", stages=FakeStages(), tolerance=0.001) is False


def test_verify_checks_every_seed_and_the_mean_by_default(ws, monkeypatch, capsys):
    """A record whose seed 2 and mean were both edited by 0.2 BPB stays valid on paper (the mean is
    the mean of the claims), so only re-measuring every seed catches it."""
    dest = submit(FakeStages(), name="w", seeds="1,2", track="t")
    sub = json.loads((dest / "submission.json").read_text())
    sub["commit"] = sub["commit"].replace("+dirty", "")
    monkeypatch.setattr(VE, "git_commit", lambda: sub["commit"])
    (dest / "submission.json").write_text(json.dumps(sub))
    st = FakeStages()
    assert VE.verify(dest, stages=st) is True
    assert sorted(c[2] for c in st.trained()) == [1, 2]  # both seeds re-run, no SEEDS given
    assert "PASS mean val_bpb" in capsys.readouterr().out
    sub["seed_results"][1]["val_bpb"] -= 0.2
    sub["val_bpb"] = (sub["seed_results"][0]["val_bpb"] + sub["seed_results"][1]["val_bpb"]) / 2
    (dest / "submission.json").write_text(json.dumps(sub))
    assert R.validate_record(dest)[1] == []  # consistent on paper
    assert VE.verify(dest, stages=FakeStages()) is False
    out = capsys.readouterr().out
    assert "FAIL seed 2" in out and "FAIL mean val_bpb" in out and "NOT VERIFIED" in out
    sub["seed_results"][1]["val_bpb"] += 0.2
    sub["val_bpb"] = (sub["seed_results"][0]["val_bpb"] + sub["seed_results"][1]["val_bpb"]) / 2
    sub["seed_results"][0]["bytes_code"] = 1234  # a claimed code size the commit does not build
    (dest / "submission.json").write_text(json.dumps(sub))
    assert VE.verify(dest, stages=FakeStages()) is False
    assert "FAIL seed 1: bytes_code" in capsys.readouterr().out


def test_run_command_passes_env_logs_and_reports_failure(tmp_path):
    log = tmp_path / "l.log"
    env = {**os.environ, "GOLF_TEST_VALUE": "hello"}
    RU.run_command([sys.executable, "-c", "import os; print(os.environ['GOLF_TEST_VALUE'])"], env, log, echo=False)
    assert "hello" in log.read_text()
    with pytest.raises(GolfError, match="exit code 3") as e:
        RU.run_command([sys.executable, "-c", "print('the last words'); raise SystemExit(3)"], env, log, echo=False)
    assert "the last words" in str(e.value) and str(log) in str(e.value)


def test_config_env_round_trips_through_load_config():
    h = SE.resolve_config("tiny", {"num_layers": 3, "smear_gate": False, "mixers": ""}, 5, "r1")
    env = SE.config_env(h, base={})
    h2 = load_config(argv=[], env=env)
    assert h2.to_dict() == h.to_dict()


def test_ablate_cli_end_to_end_with_fake_stages(ws, monkeypatch):
    for mod in (P, AB, VE):
        monkeypatch.setattr(mod, "Stages", FakeStages)
    assert CLI.main(["ablate", "--name", "cli", "--a", "", "--b", "NUM_LAYERS=5", "--seeds", "2", "--preset", "tiny"]) == 0
    rec = json.loads(next((ws / "records" / "ablations").glob("*_cli/ablation.json")).read_text())
    assert rec["seeds"] == [1, 2]  # SEEDS=2 on an ablation is a count


def _head_jsonl(src, dst, n):
    """First n documents of a .jsonl.zst as plain .jsonl (a tiny corpus for the end-to-end test)."""
    import io

    import zstandard

    with open(src, "rb") as f, open(dst, "w", encoding="utf-8") as out:
        reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8", newline="\n")
        for i, line in enumerate(reader):
            if i >= n:
                break
            out.write(line if line.endswith("\n") else line + "\n")


def _byte_data(tmp_path, monkeypatch, val_docs: int) -> tuple[Path, int]:
    """A byte-level data folder from the first 12 wiki documents (train) and `val_docs` FineWeb ones
    (val), made by the real prepare stage; the test then runs in tmp_path. Skips without ../shared/data."""
    shared = REPO.parent / "shared" / "data"
    if not (shared / "wiki_val.jsonl.zst").is_file():
        pytest.skip("../shared/data is not available")
    _head_jsonl(shared / "wiki_val.jsonl.zst", tmp_path / "train.jsonl", 12)
    _head_jsonl(shared / "fineweb_val.jsonl.zst", tmp_path / "val.jsonl", val_docs)
    data = tmp_path / "data"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "golf.data.prepare", "--corpus", str(tmp_path / "train.jsonl"),
                        "--val", str(tmp_path / "val.jsonl"), "--tokenizer", "byte", "--out", str(data), "--workers", "1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    return data, json.loads((data / "manifest.json").read_text())["tokenizer"]["vocab_size"]


@pytest.mark.slow
def test_end_to_end_real_stages(tmp_path, monkeypatch):
    """The real stages (data prep, train_gpt.py, quantize.py, eval_bpb.py) on a tiny byte-level data
    folder with a few iterations, then verify of the record against its own artifact."""
    for f in ("train_gpt.py", "quantize.py", "eval_bpb.py"):
        if not (REPO / f).is_file():
            pytest.skip(f"{f} does not exist yet")
    data, vocab = _byte_data(tmp_path, monkeypatch, val_docs=2)
    settings = {"data_path": str(data), "vocab_size": vocab, "iterations": 3, "max_wallclock_seconds": 0.0,
                "num_layers": 1, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "rope_dims": 0,
                "train_seq_len": 64, "train_batch_tokens": 512, "num_memory_tokens": 2, "bigram_vocab_size": 64,
                "bigram_dim": 8, "val_max_tokens": 2048, "eval_stride": 32, "compile_warmup_steps": 0}
    stages = RU.Stages()
    stages.echo = False
    dest = P.submit(name="e2e", preset="tiny", settings=settings, records_dir="records", stages=stages, use_cache=False)
    sub, problems = R.validate_record(dest)
    assert problems == [], problems
    r0 = sub["seed_results"][0]
    assert 0 < sub["val_bpb"] < 20 and r0["steps"] == 3
    assert r0["val_bpb_roundtrip_nonsliding"] is not None
    assert sub["config"]["model_dim"] == 32 and sub["config"]["vocab_size"] == vocab
    art = next((tmp_path / "runs").glob("e2e_*")) / "model.ptz"
    assert VE.verify(dest, artifact=art, stages=stages)


def challenge_download(root: Path, train=(300, 200), val=(150,)) -> Path:
    """The challenge's layout as data/cached_challenge_fineweb.py writes it: no golf manifest; the
    tokenizer under data/tokenizers/, named by data/manifest.json."""
    from golf.data.shards import write_shard

    ds = root / "datasets" / "fineweb10B_byte260"
    rng = np.random.default_rng(0)
    for i, n in enumerate(train):
        write_shard(ds / f"fineweb_train_{i:06d}.bin", rng.integers(4, 260, n))
    for i, n in enumerate(val):
        write_shard(ds / f"fineweb_val_{i:06d}.bin", rng.integers(4, 260, n))
    ByteTokenizer().save(root / "tokenizers" / "fineweb_pure_byte_260.json")
    (root / "manifest.json").write_text(json.dumps({
        "datasets": [{"name": "fineweb10B_byte260", "tokenizer_name": "byte260"}],
        "tokenizers": [{"name": "byte260", "path": "tokenizers/fineweb_pure_byte_260.json"}]}))
    return ds


def test_challenge_download_is_read_checked_and_pinned_without_a_golf_manifest(tmp_path):
    ds = challenge_download(tmp_path / "data")
    h = load_config(env={"DATA_PATH": str(ds), "VOCAB_SIZE": "260"})
    RU.ensure_data(h, RU.Stages(), tmp_path / "prep.log")  # accepted as it is, nothing prepared
    key = RU.manifest_hash(h)
    assert key and key == RU.manifest_hash(h)
    data = R.store_manifest(tmp_path / "records", ds)
    stored = json.loads((tmp_path / "records" / "manifests" / "fineweb10B_byte260" / f"{data['manifest_sha256']}.json").read_text())
    assert stored["splits"]["train"]["tokens"] == 500 and stored["splits"]["val"]["tokens"] == 150
    assert stored["tokenizer"]["sha256"] == ByteTokenizer().sha256 and data["split_tokens"] == {"train": 500, "val": 150}
    # the leak check works from that description as from golf's manifest
    rec = tmp_path / "records" / "x" / "2026-12-03_r"
    rec.mkdir(parents=True)
    (rec / "train_seed1.log").write_text("train_tokens:650\n")
    assert "validation shards were read" in " ".join(R.data_leak_problems(tmp_path / "records", rec, data))
    (rec / "train_seed1.log").write_text("train_tokens:500\n")
    assert R.data_leak_problems(tmp_path / "records", rec, data) == []
    # a changed shard changes the cache key (no manifest hash to rely on)
    os.utime(ds / "fineweb_train_000001.bin", ns=(1, 1))
    assert RU.manifest_hash(h) != key
    # hostile: a download without its val shards, or a folder of other names, is refused before training
    (ds / "fineweb_val_000000.bin").rename(ds / "fineweb_val_000000.bin.part")
    with pytest.raises(GolfError, match="no val shards"):
        RU.ensure_data(h, RU.Stages(), tmp_path / "prep.log")
    other = tmp_path / "other"
    other.mkdir()
    (other / "wiki_train_val_000000.bin").write_bytes(b"")
    with pytest.raises(GolfError, match="neither golf's manifest.json nor the challenge's"):
        RU.ensure_data(load_config(env={"DATA_PATH": str(other)}), RU.Stages(), tmp_path / "prep.log")


class CrashingStages(FakeStages):
    """Seed 2's training is killed after its first checkpoint (once)."""

    def __init__(self):
        super().__init__()
        self.crashed = False
        self.envs = []

    def run(self, env, run_dir, log):
        self.envs.append(dict(env))
        if int(env["SEED"]) == 2 and not self.crashed:
            self.crashed = True
            (run_dir / "ckpt.pt").write_text("step 5")
            raise GolfError("train_gpt.py failed with exit code 143")
        super().run(env, run_dir, log)


def test_an_interrupted_pipeline_resumes_with_resume_1(ws, capsys):
    st = CrashingStages()
    with pytest.raises(GolfError, match="the same command with RESUME=1") as e:
        submit(st, name="long", seeds="1,2,3")
    assert "ckpt.pt" in str(e.value) and not Path("records").exists()
    crashed_dir = next(Path("runs").glob("long_*_s2"))
    capsys.readouterr()
    dest = submit(st, name="long", seeds="1,2,3", settings={"resume": True})
    out = capsys.readouterr().out
    assert "seed 1: reusing cached run" in out and f"seed 2: resuming {crashed_dir}" in out
    resumed = [env for env in st.envs if env["SEED"] == "2"][-1]
    assert resumed["RESUME"] == "1" and resumed["RUN_ID"] == crashed_dir.name
    sub = json.loads((dest / "submission.json").read_text())
    assert [r["run_id"] for r in sub["seed_results"]][1] == crashed_dir.name and sub["seeds"] == [1, 2, 3]


def test_two_pipelines_of_one_name_in_the_same_second_get_their_own_runs(ws, monkeypatch):
    monkeypatch.setattr(P, "now_stamp", lambda: "20260101_000000")
    a = submit(FakeStages(), name="same", seeds="1", settings={"num_layers": 3}, track="t1")
    b = submit(FakeStages(), name="same", seeds="1", settings={"num_layers": 5}, track="t2")  # another config
    ra = json.loads((a / "submission.json").read_text())["seed_results"][0]["run_id"]
    rb = json.loads((b / "submission.json").read_text())["seed_results"][0]["run_id"]
    assert ra == "same_20260101_000000_s1" and rb == "same_20260101_000000_s1_2"


@pytest.mark.slow
def test_frontier_preset_end_to_end_shrunk(tmp_path, monkeypatch):
    """PRESET=frontier through the real stages, shrunk to CPU size but with every switch on: depth loops,
    parallel lanes, XSA, sparse gates, document attention, Polar-Express Muon, GPTQ + SDClip + LQER,
    brotli with sorted_t, and phased TTT scoring the round-tripped artifact."""
    data, vocab = _byte_data(tmp_path, monkeypatch, val_docs=3)
    settings = {"data_path": str(data), "vocab_size": vocab, "iterations": 4, "max_wallclock_seconds": 0.0,
                "num_layers": 4, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "mlp_mult": 2.0,
                "loop_start": 1, "loop_end": 2, "enable_looping_at": 0.5, "parallel_start_layer": 3, "xsa_last_n": 4,
                "train_seq_len": 64, "train_batch_tokens": 512, "eval_stride": 32, "compile_warmup_steps": 0,
                "quant_min_numel": 256, "quant_calib_batches": 1, "quant_calib_seqs": 2, "lqer_top_k": 2,
                "ttt_lora_rank": 4, "ttt_batch_size": 2, "phased_ttt_prefix_docs": 1, "phased_ttt_num_phases": 1}
    stages = RU.Stages()
    stages.echo = False
    dest = P.submit(name="frontier", preset="frontier", settings=settings, records_dir="records", stages=stages,
                    use_cache=False)
    sub, problems = R.validate_record(dest)
    assert problems == [], problems
    cfg = sub["config"]
    assert (cfg["quant_scheme"], cfg["compressor"], cfg["quant_layout"], cfg["ttt"]) == ("gptq", "brotli", "sorted_t", "phased")
    assert cfg["doc_attention"] and cfg["doc_packing"] == 1 and cfg["num_loops"] == 2 and cfg["lqer_rank"] == 4 and cfg["muon_ns"] == "polar"
    r0 = sub["seed_results"][0]
    assert 0 < sub["val_bpb"] < 20 and r0["steps"] == 4
    log = next(dest.glob("train_seed*.log")).read_text()
    assert "looping:on" in log and "final_ttt_phased_exact" in log
    assert missing_lines(log) == []  # the challenge export accepts a phased-TTT score line
