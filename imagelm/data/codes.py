"""Image codes on disk: a data set encoded once by a tokenizer, so generator training never runs it.

Layout of a codes directory:
    manifest.json        tokenizer (link, kind, config), token layout, class names, shard list
    tokens_00000.npy     uint16/int32 [N, A, L, n]: A augmented views per image (1, 2 with flip, 10 ten-crop)
    labels_00000.npy     int64 [N]
    captions.jsonl       one {"caption": ...} per image, in order
    text_features_00000.npy  float16 [N, T, C] caption features (with --captions; left-padded, zero at padding)
    text_mask_00000.npy      bool [N, T], True = a real caption token
The manifest's "text" entry names the text encoder (name, path, max_len T, dim C) when features are
stored, so training never runs the encoder and sampling encodes prompts the same way.
The tokenizer entry is a link as checkpoints keep it (imagelm/metadata.py: relative to the codes
directory, the absolute path, the weights' hash), which the generators trained on the codes inherit.
Shards are memory-mapped when read.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from imagelm.atomic import atomic_file
from imagelm.data import build_dataset
from imagelm.metadata import CheckpointMeta, TokenizerLink
from imagelm.data.transforms import ten_crop, to_tensor, to_uint8
from imagelm.vocab import TokenLayout, convert_tokens

AUGMENTATIONS = ("none", "flip", "tencrop")
MANIFEST = "manifest.json"


def augmented_views(images: torch.Tensor, augment: str) -> torch.Tensor:
    """images [B, 3, H, W] -> views [B, A, 3, H, W]: A=1 (none), 2 (+ mirror), 10 (ten-crop of a 1.1x upscale)."""
    if augment == "none":
        return images[:, None]
    if augment == "flip":
        return torch.stack([images, images.flip(-1)], dim=1)
    if augment == "tencrop":
        size = images.shape[-1]
        big = round(size * 1.1)
        views = []
        for img in to_uint8(images):
            pil = Image.fromarray(img).resize((big, big), Image.BICUBIC)
            views.append(torch.stack([to_tensor(c) for c in ten_crop(pil, size)]))
        return torch.stack(views)
    raise ValueError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")


@torch.no_grad()
def extract_codes(tokenizer, data: str, out: str | Path, split: str = "train", augment: str = "none",
                  image_size: int | None = None, length: int | None = None, seed: int = 0,
                  batch_size: int = 256, shard_size: int = 50_000, device: str | torch.device = "cpu",
                  stochastic: bool = False, captions: bool = False, text_encoder: str = "minilm",
                  text_encoder_path: str | None = None, max_caption_len: int | None = None,
                  progress: bool = True) -> Path:
    """Encode data set `data` with `tokenizer` into a codes directory `out`; returns its manifest path.

    captions: also store each image's caption features from `text_encoder` ("minilm" or "t5", see
    imagelm.text), padded/truncated to `max_caption_len` tokens, for text-conditional training.

    stochastic: binary tokenizers draw Bernoulli bits instead of thresholding (seeded by `seed`).
    """
    image_size = image_size or tokenizer.config.image_size
    dataset = build_dataset(data, image_size=image_size, split=split, seed=seed, length=length)
    # Binary codes are stored one bit per sub-token (the D-1 split); training regroups them into
    # whatever n-m split it asks for, so one extraction serves every vocabulary of the study.
    bits = getattr(tokenizer, "code_bits", None)
    layout = TokenLayout.for_tokenizer(tokenizer, bits or 1, grid_size=image_size // tokenizer.config.downsample)
    dtype = np.uint8 if layout.vocab_size <= 256 else (np.uint16 if layout.vocab_size <= 65536 else np.int32)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = None
    if captions:
        from imagelm.text import load_text_encoder
        encoder = load_text_encoder(text_encoder, text_encoder_path, max_caption_len,
                                    next(tokenizer.parameters()).device)
    shards, captions = [], []
    # Arrays buffered until a shard is full: name -> list of row blocks (first axis = items).
    bufs = {"tokens": [], "labels": []} | ({"text_features": [], "text_mask": []} if encoder else {})

    def write_shards(final: bool) -> None:
        """Write every full shard of buffered rows (and the remainder when final)."""
        arrays = {k: np.concatenate(v) for k, v in bufs.items()}
        while len(arrays["tokens"]) >= shard_size or (final and len(arrays["tokens"])):
            name, entry = f"{len(shards):05d}", {"count": len(arrays["tokens"][:shard_size])}
            for key, array in arrays.items():
                _atomic_npy(out / f"{key}_{name}.npy", array[:shard_size])
                entry[key] = f"{key}_{name}.npy"
            shards.append(entry)
            arrays = {k: a[shard_size:] for k, a in arrays.items()}
        for key in bufs:
            bufs[key][:] = [arrays[key]]

    if stochastic and bits is None:
        raise ValueError("stochastic codes need a binary (BAE) tokenizer")
    bernoulli = torch.Generator(device).manual_seed(seed) if stochastic else None
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0, collate_fn=_collate)
    for images, labels, caps in tqdm(loader, desc="extract-codes", unit="batch", disable=not progress):
        views = augmented_views(images, augment)                                  # [B, A, 3, H, W]
        B, A = views.shape[:2]
        flat = views.flatten(0, 1).to(device)
        codes = (tokenizer.encode(flat, stochastic=True, generator=bernoulli) if stochastic
                 else tokenizer.encode(flat)).cpu()                               # [B*A, h, w(, D)]
        tokens = layout.to_tokens(codes).view(B, A, layout.seq_len, layout.num_subtokens)
        bufs["tokens"].append(tokens.numpy().astype(dtype))
        bufs["labels"].append(labels.numpy())
        if encoder is not None:
            text = encoder.encode(list(caps))                                     # [B, T, C], [B, T]
            bufs["text_features"].append(text.features.cpu().numpy().astype(np.float16))
            bufs["text_mask"].append(text.mask.cpu().numpy())
        captions.extend(caps)
        write_shards(final=False)
    write_shards(final=True)
    with atomic_file(out / "captions.jsonl") as f:
        f.write("".join(json.dumps({"caption": c}) + "\n" for c in captions).encode())
    meta = getattr(tokenizer, "meta", None)     # set by load_tokenizer; absent for a module made in memory
    saved = isinstance(meta, CheckpointMeta) and meta.path is not None
    link = TokenizerLink.to(meta.path, tokenizer).to_dict(out) if saved else {"path": None}
    manifest = {
        "tokenizer": {**link, "kind": meta.kind if saved else None, "preset": meta.preset if saved else None,
                      "config": tokenizer.config.to_dict()},
        "layout": layout.to_dict(),
        "data": {"name": data, "split": split, "image_size": image_size, "augment": augment, "seed": seed,
                 "stochastic": stochastic},
        "class_names": list(getattr(dataset, "class_names", [])),
        "num_items": sum(s["count"] for s in shards),
        "views": 1 if augment == "none" else (2 if augment == "flip" else 10),
        "shards": shards,
        "text": encoder.spec if encoder else None,
    }
    with atomic_file(out / MANIFEST) as f:  # written last: a codes directory with a manifest is complete
        f.write(json.dumps(manifest, indent=2).encode())
    if hasattr(dataset, "report") and getattr(dataset, "skipped", 0):
        print(dataset.report())
    return out / MANIFEST


class CodesDataset:
    """A codes directory read back: tokens uint [N, A, L, n] (memory-mapped), labels [N], captions."""

    def __init__(self, root: str | Path):
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{root} is not a codes directory (no {MANIFEST}); "
                                    f"make one with `imagelm extract-codes`")
        self.root = root
        self.manifest = json.loads(path.read_text())
        self.layout = TokenLayout.from_dict(self.manifest["layout"])
        self.class_names = self.manifest.get("class_names", [])
        shards = self.manifest["shards"]
        # Shards stay memory-mapped (never concatenated): only the rows a batch asks for are read.
        self.tokens = ShardedRows([root / s["tokens"] for s in shards])                 # [N, A, L, n]
        self.labels = np.concatenate([np.load(root / s["labels"]) for s in shards])
        if len(self.tokens) != len(self.labels):
            raise ValueError(f"{root}: {len(self.tokens)} token rows but {len(self.labels)} labels")
        entry = self.manifest.get("tokenizer") or {}
        # The tokenizer that made the codes (None: made in memory, never saved).
        self.tokenizer_link = TokenizerLink.from_dict(entry, root) if entry.get("path") else None
        self.text = self.manifest.get("text")     # the text encoder's spec, when caption features are stored
        if self.text:
            self.text_features = ShardedRows([root / s["text_features"] for s in shards])   # [N, T, C] float16
            self.text_mask = np.concatenate([np.load(root / s["text_mask"]) for s in shards])

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) or int(self.labels.max()) + 1

    def batch(self, indices: torch.Tensor, generator: torch.Generator | None = None,
              layout: TokenLayout | None = None, views: torch.Tensor | None = None):
        """(tokens int64 [B, L, n], labels int64 [B]); one augmented view per item.

        views: [B] the view of each item; default: drawn from generator.
        layout: regroup binary codes into this n-m split (default: the stored one)."""
        idx = indices.numpy()
        if views is None:
            views = self.draw_views(len(idx), generator)
        rows = self.tokens.take(idx, views.numpy())                                    # [B, L, n]
        tokens = torch.from_numpy(rows.astype(np.int64))
        if layout is not None:
            tokens = convert_tokens(tokens, self.layout, layout)
        return tokens, torch.from_numpy(self.labels[idx].astype(np.int64))

    def draw_views(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Which augmented view to use for each of `count` items: int64 [count] (zeros when there is one)."""
        num_views = self.tokens.shape[1]
        if num_views == 1:
            return torch.zeros(count, dtype=torch.long)
        return torch.randint(num_views, (count,), generator=generator)

    def text_batch(self, indices: torch.Tensor):
        """Caption features of items indices [B] -> TextCondition(features float32 [B, T, C], mask bool [B, T])."""
        from imagelm.models.conditioning import TextCondition
        if not self.text:
            raise ValueError(f"{self.root} has no caption features; extract the codes again with --captions")
        idx = indices.numpy()
        return TextCondition(torch.from_numpy(self.text_features.take(idx).astype(np.float32)),
                             torch.from_numpy(self.text_mask[idx]))


class ShardedRows:
    """Rows of several .npy shards, read as one array [N, ...] without concatenating them.

    Each shard is memory-mapped on first use in each process (DataLoader workers open their own
    maps; pickling sends paths, not data), so a data set larger than memory trains fine.
    """

    def __init__(self, paths: list[Path]):
        self.paths = [Path(p) for p in paths]
        self._maps: list[np.ndarray] | None = None
        heads = self._open()
        self.shape = (sum(len(a) for a in heads),) + heads[0].shape[1:]
        self.starts = np.cumsum([0] + [len(a) for a in heads])          # [shards + 1] first row of each

    def _open(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [np.load(p, mmap_mode="r") for p in self.paths]
        return self._maps

    def __getstate__(self):
        return {**self.__dict__, "_maps": None}

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def dtype(self) -> np.dtype:
        return self._open()[0].dtype

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole array, read into memory (for inspection; training reads rows with `take`)."""
        whole = np.concatenate(self._open())
        return whole if dtype is None else whole.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        """numpy-style indexing whose first index picks rows: x[rows, ...]."""
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        rows = np.arange(len(self))[first]
        out = self.take(np.atleast_1d(rows))[(slice(None),) + rest]
        return out[0] if np.ndim(rows) == 0 else out

    def take(self, rows: np.ndarray, second: np.ndarray | None = None) -> np.ndarray:
        """Rows [B] (and, when given, index `second` [B] into each row's first axis) -> [B, ...]."""
        maps = self._open()
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        local = rows - self.starts[shard]
        if second is None:
            return np.stack([maps[s][i] for s, i in zip(shard, local)])
        return np.stack([maps[s][i, v] for s, i, v in zip(shard, local, second)])


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.save(f, array)


def _collate(items):
    return (torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items]),
            [it[2] for it in items])
