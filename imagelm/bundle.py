"""Self-contained model directories: `imagelm export bundle RUN OUT`.

A bundle is one directory that works anywhere (another folder, another machine, a colleague's):

    OUT/config.json            the generator's CheckpointMeta; its tokenizer link is "tokenizer" (relative)
    OUT/model.safetensors      the generator's weights (the EMA ones when the run kept an EMA)
    OUT/tokenizer/config.json  the tokenizer's CheckpointMeta
    OUT/tokenizer/model.safetensors

`imagelm.load(OUT)`, `imagelm sample --ckpt OUT` and `imagelm serve --ckpt OUT` take it as it is.
A text generator's encoder stays a reference (`text_encoder` in config.json: MiniLM ships in a
package; a local T5 directory is named by path, as in the run).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from imagelm import checkpoint
from imagelm.models import GENERATOR_KINDS
from imagelm.tokenizers import load_linked_tokenizer, load_tokenizer

TOKENIZER_DIR = "tokenizer"


def export_bundle(ckpt, out, tokenizer=None) -> Path:
    """Write the generator at `ckpt` (run or checkpoint directory) and its tokenizer (`tokenizer`, or
    the one it links, checked against the recorded hash) as the bundle directory `out` (atomically;
    `out` must not exist) -> out."""
    from imagelm.images import check_tokenizer_fits
    meta = checkpoint.read_meta(ckpt)
    checkpoint.expect_kind(meta, GENERATOR_KINDS, "generator")
    out = Path(out)
    if out.exists():
        raise checkpoint.CheckpointError(f"{out} already exists; choose a new bundle directory")
    tok = load_tokenizer(tokenizer) if tokenizer else load_linked_tokenizer(meta)
    if meta.layout is not None:
        check_tokenizer_fits(meta.layout, tok)
    tok_state = tok.state_dict()
    link = checkpoint.TokenizerLink(str((out / TOKENIZER_DIR).resolve()), checkpoint.weights_sha256(tok_state))
    gen_meta = meta.replace(tokenizer=link, extra={**meta.extra, "bundled_from": str(meta.path.resolve())})
    tok_meta = tok.meta.replace(extra={**tok.meta.extra, "bundled_from": str(tok.meta.path.resolve())})

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # The tokenizer first, inside the temporary directory, then the generator beside it.
        inner = tmp / TOKENIZER_DIR
        inner.mkdir()
        _write(inner, tok_meta, tok_state, out / TOKENIZER_DIR)
        _write(tmp, gen_meta, checkpoint.load_weights(meta.path, prefer_ema=True), out)
        checkpoint.publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write(directory: Path, meta: checkpoint.CheckpointMeta, state: dict, final: Path) -> None:
    from safetensors.torch import save_file
    checkpoint.write_meta(directory, meta, final)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / "model.safetensors"))
