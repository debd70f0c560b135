"""golf/train/optim.py: Newton-Schulz orthogonalisation, Muon's update, routing of parameters to groups."""
import torch
from torch import nn

from golf.core.config import load_config
from golf.model.gpt import GPT
from golf.model.mixer import tag
from golf.train.optim import (Muon, apply_schedule, build_optimizers, param_groups, shard_plan,
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
