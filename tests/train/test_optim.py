"""golf/train/optim.py: Newton-Schulz orthogonalisation, Muon's update, routing of parameters to groups."""
import pytest
import torch
from torch import nn

import golf.train.optim as optim
from golf.core.config import load_config
from golf.core.utils import GolfError
from golf.model.gpt import GPT
from golf.model.mixer import tag
from golf.train.optim import (POLAR_EXPRESS_NS, Muon, apply_schedule, build_optimizers, param_groups, shard_plan,
                              zeropower_via_newtonschulz5)


def test_newton_schulz_is_near_orthogonal():
    torch.manual_seed(0)
    for shape in [(64, 64), (32, 96), (96, 32)]:
        # a gradient-like matrix with condition number 10 (a square Gaussian has a near-zero singular
        # value that no 5-step iteration lifts, by design)
        U, _, Vh = torch.linalg.svd(torch.randn(shape), full_matrices=False)
        G = U @ torch.diag(torch.logspace(-1, 0, min(shape))) @ Vh
        X = zeropower_via_newtonschulz5(G, steps=5)
        assert X.shape == G.shape
        s = torch.linalg.svdvals(X)
        # the quintic's fixed point band: singular values pushed into roughly [0.7, 1.2]
        assert s.min() > 0.6 and s.max() < 1.25, (shape, s.min(), s.max())
        # and it keeps the singular directions: X ~ U V^T of G
        cos = (X * (U @ Vh)).sum() / (X.norm() * (U @ Vh).norm())
        assert cos > 0.95


def test_newton_schulz_ignores_scale():
    G = torch.randn(16, 24)
    torch.testing.assert_close(zeropower_via_newtonschulz5(G), zeropower_via_newtonschulz5(1000 * G), rtol=1e-4, atol=1e-4)


def test_muon_step_matches_hand_computation():
    torch.manual_seed(1)
    p = nn.Parameter(torch.randn(48, 16))
    g1, g2 = torch.randn(48, 16), torch.randn(48, 16)
    opt = Muon([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.5)
    w = p.detach().clone()
    buf = torch.zeros_like(w)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + g
        u = zeropower_via_newtonschulz5(g + 0.9 * buf) * (48 / 16) ** 0.5  # tall: scaled up
        w = w * (1 - 0.1 * 0.5) - 0.1 * u
    torch.testing.assert_close(p.detach(), w)


def test_shard_plan_is_balanced_and_deterministic():
    f = torch.float32
    keys = [(2048, f), (2048, f), (512, f), (4096, f), (2048, f), (512, f), (2048, torch.bfloat16)]
    for world in (1, 2, 3, 4, 8):
        plan = shard_plan(keys, world)
        assert plan == shard_plan(list(keys), world)  # same keys -> same plan on every rank
        assert sorted(i for idx, _ in plan for i in idx) == list(range(len(keys)))  # each matrix once
        for idx, owners in plan:
            assert len({keys[i] for i in idx}) == 1  # a bucket holds one size (equal-size all_gather)
            assert idx == sorted(idx) and all(0 <= r < world for r in owners)
            counts = [owners.count(r) for r in range(world)]
            assert max(counts) - min(counts) <= 1
        sizes = [keys[idx[0]][0] for idx, _ in plan]
        assert sizes == sorted(sizes, reverse=True)  # largest first
        total = [sum(1 for _, owners in plan for r in owners if r == q) for q in range(world)]
        assert max(total) - min(total) <= 1  # the deal carries across buckets
    # 2 ranks: 4096 -> r0; three fp32 2048s -> r1, r0, r1; the bf16 2048 -> r0; two 512s -> r1, r0
    assert shard_plan(keys, 2) == [([3], [0]), ([0, 1, 4], [1, 0, 1]), ([6], [0]), ([2, 5], [1, 0])]


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = tag(nn.Parameter(torch.randn(32, 8)), quant="embed", optim="embed")
        self.w = nn.Parameter(torch.randn(8, 8))  # untagged 2-D -> matrix
        self.gain = nn.Parameter(torch.ones(8))  # untagged 1-D -> scalar
        self.mem = tag(nn.Parameter(torch.randn(4, 8)), quant="control", optim="memory")
        self.bad = tag(nn.Parameter(torch.ones(8)), optim="matrix")  # a vector cannot go to Muon


def test_groups_and_weight_decay():
    h = load_config([], env={})
    m = Toy()
    groups = {k: [n for n, _ in v] for k, v in param_groups(m).items()}
    assert groups == {"matrix": ["w"], "embed": ["emb"], "scalar": ["gain", "bad"], "memory": ["mem"]}
    adam, muon = build_optimizers(m, h)
    assert isinstance(muon, Muon) and isinstance(adam, torch.optim.AdamW)
    by_name = {g["name"]: g for g in adam.param_groups}
    assert by_name["memory"]["weight_decay"] == 0.0  # memory tokens are content: never decayed
    assert by_name["scalar"]["weight_decay"] == 0.0
    assert by_name["embed"]["weight_decay"] == h.adam_weight_decay
    assert by_name["memory"]["lr"] == h.memory_lr and by_name["embed"]["lr"] == h.embed_lr
    assert muon.param_groups[0]["lr"] == h.matrix_lr
    assert muon.param_groups[0]["weight_decay"] == h.muon_weight_decay
    apply_schedule([adam, muon], 0.5, 0.9)
    assert by_name["scalar"]["lr"] == 0.5 * h.scalar_lr and muon.param_groups[0]["lr"] == 0.5 * h.matrix_lr
    assert muon.param_groups[0]["momentum"] == 0.9
    # every parameter is optimised exactly once
    ids = [id(p) for o in (adam, muon) for g in o.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters())


def test_real_model_memory_tokens_in_memory_group():
    h = load_config(["--num-layers", "2", "--model-dim", "32", "--num-heads", "2", "--num-kv-heads", "1",
                     "--rope-dims", "8", "--num-memory-tokens", "4", "--vocab-size", "64", "--bigram-vocab-size", "0",
                     "--train-seq-len", "32", "--eval-stride", "32"], env={})
    groups = param_groups(GPT(h.model_config()))
    assert any("memory" in n for n, _ in groups["memory"]), groups["memory"]
    assert all(p.ndim == 2 for _, p in groups["matrix"])
    assert any("tok_emb" in n for n, _ in groups["embed"])


def ill_conditioned(shape, cond: float, seed: int = 0) -> torch.Tensor:
    """A matrix with log-spaced singular values from 1/cond to 1 (random singular vectors)."""
    g = torch.Generator().manual_seed(seed)
    U, _, Vh = torch.linalg.svd(torch.randn(shape, generator=g, dtype=torch.float64), full_matrices=False)
    s = torch.logspace(-torch.log10(torch.tensor(cond)).item(), 0, min(shape), dtype=torch.float64)
    return (U @ torch.diag(s) @ Vh).float()


def plain_ns(G: torch.Tensor, coeffs) -> torch.Tensor:
    """Reference: Frobenius-normalise, then X <- aX + (bA + cA^2)X, A = X X^T, on the wide side, in fp64."""
    X = G.double()
    X = X / (X.norm() + 1e-7)
    tall = X.size(0) > X.size(1)
    X = X.T if tall else X
    for a, b, c in coeffs:
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return (X.T if tall else X).float()


def test_polar_express_coefficients_are_the_records():
    # the 1.0611 record's (PR #1344 / #1787) five minimax tuples, first and last pinned
    assert len(POLAR_EXPRESS_NS) == 5
    assert POLAR_EXPRESS_NS[0] == (8.156554524902461, -22.48329292557795, 15.878769915207462)
    assert POLAR_EXPRESS_NS[4] == (2.3465413258596377, -1.7097828382687081, 0.42323551169305323)


@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32)])
def test_polar_express_equals_its_plain_loop_and_classic_is_unchanged(shape):
    G = ill_conditioned(shape, 100.0)
    for steps in (5, 3):
        torch.testing.assert_close(zeropower_via_newtonschulz5(G, steps=steps, ns="polar"),
                                   plain_ns(G, POLAR_EXPRESS_NS[:steps]), rtol=1e-4, atol=1e-4)
    # the default is still the fixed quintic, 5 times
    classic = plain_ns(G, [(3.4445, -4.7750, 2.0315)] * 5)
    torch.testing.assert_close(zeropower_via_newtonschulz5(G), classic, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(zeropower_via_newtonschulz5(G, ns="classic"), zeropower_via_newtonschulz5(G))


@pytest.mark.parametrize("cond", [100.0, 1000.0])
@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32)])
def test_polar_express_is_closer_to_orthogonal_than_classic(shape, cond):
    G = ill_conditioned(shape, cond)
    err = {k: (torch.linalg.svdvals(zeropower_via_newtonschulz5(G, steps=5, ns=k)) - 1).abs()
           for k in ("classic", "polar")}
    # measured: the worst |s - 1| drops from ~0.32 to ~0.14 (cond 100) and ~0.75 to ~0.5 (cond 1000)
    assert err["polar"].max() < 0.8 * err["classic"].max(), (err["polar"].max(), err["classic"].max())
    assert err["polar"].mean() < 0.6 * err["classic"].mean()
    if cond == 100.0:
        assert err["polar"].max() < 0.2


def test_polar_express_steps_are_checked():
    with pytest.raises(ValueError, match="5 steps"):
        Muon([nn.Parameter(torch.randn(4, 4))], ns="polar", backend_steps=6)
    with pytest.raises(ValueError, match="unknown Newton-Schulz"):
        Muon([nn.Parameter(torch.randn(4, 4))], ns="quintic")
    with pytest.raises(GolfError, match="MUON_NS=polar .* MUON_BACKEND_STEPS=6"):
        load_config(env={"MUON_NS": "polar", "MUON_BACKEND_STEPS": "6"})
    with pytest.raises(GolfError, match="MUON_NS='fast': use classic or polar"):
        load_config(env={"MUON_NS": "fast"})


def test_muoneq_r_feeds_unit_rows_to_newton_schulz(monkeypatch):
    seen = []
    real = optim.zeropower_via_newtonschulz5

    def spy(G, *a, **kw):
        seen.append((G.clone(), kw.get("ns")))
        return real(G, *a, **kw)

    monkeypatch.setattr(optim, "zeropower_via_newtonschulz5", spy)
    torch.manual_seed(2)
    g = torch.randn(24, 40) * torch.logspace(-3, 2, 24).unsqueeze(1)  # rows of very different size
    for row_normalize in (False, True):
        p = nn.Parameter(torch.randn(24, 40))
        p.grad = g.clone()
        Muon([p], momentum=0.9, row_normalize=row_normalize, ns="polar").step()
        fed, ns = seen[-1]
        norms = fed.norm(dim=1)
        assert ns == "polar"
        if row_normalize:
            torch.testing.assert_close(norms, torch.ones(24))
            # each row keeps the Nesterov update's direction ((1 + momentum) * g on the first step)
            torch.testing.assert_close(fed, g / g.norm(dim=1, keepdim=True))
        else:
            assert norms.max() / norms.min() > 1e4  # untouched


def test_muoneq_r_step_matches_hand_computation():
    torch.manual_seed(3)
    p = nn.Parameter(torch.randn(16, 48))
    opt = Muon([p], lr=0.1, momentum=0.9, weight_decay=0.5, ns="polar", row_normalize=True)
    w, buf = p.detach().clone(), torch.zeros(16, 48)
    for _ in range(2):
        g = torch.randn(16, 48)
        p.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + g
        u = g + 0.9 * buf
        u = u / u.norm(dim=1, keepdim=True)
        w = w * (1 - 0.1 * 0.5) - 0.1 * zeropower_via_newtonschulz5(u, ns="polar")  # wide: no scale-up
    torch.testing.assert_close(p.detach(), w)


def test_per_group_weight_decay_and_muon_options_reach_their_groups():
    m = Toy()
    h = load_config([], env={"EMBED_WEIGHT_DECAY": "0.085", "SCALAR_WEIGHT_DECAY": "0.02", "MUON_WEIGHT_DECAY": "0.095",
                             "ADAM_WEIGHT_DECAY": "0.5", "MUON_NS": "polar", "MUON_ROW_NORMALIZE": "1"})
    adam, muon = build_optimizers(m, h)
    wd = {g["name"]: g["weight_decay"] for g in adam.param_groups}
    assert wd == {"embed": 0.085, "scalar": 0.02, "memory": 0.0}  # ADAM_WEIGHT_DECAY is overridden for the embedding
    (mg,) = muon.param_groups
    assert (mg["weight_decay"], mg["ns"], mg["row_normalize"]) == (0.095, "polar", True)
    # embedding decay applied to the embedding only: one AdamW step with zero gradients moves only it
    h0 = load_config([], env={"EMBED_WEIGHT_DECAY": "0.3"})
    m0 = Toy()
    before = {n: p.detach().clone() for n, p in m0.named_parameters()}
    adam0, _ = build_optimizers(m0, h0)
    for p in m0.parameters():
        p.grad = torch.zeros_like(p)
    adam0.step()
    moved = {n for n, p in m0.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == {"emb"}
    torch.testing.assert_close(m0.emb.detach(), before["emb"] * (1 - h0.embed_lr * 0.3))


def test_default_weight_decays_are_the_old_ones():
    h = load_config([], env={"ADAM_WEIGHT_DECAY": "0.07"})
    adam, muon = build_optimizers(Toy(), h)
    wd = {g["name"]: g["weight_decay"] for g in adam.param_groups}
    assert wd == {"embed": 0.07, "scalar": 0.0, "memory": 0.0}  # EMBED_WEIGHT_DECAY=-1: ADAM_WEIGHT_DECAY
    (mg,) = muon.param_groups
    assert (mg["ns"], mg["row_normalize"]) == ("classic", False)


def test_challenge_weight_decay_names_set_golf_fields():
    h = load_config(env={"MUON_WD": "0.095", "EMBED_WD": "0.085", "ADAM_WD": "0.02"})
    assert (h.muon_weight_decay, h.embed_weight_decay, h.scalar_weight_decay) == (0.095, 0.085, 0.02)
    assert h.adam_weight_decay == load_config(env={}).adam_weight_decay  # the records' ADAM_WD is not golf's
    with pytest.raises(GolfError, match="MUON_WD=0.1 .* MUON_WEIGHT_DECAY=0.2 disagree"):
        load_config(env={"MUON_WD": "0.1", "MUON_WEIGHT_DECAY": "0.2"})


@pytest.mark.parametrize("env,match", [
    ({"EMBED_WEIGHT_DECAY": "-0.5"}, "EMBED_WEIGHT_DECAY=-0.5 is out of range: it must be >= 0, or -1"),
    ({"EMBED_WEIGHT_DECAY": "-2"}, "EMBED_WEIGHT_DECAY=-2.0 is out of range"),
    ({"SCALAR_WEIGHT_DECAY": "-0.1"}, "SCALAR_WEIGHT_DECAY=-0.1 is out of range"),
    ({"MIN_LR": "1.5"}, "MIN_LR=1.5 is out of range: it must be between 0 and 1"),
])
def test_bad_optimizer_settings_are_named(env, match):
    with pytest.raises(GolfError, match=match):
        load_config(env=env)
