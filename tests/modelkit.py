"""Tiny model configs and a parameter shake-up, shared by the model and mechanism tests."""
import torch

from golf.config import Hyperparameters


def small_cfg(**kw):
    """A tiny GPT config with every architecture field present; keywords override."""
    cfg = Hyperparameters().model_config()
    cfg.update(vocab_size=64, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2.0,
               rope_dims=4, train_seq_len=32)
    cfg.update(kw)
    return cfg


def randomize(module, std=0.1, seed=0, skip=()):
    """Move every parameter (except `skip` names) off its (often zero) init so each path carries
    signal: zero-initialised output projections would make most checks pass trivially."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.is_floating_point() and name not in skip:
                p.add_(torch.randn(p.shape, generator=g) * std)
    return module
