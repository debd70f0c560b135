"""Weight-tied depth: UNIQUE_LAYERS=K unique blocks run as NUM_LAYERS logical layers, cycling
(logical layer i runs block i mod K), with a learned per-iteration embedding added to the residual
stream before each logical layer so tied passes can behave differently. Same bytes, more compute.
Credit: Universal Transformers (Dehghani et al. 2019); TinyMemoryLM (8 unique -> 16 logical);
public parameter-golf records that loop middle layers ("depth recurrence").
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from golf.core.config import GPTConfig
from golf.core.utils import GolfError
from golf.model.mixer import ModelMechanism, tag


class WeightTiedDepth(ModelMechanism):
    name = "weight_tied"

    @classmethod
    def enabled(cls, cfg: GPTConfig) -> bool:
        k = int(cfg.unique_layers)
        return 0 < k

    @classmethod
    def technique(cls, cfg: GPTConfig) -> str:
        return f"weight-tied depth: {cfg.unique_layers} unique blocks run as {cfg.num_layers} layers"

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        self.unique = int(cfg.unique_layers)
        n = int(cfg.num_layers)
        if self.unique > n:
            raise GolfError(f"UNIQUE_LAYERS={self.unique} is more than NUM_LAYERS={n}; use <= NUM_LAYERS (0 = off)")
        # zero init: a fresh tied model equals the plain tied stack
        self.iter_emb = tag(nn.Parameter(torch.zeros(n, int(cfg.model_dim))), quant="control", optim="memory")

    def block_schedule(self, num_layers: int) -> list[int]:
        return [i % self.unique for i in range(num_layers)]

    def layer_input(self, x: Tensor, logical_idx: int) -> Tensor:
        return x + self.iter_emb[logical_idx].to(x.dtype)
