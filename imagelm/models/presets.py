"""Generator configs: one frozen dataclass, and named presets with LlamaGen's exact shapes.

The config holds only what shapes the network (and its dropout rates); derived sizes are
properties. It is saved as JSON beside every checkpoint, so a model rebuilds from its directory.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class GPTConfig:
    """A Llama-style image generator: trunk shape, token layout, conditioning, regularisation."""
    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None        # grouped-query attention when < n_head
    multiple_of: int = 256              # SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    ffn_hidden_dim: int | None = None   # the SwiGLU width given exactly (imported weights of any size)
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    # Token layout (see imagelm/vocab.py): a grid of positions, n sub-tokens of vocab_size values each.
    vocab_size: int = 16384
    num_subtokens: int = 1
    grid_size: int = 16                 # tokens per side: 256 px / f16
    # Conditioning: "class" (a table with one extra null row) or "text" (caption features).
    cond: str = "class"
    num_classes: int = 1000
    cls_token_num: int = 1              # prefix length (text: the caption length)
    caption_dim: int = 2048             # text features' width (FLAN-T5-XL); text models only
    class_dropout: float = 0.1          # condition dropout, for classifier-free guidance
    # Regularisation (LlamaGen's defaults).
    token_dropout: float = 0.1
    attn_dropout: float = 0.0
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    drop_path: float = 0.0
    # "identity": prefix positions are not rotated (ours). "zero": LlamaGen's table, whose all-zero
    # prefix rows zero those queries/keys; only imported LlamaGen weights need it.
    prefix_rope: str = "identity"
    # Null caption's mask for CFG: "all" (every position real, ours) or "same" (the caption's own
    # padding mask, as LlamaGen's t2i sampler does); only imported LlamaGen text models need "same".
    null_caption_mask: str = "all"
    # Output head: "linear" (one Linear per sub-token, ours) or "tied-mlm" (ELM's masked model: an MLP
    # + LayerNorm, then the token embedding table transposed, plus a bias); only imported ELM MLMs.
    head: str = "linear"

    def __post_init__(self):
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim {self.head_dim} must be a multiple of 4 for 2D RoPE")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.kv_heads}")
        if self.cond not in ("class", "text"):
            raise ValueError(f"cond must be 'class' or 'text', not {self.cond!r}")
        if self.prefix_rope not in ("identity", "zero"):
            raise ValueError(f"prefix_rope must be 'identity' or 'zero', not {self.prefix_rope!r}")
        if self.null_caption_mask not in ("all", "same"):
            raise ValueError(f"null_caption_mask must be 'all' or 'same', not {self.null_caption_mask!r}")
        if self.head not in ("linear", "tied-mlm"):
            raise ValueError(f"head must be 'linear' or 'tied-mlm', not {self.head!r}")
        if self.head == "tied-mlm" and self.num_subtokens != 1:
            raise ValueError("a tied MLM head needs one token per position")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def seq_len(self) -> int:
        """Image tokens per sample (positions of the grid)."""
        return self.grid_size * self.grid_size

    @property
    def ffn_hidden(self) -> int:
        """SwiGLU width: 2/3 of 4*dim (so the 3 matrices cost what a 4x MLP would), rounded up; or
        ffn_hidden_dim when set (a file whose width no rounding rule reproduces)."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# LlamaGen's text-to-image setting: 120 caption tokens of FLAN-T5-XL features (2048-d).
_T2I = dict(cond="text", cls_token_num=120, caption_dim=2048)

# name -> (n_layer, n_head, dim); LlamaGen's GPT-B ... GPT-7B (class-conditional, 1000 classes), and
# its text-to-image models (`-t2i`). Training on codes takes T and C from the caption features.
GPT_PRESETS: dict[str, dict] = {
    "GPT-B": dict(n_layer=12, n_head=12, dim=768),
    "GPT-L": dict(n_layer=24, n_head=16, dim=1024),
    "GPT-XL": dict(n_layer=36, n_head=20, dim=1280),
    "GPT-XXL": dict(n_layer=48, n_head=24, dim=1536),
    "GPT-XXXL": dict(n_layer=48, n_head=40, dim=2560),
    "GPT-1B": dict(n_layer=22, n_head=32, dim=2048),
    "GPT-3B": dict(n_layer=24, n_head=32, dim=3200),
    "GPT-7B": dict(n_layer=32, n_head=32, dim=4096),
    "GPT-2B": dict(n_layer=48, n_head=28, dim=1792),     # ELM's largest AR model
    "GPT-XL-t2i": dict(n_layer=36, n_head=20, dim=1280, **_T2I),
    "GPT-1B-t2i": dict(n_layer=22, n_head=32, dim=2048, **_T2I),
    "GPT-3B-t2i": dict(n_layer=24, n_head=32, dim=3200, **_T2I),
    "GPT-7B-t2i": dict(n_layer=32, n_head=32, dim=4096, **_T2I),
    # A CPU-sized model for demos and tests; vocabulary and grid come from the codes it trains on.
    "tiny": dict(n_layer=4, n_head=4, dim=128, multiple_of=32, grid_size=8, vocab_size=512, num_classes=10,
                 token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0),
    # Its bigger sibling (~3.5x the parameters), the second size of `imagelm study`.
    "small": dict(n_layer=6, n_head=6, dim=192, multiple_of=64, grid_size=8, vocab_size=512, num_classes=10,
                  token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0),
    # The same with a caption prefix: 32 tokens of all-MiniLM-L6-v2 features (imagelm.text's default).
    "tiny-t2i": dict(n_layer=4, n_head=4, dim=128, multiple_of=32, grid_size=8, vocab_size=512,
                     cond="text", cls_token_num=32, caption_dim=384,
                     token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0),
}


def gpt_config(preset: str, **overrides) -> GPTConfig:
    """The named preset's config with `overrides` applied (e.g. vocab_size=..., grid_size=...)."""
    if preset not in GPT_PRESETS:
        raise ValueError(f"unknown generator preset {preset!r}; choose one of {', '.join(GPT_PRESETS)}")
    return GPTConfig(**{**GPT_PRESETS[preset], **overrides})
