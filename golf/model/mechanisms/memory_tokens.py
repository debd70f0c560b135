"""Memory tokens: NUM_MEMORY_TOKENS learned vectors prepended to every sequence (training and eval
alike), a global scratchpad every real token can read through the causal mask. They carry no loss
(the backbone strips the prefix before the logits) and are excluded from weight decay (optim group
"memory"); kept in fp16 in the artifact (quant group "control").
Credit: Burtsev et al. 2020 "Memory Transformer"; the public parameter-golf record
"Memory Tokens + Mixed Quantization" (64 tokens).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from golf.core.config import GPTConfig
from golf.model.mixer import ModelMechanism, tag


class MemoryTokens(ModelMechanism):
    name = "memory_tokens"

    @classmethod
    def enabled(cls, cfg: GPTConfig) -> bool:
        return int(cfg.num_memory_tokens) > 0

    @classmethod
    def technique(cls, cfg: GPTConfig) -> str:
        return f"{cfg.num_memory_tokens} memory tokens (learned, prepended to every sequence)"

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg)
        self.num_prefix = int(cfg.num_memory_tokens)
        # the embeddings are RMS-normed before the blocks (unit scale); memory starts at that scale
        self.tokens = tag(nn.Parameter(torch.randn(self.num_prefix, int(cfg.model_dim))),
                          quant="control", optim="memory")

    def prefix(self, x: Tensor) -> Tensor:
        mem = self.tokens.to(x.dtype)[None].expand(x.shape[0], -1, -1)
        return torch.cat([mem, x], dim=1)
