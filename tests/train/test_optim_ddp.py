"""Sharded Muon (golf/train/optim.py) on 2 gloo ranks: each rank orthogonalises its share of the matrices,
the updates are all-gathered, and the result equals a single-process Muon on the same gradients,
across a resume from rank 0's optimizer state_dict (what train.py checkpoints)."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import torch
from distkit import free_port, start_ranks, wait_ranks
from torch import nn

from golf.train.optim import Muon

ROOT = Path(__file__).resolve().parents[2]

# an odd number of matrices, mixed shapes: two sizes shared by transposed shapes (one bucket each),
# a lone matrix (fewer than the ranks), a 3-D tensor seen as 8x24, two param groups
SHAPES = [(64, 32), (32, 64), (64, 32), (48, 48), (16, 80), (80, 16), (8, 4, 6), (64, 32), (12, 20)]
GROUP2 = 6  # params[GROUP2:] form a second group with their own lr / weight decay
STEPS, RESUME_AT, NO_GRAD = 6, 3, (2, 1)  # at step 2 param 1 has no gradient (on every rank)


def make_params() -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def make_opt(params, **kw) -> Muon:
    return Muon([{"params": params[:GROUP2]}, {"params": params[GROUP2:], "lr": 0.03, "weight_decay": 0.0}],
                lr=0.05, momentum=0.9, weight_decay=0.2, **kw)


def set_grads(params, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)  # the same "all-reduced" gradients on every rank
    for i, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g)
        p.grad = None if (step, i) == NO_GRAD else grad


def schedule(opt, step: int) -> None:  # as apply_schedule: lr and momentum change between steps
    for grp, base in zip(opt.param_groups, (0.05, 0.03)):
        grp["lr"] = base * (1.0 - 0.1 * step)
        grp["momentum"] = 0.85 + 0.02 * step


WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    import torch.distributed as dist
    import golf.train.optim as optim
    from train.test_optim_ddp import NO_GRAD, RESUME_AT, STEPS, make_opt, make_params, schedule, set_grads

    torch.set_num_threads(1)
    out, kw = sys.argv[1], json.loads(sys.argv[2])  # kw: Muon's options (ns, row_normalize)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + os.environ["MASTER_PORT"],
                            rank=rank, world_size=world)
    ns_calls = []
    plain_ns = optim.zeropower_via_newtonschulz5

    def counting_ns(G, *a, **kw):
        ns_calls.append(tuple(G.shape))
        return plain_ns(G, *a, **kw)

    params, ref = make_params(), make_params()
    opt, ref_opt = make_opt(params, **kw), make_opt(ref, shard=False, **kw)  # ref: the unsharded step, same process
    for step in range(STEPS):
        if step == RESUME_AT:  # resume: every rank loads rank 0's saved state into a fresh optimizer
            if rank == 0:
                torch.save(opt.state_dict(), out + ".opt.pt")
            dist.barrier()
            opt = make_opt(params, **kw)
            opt.load_state_dict(torch.load(out + ".opt.pt"))
        for o, ps in ((opt, params), (ref_opt, ref)):
            schedule(o, step)
            set_grads(ps, step)
        optim.zeropower_via_newtonschulz5 = counting_ns
        opt.step()
        optim.zeropower_via_newtonschulz5 = plain_ns
        ref_opt.step()
    bufs = [opt.state[p]["momentum_buffer"] for p in params]
    torch.save(dict(params=[p.detach() for p in params], bufs=bufs, ref=[p.detach() for p in ref],
                    ref_bufs=[ref_opt.state[p]["momentum_buffer"] for p in ref], ns_calls=ns_calls),
               f"{out}.rank{rank}.pt")
    dist.destroy_process_group()
''')


def _single_process_reference(**kw):
    """A plain single-process Muon (no process group) on the same gradients and schedule."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: same float reductions
    try:
        params = make_params()
        opt = make_opt(params, **kw)
        for step in range(STEPS):
            schedule(opt, step)
            set_grads(params, step)
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return params, opt


# the Polar-Express coefficients and MuonEq-R row normalisation run inside each rank's share of the work
@pytest.mark.parametrize("kw", [{}, {"ns": "polar", "row_normalize": True}], ids=["classic", "polar_rownorm"])
def test_sharded_muon_two_gloo_ranks_match_single_process(tmp_path, kw):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1",
           "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    out = str(tmp_path / "res")
    procs = start_ranks([str(worker), out, json.dumps(kw)], env, ROOT)
    params, opt = _single_process_reference(**kw)  # meanwhile
    wait_ranks(procs, timeout=60)
    r0, r1 = (torch.load(f"{out}.rank{r}.pt") for r in range(2))

    # both ranks end bit-identical (each update is computed once and copied), momentum included
    for a, b in zip(r0["params"] + r0["bufs"], r1["params"] + r1["bufs"]):
        assert torch.equal(a, b)
    # ... and bit-identical to the unsharded step run in the same process
    for key, ref in (("params", "ref"), ("bufs", "ref_bufs")):
        for a, b in zip(r0[key], r0[ref]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ... and to a single process without any process group
    for a, p in zip(r0["params"], params):
        torch.testing.assert_close(a, p.detach(), rtol=1e-6, atol=1e-7)
    for a, p in zip(r0["bufs"], params):
        torch.testing.assert_close(a, opt.state[p]["momentum_buffer"], rtol=1e-6, atol=1e-7)
    assert all(not torch.equal(a, b) for a, b in zip(r0["params"], make_params()))  # they did move

    # the NS5 work was split: every matrix orthogonalised exactly once per step, by one rank
    n0, n1 = len(r0["ns_calls"]), len(r1["ns_calls"])
    assert n0 + n1 == STEPS * len(SHAPES) - 1  # one matrix had no gradient at one step
    assert abs(n0 - n1) <= STEPS
    assert n0 > 0 and n1 > 0

