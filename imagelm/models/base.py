"""What every generator shares: the condition embedder, token input/output for n sub-tokens, the
Llama trunk, and the one forward every use goes through (`logits`). The autoregressive (`ar.py`) and
masked (`mlm.py`) generators differ only in whether the trunk is causal and in how they use it."""
from __future__ import annotations

import torch
import torch.nn as nn

from imagelm.models.conditioning import CaptionEmbedder, ClassEmbedder
from imagelm.models.embedding import SubTokenEmbedding, SubTokenHeads, TiedMLMHead
from imagelm.models.presets import GPTConfig
from imagelm.models.transformer import KVCache, Transformer


class GeneratorBase(nn.Module):
    """Shared parts; subclasses set `kind` and `causal` and define forward (and sampling entry points)."""

    kind = "base"
    causal = True

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        if config.cond == "text":   # prefix = the caption's T tokens, some of them padding
            self.cond_embedder = CaptionEmbedder(config.caption_dim, config.dim, config.cls_token_num,
                                                 config.class_dropout, config.null_caption_mask)
        elif config.cls_token_num != 1:
            raise ValueError("a class-conditional generator has a prefix of exactly 1 token")
        else:
            self.cond_embedder = ClassEmbedder(config.num_classes, config.dim, config.class_dropout)
        self.tok_embeddings = SubTokenEmbedding(config.num_subtokens, config.vocab_size, config.dim)
        self.token_dropout = nn.Dropout(config.token_dropout)
        self.trunk = Transformer(config, causal=self.causal)
        if config.head == "tied-mlm":
            self.output = TiedMLMHead(config.dim, self.tok_embeddings)
        else:
            self.output = SubTokenHeads(config.num_subtokens, config.vocab_size, config.dim)

    def reset_parameters(self) -> None:
        """N(0, 0.02) for every linear and embedding, zeros for the output heads (LlamaGen's init)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        self.output.reset_parameters()

    def embed_condition(self, cond) -> tuple[torch.Tensor, torch.Tensor | None]:
        """cond (class ids [B] or a TextCondition) -> (prefix embeddings [B, P, dim], prefix mask [B, P]
        bool with False at caption padding, or None when nothing is padded). Never dropped to null
        (training's condition dropout is `prefix_with_mask`)."""
        return self.cond_embedder(cond), self.cond_embedder.prefix_mask(cond)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens [B, T, n] int64 -> input embeddings [B, T, dim]."""
        return self.tok_embeddings(tokens)

    def logits(self, h: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
               mask: torch.Tensor | None = None, rows: torch.Tensor | None = None,
               key_length: int | None = None, last: int | None = None) -> torch.Tensor:
        """The one forward of every use: input embeddings h [B, T, dim] (prefix and/or image tokens) at
        sequence positions [T] or [B, T] -> logits [B, T', n, V] float32 of the last T' = `last`
        positions (None: all T).

        Training and teacher forcing call it without a cache; samplers pass the KVCache they own, with
        T = P for a prefill, 1 for a decode step, k for a k-token verify step (see
        Transformer.forward for cache, mask, rows and key_length). Position j's logits predict the
        image token at sequence position j + 1 for the AR generator, position j's own for the MLM.
        """
        h = self.trunk(h, positions, cache, mask, rows, key_length)
        if last is not None:
            h = h[:, h.shape[1] - last:]
        return self.output(h).float()

    @property
    def prefix_len(self) -> int:
        return self.config.cls_token_num

    def null_cond(self, cond):
        """The unconditional ("null") condition for each element of cond: class ids [B] -> [B], or a
        TextCondition -> the null caption, batch B."""
        return self.cond_embedder.null_like(cond)

    def prefix_with_mask(self, cond) -> tuple[torch.Tensor, torch.Tensor | None]:
        """cond (class ids [B] or a TextCondition) -> (prefix embeddings [B, P, dim], prefix mask [B, P]
        bool with False at caption padding, or None when nothing is padded). In training mode
        conditions drop to null at the configured rate (classifier-free guidance)."""
        if self.training:
            cond = self.cond_embedder.drop(cond)
        return self.cond_embedder(cond), self.cond_embedder.prefix_mask(cond)

    def prefix(self, cond) -> torch.Tensor:
        """cond -> prefix embeddings [B, P, dim] (see prefix_with_mask)."""
        return self.prefix_with_mask(cond)[0]

    @staticmethod
    def sequence_mask(prefix_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
        """The trunk's input mask for a prefix followed by image tokens: prefix_mask [B, P] -> [B, length]
        (image tokens are always real); None stays None."""
        if prefix_mask is None:
            return None
        B, P = prefix_mask.shape
        return torch.cat([prefix_mask, prefix_mask.new_ones(B, length - P)], dim=1)
