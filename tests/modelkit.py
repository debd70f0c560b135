"""Tiny model configs and a parameter shake-up, shared by the model and mechanism tests."""
import torch

from golf.core.config import GPTConfig
from golf.model.mechanisms import build_mixer


def small_cfg(**kw):
    """A tiny GPTConfig (every architecture field from its default); keywords override."""
    base = dict(vocab_size=64, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2.0, rope_dims=4,
                train_seq_len=32)
    return GPTConfig(**{**base, **kw})


def randomize(module, std=0.1, seed=0, skip=()):
    """Move every parameter (except `skip` names) off its (often zero) init so each path carries
    signal: zero-initialised output projections would make most checks pass trivially."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.is_floating_point() and name not in skip:
                p.add_(torch.randn(p.shape, generator=g) * std)
    return module


def live_mixer(name, cfg, seed=0):
    """The registered mixer `name` built from `cfg`, its zero-initialised output projection moved
    off zero (a fresh layer outputs 0, which would make every check trivial)."""
    torch.manual_seed(seed)
    m = build_mixer(name, cfg, 0)
    torch.nn.init.normal_(m.out_proj.weight, std=0.2)
    return m


def grads_of(m, x, y):
    """Gradients of a fixed random projection of the output y w.r.t. the input x and every
    parameter of m: two paths that agree on these agree in their backward too."""
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    return torch.autograd.grad((y * w).sum(), [x] + list(m.parameters()))


def assert_causal(m, T, vocab=64, bos_at=9):
    """A full model's causality: changing the tokens after t changes no logit at <= t (and does change
    later ones), for several t around a BOS at `bos_at`. Returns (idx, logits) for further checks."""
    idx = torch.randint(2, vocab, (2, T))
    idx[:, bos_at] = 1  # BOS
    with torch.no_grad():
        logits = m(idx)
        for t in (0, bos_at - 1, bos_at, 15, T - 2):
            idx2 = idx.clone()
            idx2[:, t + 1:] = torch.randint(2, vocab, (2, T - t - 1))
            l2 = m(idx2)
            torch.testing.assert_close(l2[:, : t + 1], logits[:, : t + 1], rtol=1e-5, atol=1e-5)
            assert not torch.allclose(l2[:, t + 1:], logits[:, t + 1:])
    return idx, logits
