"""golf.submit.study (make study) end to end with fake stages: arms x seeds run, per-context scores,
paired tests against the baseline, the deficit / closure tables against hand-computed numbers, the
run cache reused on a rerun, bad arms and taken names refused before any stage runs, probes, CLI."""
import json
import math
import os

import pytest
from submit.test_pipeline import FakeStages, tiny_folder

from golf.core.utils import GolfError
from golf.submit import cli as CLI
from golf.submit import leaderboard as L
from golf.submit import runs as RU
from golf.submit import stats
from golf.submit import study as ST
from golf.submit import study_report as SR

SWA = "MIXERS=swa_pattern ATTN_WINDOW=64 GLOBAL_EVERY=4"
ARMS = f"base=;sssl={SWA};rmt={SWA} RMT_MEMORY=8"


class StudyStages(FakeStages):
    """FakeStages whose headline loss depends on the arm and whose per-context report has 64-token
    position buckets: global 2.0 - 0.01 i; local stops improving after its 64-token window (deficit
    0.01 (i - 1) beyond it); RMT on the local arm wins back half of that, +-0.002 across seeds."""

    def _train(self, env, run_dir, log):
        super()._train(env, run_dir, log)
        seed, swa, rmt = int(env["SEED"]), env["MIXERS"] == "swa_pattern", int(env["RMT_MEMORY"]) > 0
        d = json.loads((run_dir / "final.pt").read_text())
        d["loss"] += 0.03 * swa + 0.001 * seed * seed * swa - 0.02 * rmt + 0.002 * seed * rmt
        (run_dir / "final.pt").write_text(json.dumps(d))
        m = json.loads((run_dir / "metrics.json").read_text())
        m["params"] += 128 * int(env["RMT_MEMORY"])  # RMT's memory embeddings
        (run_dir / "metrics.json").write_text(json.dumps(m))

    def evaluate(self, env, h, artifact, out_json, log):
        if h is None or not h.eval_contexts:
            return super().evaluate(env, h, artifact, out_json, log)
        self._maybe_fail("contexts", env)
        ctxs = {}
        for c in [int(x) for x in h.eval_contexts.split(",")] + [h.eval_seq_len]:
            ctxs[str(c)] = {"val_bpb": None, "position_bpb": {"start": [], "end": [], "bpb": []}}
            for i in range(c // 64):
                pb = ctxs[str(c)]["position_bpb"]
                pb["start"].append(64 * i), pb["end"].append(64 * i + 64), pb["bpb"].append(bucket(h, i))
            ctxs[str(c)]["val_bpb"] = sum(pb["bpb"]) / len(pb["bpb"])
        out_json.write_text(json.dumps({"val_bpb": 9.0, "contexts": ctxs, "tokens": 5000, "max_tokens": 0}))


def bucket(h, i):
    b = 2.0 - 0.01 * i + 0.001 * h.seed
    if "swa" in h.mixers:
        deficit = 0.01 * (i - min(i, 1))
        b += deficit
        if h.rmt_memory:
            b -= 0.5 * deficit + (0.002 * (h.seed - 2) if deficit else 0)
    return b


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ST, "device_description", lambda: "cpu (2 cores, x86_64)")
    monkeypatch.setattr(RU, "code_version", lambda: "c0ffee")  # uncommitted edits change under parallel work
    for k in list(os.environ):
        if k in ("PRESET", "SEED", "NUM_LAYERS", "NPROC"):
            monkeypatch.delenv(k)
    tiny_folder(tmp_path / RU.DEFAULT_DATA_PATH)
    return tmp_path


def run(st, name="mem", **kw):
    args = dict(arms=ARMS, baseline="base", contexts="256,512", seeds="1,2,3", preset="tiny", local="sssl",
                global_="base", records_dir="records", stages=st)
    return ST.study(name, **{**args, **kw})


def test_the_grid_runs_every_arm_and_seed_and_records_tables_tests_and_closure(ws):
    st = StudyStages()
    dest = run(st, common="ITERATIONS=5")
    assert dest.resolve().parent == ws / "records" / "studies" and dest.name.endswith("_mem")
    assert sorted((c[1].rsplit("_", 2)[1], c[2]) for c in st.trained()) == sorted(
        (a, s) for a in ("base", "sssl", "rmt") for s in (1, 2, 3))
    assert len([c for c in st.calls if c[0] == "contexts"]) == 9
    rec = json.loads((dest / "study.json").read_text())
    assert rec["seeds"] == [1, 2, 3] and rec["contexts"] == [256, 512] and rec["window"] == 64
    assert rec["common_settings"] == ["ITERATIONS=5"] and rec["arms"]["rmt"]["role"] == "mechanism"
    assert rec["arms"]["base"]["role"] == "baseline+global" and rec["arms"]["sssl"]["config"]["mixers"] == "swa_pattern"
    # paired tests against the baseline, recomputed from the recorded per-seed numbers
    base, sssl = rec["arms"]["base"], rec["arms"]["sssl"]
    want = stats.compare_arms(*[[r[k] for r in arm["seed_results"]] for k, arm in
                                (("val_loss", base), ("val_loss", sssl), ("val_bpb", base), ("val_bpb", sssl))])
    got = rec["comparisons"]["sssl"]["headline"]
    assert got["p_paired"] == pytest.approx(want["p_paired"]) and 0 < got["p_paired"] < 1
    assert got["mean_diff_nats"] == pytest.approx(0.03 + 0.001 * (1 + 4 + 9) / 3)
    c512 = rec["comparisons"]["rmt"]["contexts"]["512"]
    rmt_ctx = [sum(bucket(_H(s, True, 8), i) for i in range(8)) / 8 for s in (1, 2, 3)]
    base_ctx = [sum(bucket(_H(s, False, 0), i) for i in range(8)) / 8 for s in (1, 2, 3)]
    assert rec["arms"]["rmt"]["contexts"]["512"]["val_bpb"] == pytest.approx(rmt_ctx)
    assert c512["mean_diff_bpb"] == pytest.approx(stats.mean(rmt_ctx) - stats.mean(base_ctx))
    assert c512["p_paired"] == pytest.approx(stats.paired_t(base_ctx, rmt_ctx)["p"])
    # the deficit and closure by hand: deficit 0.01 (i - 1) beyond the window, RMT closes half of it
    t = rec["deficit"]["256"]
    assert t["buckets"] == [[0, 64], [64, 128], [128, 192], [192, 256]] and t["beyond_window"] == [False, True, True, True]
    assert t["deficit"]["mean"] == pytest.approx([0, 0, 0.01, 0.02], abs=1e-12)
    assert t["deficit"]["std"] == pytest.approx([0, 0, 0, 0], abs=1e-12)
    m = t["mechanisms"]["rmt"]
    assert m["gain"]["mean"] == pytest.approx([0, 0, 0.005, 0.01], abs=1e-12)
    assert m["gain"]["std"] == pytest.approx([0, 0, 0.002, 0.002])
    assert m["closure"][:2] == [None, None] and m["closure"][2:] == pytest.approx([0.5, 0.5])
    assert m["summary_closure"] == pytest.approx(0.5) and m["summary_buckets"] == 2
    assert rec["deficit"]["512"]["mechanisms"]["rmt"]["summary_buckets"] == 6
    assert list(rec["deficit"]["512"]["mechanisms"]) == ["rmt"]
    for f in ("README.md", "bpb_by_position.png", "deficit_closure.png", "rmt_contexts_seed3.json", "base_train_seed1.log"):
        assert (dest / f).is_file() and f in rec["files"], f
    readme = (dest / "README.md").read_text()
    n = 1000 * rec["arms"]["base"]["config"]["num_layers"]
    assert rec["arms"]["base"]["params"] == n and rec["arms"]["rmt"]["params"] == n + 1024
    assert f"| {n:,} | " in readme and f"| {n + 1024:,} | " in readme
    assert "| rmt | mechanism |" in readme and "## Deficit and closure" in readme and "scored on: the whole val" in readme
    assert "summary closure: rmt 0.500" in readme and "| 128-192 | +0.0100 ± 0.0000 | +0.0050 ± 0.0020 | 0.500 |" in readme
    sorted_swa = "ATTN_WINDOW=64 GLOBAL_EVERY=4 MIXERS=swa_pattern"  # settings in name order
    assert f"ARMS='base=;sssl={sorted_swa};rmt={sorted_swa} RMT_MEMORY=8' BASELINE=base" in readme
    assert ST.parse_arms(f"base=;sssl={sorted_swa};rmt={sorted_swa} RMT_MEMORY=8") == ST.parse_arms(ARMS)
    assert "LOCAL=sssl GLOBAL=base FLOOR=0.005" in readme and "COMMON=ITERATIONS=5" in readme
    out, n_ok, n_bad = L.build(ws / "records")
    assert n_bad == 0 and "## Memory studies" in out.read_text() and f"[mem](studies/{dest.name}/README.md)" in out.read_text()


class _H:
    """The few settings bucket() reads."""

    def __init__(self, seed, swa, rmt):
        self.seed, self.mixers, self.rmt_memory = seed, "swa_pattern" if swa else "", rmt


def test_a_rerun_reuses_every_run_and_its_context_scores(ws):
    st = StudyStages()
    run(st, seeds="1,2")
    calls = len(st.calls)
    dest = run(st, name="again", seeds="1,2")
    assert len(st.calls) == calls  # nothing trained or scored again
    rec = json.loads((dest / "study.json").read_text())
    assert all(len(a["reused_runs"]) == 2 for a in rec["arms"].values())
    assert "(2 cached)" in (dest / "README.md").read_text()
    run(st, name="more", seeds="1,2", contexts="256,1024")  # a new context: scored again, not retrained
    assert len(st.trained()) == 6 and len([c for c in st.calls if c[0] == "contexts"]) == 12


@pytest.mark.parametrize("over,match", [
    (dict(arms="base=;x=SMEAR_GATES=0"), "arm x: unknown setting 'SMEAR_GATES'; did you mean SMEAR_GATE"),
    (dict(arms="base=;x=MIXERS=foo"), "ARMS arm x: MIXERS: unknown mixer 'foo'"),
    (dict(arms="base=;ATTN_WINDOW=64"), "does not start with an arm name"),
    (dict(arms="base=;base=NUM_LAYERS=3"), "named twice"),
    (dict(arms="base="), "at least two arms"),
    (dict(baseline="nope"), "BASELINE='nope' is not one of the arms"),
    (dict(global_=None), "LOCAL and GLOBAL go together"),
    (dict(local="base"), "LOCAL and GLOBAL are both 'base'"),
    (dict(contexts=""), "CONTEXTS is empty"),
    (dict(contexts="256,x"), "context length 'x' is not an integer"),
    (dict(common="NUM_LAYRES=3"), "COMMON: unknown setting"),
    (dict(seeds="1,1"), "distinct seeds"),
])
def test_bad_input_is_refused_before_any_stage_runs(ws, over, match):
    st = StudyStages()
    if "arms" in over:  # arms without sssl: no deficit table
        over = dict(local=None, global_=None, **over)
    with pytest.raises(GolfError, match=match):
        run(st, **over)
    assert st.calls == [] and not (ws / "runs").exists() and not (ws / "records" / "studies").exists()


def test_a_taken_name_is_refused_before_any_stage_runs(ws):
    (ws / "records" / "studies" / "2020-01-01_mem").mkdir(parents=True)
    st = StudyStages()
    with pytest.raises(GolfError, match="a study named 'mem' already exists"):
        run(st)
    assert st.calls == []


def test_cli_with_probes_and_without_a_local_arm(ws, monkeypatch):
    monkeypatch.setattr(RU, "Stages", StudyStages)
    seen = []

    def fake_probes(artifact, out, contexts, device="cpu"):
        seen.append((artifact.parent.name, tuple(contexts)))
        out.mkdir(parents=True)
        (out / "passkey.json").write_text("{}")
        return {"passkey": {"mean_accuracy": 0.25 if "mem" in str(out) else 0.0}}

    monkeypatch.setattr(ST, "probe_artifact", fake_probes)
    monkeypatch.setattr(ST, "Stages", StudyStages)
    argv = ["study", "--name", "cli", "--arms", "base=;mem=NUM_MEMORY_TOKENS=0", "--baseline", "base",
            "--contexts", "256", "--seeds", "2", "--preset", "tiny", "--probes"]
    assert CLI.main(argv) == 0
    dest = next((ws / "records" / "studies").iterdir())
    rec = json.loads((dest / "study.json").read_text())
    assert len(seen) == 4 and {c for _, c in seen} == {(256,)}
    assert rec["deficit"] is None and rec["probes"] == {"base": {"passkey": [0.0, 0.0]}, "mem": {"passkey": [0.25, 0.25]}}
    assert "probes/mem_s2/passkey.json" in rec["files"] and (dest / "probes" / "mem_s2" / "passkey.json").is_file()
    readme = (dest / "README.md").read_text()
    assert "| mem | 0.250 |" in readme and "PROBES=1" in readme and "Deficit" not in readme
    assert not math.isnan(rec["comparisons"]["mem"]["headline"]["p_paired"])
    assert not (dest / "deficit_closure.png").exists()


def test_rerender_rebuilds_tables_from_the_records_own_files(ws, monkeypatch):
    """An older record (no parameter counts, a deficit table by an older rule) is rebuilt from its own
    contexts and metrics files; runs, scores and paired tests are untouched; the record says why."""
    dest = run(StudyStages(), seeds="1,2")
    new = json.loads((dest / "study.json").read_text())
    old = json.loads(json.dumps(new))
    for arm in old["arms"].values():
        arm.pop("params")
        for r in arm["seed_results"]:
            r.pop("params")
    old["deficit"]["256"]["mechanisms"]["rmt"]["closure"] = [1.5] * 4  # what the old rule wrote
    old["files"].remove("deficit_closure.png")  # as if written without matplotlib
    (dest / "study.json").write_text(json.dumps(old))
    monkeypatch.setattr(SR, "git_commit", lambda: "abc123")
    CLI.main(["study-rerender", "--record", str(dest), "--why", "closure NA below the floor", "--note", "RMT helps."])
    got = json.loads((dest / "study.json").read_text())
    assert got["deficit"] == new["deficit"] and got["comparisons"] == new["comparisons"]
    assert sorted(got["files"]) == sorted(new["files"])
    assert got["arms"]["rmt"]["params"] == new["arms"]["rmt"]["params"] > new["arms"]["base"]["params"]
    assert [r["params"] for r in got["arms"]["rmt"]["seed_results"]] == [new["arms"]["rmt"]["params"]] * 2
    assert got["rerendered"] == [{"commit": "abc123", "date": got["rerendered"][0]["date"], "why": "closure NA below the floor"}]
    readme = (dest / "README.md").read_text()
    assert "re-rendered from these runs at commit `abc123`" in readme and "closure NA below the floor" in readme
    assert got["notes"] == ["RMT helps."] and "## Reading\n\n- RMT helps.\n" in readme
    assert f"| {new['arms']['rmt']['params']:,} |" in readme and not list(dest.glob(".rerender_*"))
    with pytest.raises(GolfError, match="say why"):
        CLI.main(["study-rerender", "--record", str(dest), "--why", " "])
    (dest / "rmt_contexts_seed2.json").unlink()
    with pytest.raises(GolfError, match="rmt_contexts_seed2.json is missing"):
        CLI.main(["study-rerender", "--record", str(dest), "--why", "again"])
    assert json.loads((dest / "study.json").read_text()) == got  # a failed re-render changes nothing
