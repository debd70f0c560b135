"""`make verify`: re-score a record's artifact, or rebuild it from the record's commit and config."""
from __future__ import annotations

from pathlib import Path

from golf.core.config import BYTES_CAP, from_dict
from golf.core.utils import GolfError, git_commit, now_stamp
from golf.submit import records as R
from golf.submit.runs import Stages, ensure_data, read_json, say, unique_run_id
from golf.submit.settings import config_env, parse_seeds


def verify(
    record: str | Path,
    artifact: str | Path | None = None,
    seeds: str | None = None,
    tolerance: float | None = None,
    data_path: str | None = None,
    stages: Stages | None = None,
) -> bool:
    """Re-evaluate a record's artifact (given, or rebuilt from commit + config) and check its claims."""
    stages = stages or Stages()
    folder = Path(record)
    if not folder.is_dir():
        raise GolfError(f"{folder} is not a record folder; pass RECORD=records/<track>/<date>_<name>")
    sub, problems = R.validate_record(folder)
    if sub is None:
        raise GolfError(f"{folder}: {problems[0]}")
    ok = True
    for p in problems:
        say(f"FAIL record check: {p}")
        ok = False
    by_seed = {r["seed"]: r for r in sub.get("seed_results", []) if isinstance(r, dict) and "seed" in r}
    # every seed unless asked otherwise: a record is its mean, so one honest seed proves nothing
    seed_list = sorted(by_seed) if seeds in (None, "", "all") else parse_seeds(seeds, sub["seeds"][0])
    for s in seed_list:
        if s not in by_seed:
            raise GolfError(f"{folder}: seed {s} is not in the record (seeds {sub['seeds']})")
    h0 = from_dict({k: v for k, v in sub["config"].items()}, f"{folder}/submission.json config")
    if data_path:
        h0.data_path = data_path
    stamp = now_stamp()
    if artifact is not None:
        if seeds in (None, "", "all") and len(seed_list) == 1:
            pass
        elif len(seed_list) != 1:
            raise GolfError("--artifact is one seed's artifact: pass one --seeds value with it (SEEDS=<seed>)")
        tol = 1e-4 if tolerance is None else tolerance
    else:
        tol = 0.01 if tolerance is None else tolerance
        have, want = git_commit(), str(sub["commit"])
        if have != want or want.endswith("+dirty"):
            raise GolfError(
                f"the record was made at commit {want} but this tree is at {have}; run "

                f"`git checkout {want.replace('+dirty', '')}` (with a clean tree) and verify again, "
                f"or pass ARTIFACT=<model.ptz> to check an artifact you have"
            )
        ensure_data(h0, stages, Path(h0.out_dir) / f"prepare_{stamp}.log")
    measured: dict[int, float] = {}
    for s in seed_list:
        claim = by_seed[s]
        h = from_dict(h0.to_dict())
        h.seed, h.run_id = s, unique_run_id(h.out_dir, f"verify_{sub['name']}_{stamp}_s{s}")
        h.finalize()
        run_dir = Path(h.out_dir) / h.run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        log, env = run_dir / "pipeline.log", config_env(h)
        if artifact is None:
            say(f"seed {s}: rebuilding the artifact from commit {sub['commit']} + the record's config")
            stages.run(env, run_dir, log)  # train -> export -> score: eval.json scores the rebuilt artifact
            size = read_json(run_dir / "size.json")
            size_total = size.get("bytes_total")
            code = size.get("bytes_code")
            if claim.get("bytes_code") is not None and code != claim.get("bytes_code"):
                say(f"FAIL seed {s}: bytes_code {code} vs claimed {claim.get('bytes_code')} (the same commit and "
                    f"config build the same train_gpt.py)")
                ok = False
        else:
            art = Path(artifact)
            if not art.is_file():
                raise GolfError(f"artifact {art} not found")
            size_total = art.stat().st_size + int(sub.get("bytes_code") or 0)
            stages.evaluate(env, h, art, run_dir / "eval.json", log)
        ev = read_json(run_dir / "eval.json")
        got = ev.get("val_bpb")
        if not isinstance(got, (int, float)):
            raise GolfError(f"{run_dir / 'eval.json'} has no val_bpb; see {log}")
        measured[s] = float(got)
        diff = got - claim["val_bpb"]
        good = abs(diff) <= tol
        say(f"{'PASS' if good else 'FAIL'} seed {s}: val_bpb {got:.6f} vs claimed {claim['val_bpb']:.6f} "
            f"(diff {diff:+.2e}, tolerance {tol:g})")
        ok &= good
        if not isinstance(size_total, int):
            say(f"FAIL seed {s}: no size could be measured")
            ok = False
        else:
            # rebuilt weights may differ in the last bits across machines: 0.5% of the claim, and under the cap
            fits = size_total <= BYTES_CAP and abs(size_total - claim["bytes_total"]) <= 0.005 * claim["bytes_total"]
            say(f"{'PASS' if fits else 'FAIL'} seed {s}: bytes_total {size_total:,} (cap {BYTES_CAP:,}; "
                f"claimed {claim['bytes_total']:,})")
            ok &= fits
    if set(measured) == set(by_seed):  # every seed re-measured: the headline mean too
        mean = sum(measured.values()) / len(measured)
        good = abs(mean - float(sub["val_bpb"])) <= tol
        say(f"{'PASS' if good else 'FAIL'} mean val_bpb {mean:.6f} vs claimed {float(sub['val_bpb']):.6f}")
        ok &= good
    say(f"verdict: {'VERIFIED' if ok else 'NOT VERIFIED'} ({folder})")
    return ok
