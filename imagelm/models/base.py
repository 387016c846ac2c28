"""What every generator shares: the condition embedder, token input/output for n sub-tokens, and the
Llama trunk. The autoregressive (`ar.py`) and masked (`mlm.py`) generators differ only in whether the
trunk is causal and in how they use it."""
from __future__ import annotations

import torch
import torch.nn as nn

from imagelm.models.conditioning import ClassEmbedder
from imagelm.models.embedding import SubTokenEmbedding, SubTokenHeads
from imagelm.models.presets import GPTConfig
from imagelm.models.transformer import Transformer


class GeneratorBase(nn.Module):
    """Shared parts; subclasses set `kind` and `causal` and define forward (and sampling entry points)."""

    kind = "base"
    causal = True

    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.cond != "class":
            raise ValueError("only class-conditional generators are built so far (cond='class')")
        if config.cls_token_num != 1:
            raise ValueError("a class-conditional generator has a prefix of exactly 1 token")
        self.config = config
        self.cond_embedder = ClassEmbedder(config.num_classes, config.dim, config.class_dropout)
        self.tok_embeddings = SubTokenEmbedding(config.num_subtokens, config.vocab_size, config.dim)
        self.token_dropout = nn.Dropout(config.token_dropout)
        self.trunk = Transformer(config, causal=self.causal)
        self.output = SubTokenHeads(config.num_subtokens, config.vocab_size, config.dim)

    def reset_parameters(self) -> None:
        """N(0, 0.02) for every linear and embedding, zeros for the output heads (LlamaGen's init)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        self.output.reset_parameters()

    @property
    def prefix_len(self) -> int:
        return self.config.cls_token_num

    def null_cond(self, cond: torch.Tensor) -> torch.Tensor:
        """The unconditional ("null") condition for each element of cond [B] -> [B]."""
        return self.cond_embedder.null_like(cond)

    def prefix(self, cond: torch.Tensor) -> torch.Tensor:
        """cond [B] -> prefix embeddings [B, P, dim]; in training mode conditions drop to null at the
        configured rate (classifier-free guidance)."""
        if self.training:
            cond = self.cond_embedder.drop(cond)
        return self.cond_embedder(cond)
