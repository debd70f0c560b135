"""golf.submit.leaderboard: validation, sorting per track, invalid records listed with why, ablations."""
import json

from submit.test_records import make_record

from golf.submit import leaderboard as L


def test_leaderboard_sorts_per_track_and_lists_invalid(tmp_path):
    root = tmp_path / "records"
    make_record(root / "cpu_tiny" / "2026-01-02_slow", bpbs=(1.60, 1.62))
    make_record(root / "cpu_tiny" / "2026-01-01_fast", bpbs=(1.40, 1.42))
    make_record(root / "track_10min_16mb" / "2026-01-03_gpu", bpbs=(1.20, 1.22))
    make_record(root / "cpu_tiny" / "2026-01-04_huge", bpbs=(1.00, 1.00), bytes_total=16_500_000)
    make_record(root / "cpu_tiny" / "2026-01-05_liar", bpbs=(1.50, 1.52), val_bpb=1.1)
    (root / "cpu_tiny" / ".tmp_half.tmp").mkdir()  # an interrupted write is not a record
    out, n_ok, n_bad = L.build(root)
    assert out == root / "LEADERBOARD.md" and (n_ok, n_bad) == (3, 2)
    text = out.read_text()
    assert text.index("## track_10min_16mb") < text.index("## cpu_tiny")  # the challenge track first
    tiny = text[text.index("## cpu_tiny"):text.index("## Invalid")]
    assert tiny.index("[fast]") < tiny.index("[slow]")
    assert "| Run | Score | Author | Summary | Date | Info |" in text
    assert "| [fast](cpu_tiny/2026-01-01_fast) | 1.4100 ± " in text
    assert "a \\| b" in text  # pipes in a blurb do not break the table
    invalid = text[text.index("## Invalid"):]
    assert "2026-01-04_huge" in invalid and "over the 16,000,000-byte cap" in invalid
    assert "2026-01-05_liar" in invalid and "not the mean" in invalid
    assert "[huge]" not in text and "half" not in text


def test_leaderboard_lists_ablations(tmp_path):
    root = tmp_path / "records"
    folder = root / "ablations" / "2026-01-01_memtok"
    folder.mkdir(parents=True)
    rec = {"name": "memtok", "date": "2026-01-01", "seeds": [1, 2, 3],
           "A": {"settings": ["NUM_MEMORY_TOKENS=0"]}, "B": {"settings": ["NUM_MEMORY_TOKENS=8"]},
           "comparison": {"mean_diff_bpb": -0.0123, "mean_diff_nats": -0.02, "p_paired": 0.004,
                          "meets_challenge_bar": True, "meets_practice_bar": True}}
    (folder / "ablation.json").write_text(json.dumps(rec))
    for arm, params, tok_s in (("A", 1000, [100.0, 300.0]), ("B", 1200, [50.0, 70.0])):
        for seed, t in zip((1, 2), tok_s):
            (folder / f"{arm}_metrics_seed{seed}.json").write_text(json.dumps({"params": params, "tokens_per_s": t}))
            (folder / f"{arm}_size_seed{seed}.json").write_text(json.dumps({"bytes_total": params * 2 + seed}))
    out, n_ok, n_bad = L.build(root, tmp_path / "LB.md")
    text = out.read_text()
    assert (n_ok, n_bad) == (0, 0)
    assert "No valid records yet" in text
    assert "| [memtok](ablations/2026-01-01_memtok/README.md) | `NUM_MEMORY_TOKENS=0` | `NUM_MEMORY_TOKENS=8` | -0.0123 |" in text
    # the cost side, averaged over seeds per arm
    assert "| 1,000 → 1,200 | 2,002 → 2,402 | 200 → 60 |" in text


def test_cli_writes_file(tmp_path, capsys):
    root = tmp_path / "records"
    make_record(root / "cpu_tiny" / "2026-01-01_a")
    assert L.main(["--records", str(root)]) == 0
    assert (root / "LEADERBOARD.md").is_file()
    assert "1 valid record(s), 0 invalid" in capsys.readouterr().out


def test_one_bad_record_is_listed_and_never_stops_the_leaderboard(tmp_path):
    """Hostile records: each is listed as invalid with a reason and the good one is still ranked."""
    root = tmp_path / "records"
    make_record(root / "cpu_tiny" / "2026-01-01_good", bpbs=(1.40, 1.42))
    make_record(root / "cpu_tiny" / "2026-01-02_strbpb", val_bpb="1.41")
    make_record(root / "cpu_tiny" / "2026-01-03_strseed", seed_results=[{"seed": 1, "val_bpb": "x", "val_loss": 2.5,
                                                                           "bytes_total": "big"}], seeds=[1])
    make_record(root / "cpu_tiny" / "2026-01-04_listy", seeds="1,2", seed_results={"1": {}})
    make_record(root / "cpu_tiny" / "2026-01-05_nulls", config=None, data=[], bytes_total=None)
    (root / "cpu_tiny" / "2026-01-06_notjson").mkdir(parents=True)
    (root / "cpu_tiny" / "2026-01-06_notjson" / "submission.json").write_text("[1, 2")
    (root / "cpu_tiny" / "2026-01-07_array").mkdir(parents=True)
    (root / "cpu_tiny" / "2026-01-07_array" / "submission.json").write_text("[1, 2]")
    abl = root / "ablations"
    for name, body in (("2026-01-01_noA", {"B": {"settings": []}, "comparison": {}}), ("2026-01-02_list", [1]),
                       ("2026-01-03_strcmp", {"A": {"settings": "x"}, "B": {"settings": []},
                                               "comparison": {"mean_diff_bpb": "big"}})):
        (abl / name).mkdir(parents=True)
        (abl / name / "ablation.json").write_text(json.dumps(body))
    out, n_ok, n_bad = L.build(root)
    text = out.read_text()
    assert n_ok == 1 and "[good]" in text
    invalid = text[text.index("## Invalid"):]
    for name in ("strbpb", "strseed", "listy", "nulls", "notjson", "array", "noA", "list", "strcmp"):
        assert name in invalid, name


def test_memory_studies_are_listed_apart_and_malformed_ones_flagged(tmp_path):
    """records/studies/ is not a track: a study.json of the right shape gets a row in its own table,
    any other is listed as invalid; neither is ranked or stops the leaderboard."""
    root = tmp_path / "records"
    make_record(root / "cpu_tiny" / "2026-01-01_good")
    good = {"kind": "study", "name": "mem", "date": "2026-01-02", "seeds": [1, 2], "contexts": [256, 512],
            "baseline": "base", "arms": {"base": {"settings": [], "val_bpb": 1.5},
                                         "rmt": {"settings": ["RMT_MEMORY=8"], "val_bpb": 1.4}},
            "comparisons": {"rmt": {"headline": {"mean_diff_bpb": -0.1, "p_paired": 0.02}}}}
    bad = {"no_arms": {**good, "arms": {"base": good["arms"]["base"]}}, "not_study": {**good, "kind": "ablation"},
           "no_base": {**good, "baseline": "x"}, "str_bpb": {**good, "arms": {**good["arms"], "rmt": {"settings": [],
                                                                                                     "val_bpb": "1.4"}}},
           "list": [1, 2]}
    deficit = {c: {"summary_deficit": d, "mechanisms": {"rmt": {"summary_closure": cl}, "ttt": {"summary_closure": None}}}
               for c, d, cl in (("256", 0.01, 0.25), ("1024", 0.03, 0.5), ("512", 0.02, 0.4))}
    for name, body in [("2026-01-02_mem", good), ("2026-01-02_mem2", {**good, "name": "mem2", "deficit": deficit})] + [(f"2026-01-03_{k}", v) for k, v in bad.items()]:
        (root / "studies" / name).mkdir(parents=True)
        (root / "studies" / name / "study.json").write_text(json.dumps(body))
    (root / "studies" / "2026-01-04_empty").mkdir()
    out, n_ok, n_bad = L.build(root)
    text = out.read_text()
    assert (n_ok, n_bad) == (1, 6)
    assert "| [mem](studies/2026-01-02_mem/README.md) | base, rmt | base | rmt -0.1000, p 0.02 | - | 256,512 | 2 | 2026-01-02 |" in text
    # the longest context's deficit and closures (1024 sorts before 256 and 512 as a string)
    assert "| rmt -0.1000, p 0.02 | ctx 1024: deficit +0.0300; closure rmt 0.50, ttt NA | 256,512 |" in text
    invalid = text[text.index("## Invalid"):]
    for k in list(bad) + ["empty"]:
        assert f"studies/2026-01-0{3 if k != 'empty' else 4}_{k}" in invalid, k
    assert "fewer than two arms" in invalid and "baseline is not one of its arms" in invalid
    assert "## cpu_tiny" in text and "studies" not in text[text.index("## cpu_tiny"):text.index("## Memory studies")]
