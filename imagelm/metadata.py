"""What a checkpoint says about itself: one frozen `CheckpointMeta`, written and checked here alone.

Every checkpoint directory holds a `config.json` that is a CheckpointMeta: the module kind and its
config, the token layout (generators), the tokenizer link, class names, the text encoder spec,
and where the weights came from (provenance). Training, compat imports, the classifier and the
exporters build one; `imagelm.checkpoint` writes and reads it; loaders get it back typed, checked
field by field (a wrong field is named in one line).

    meta = checkpoint.read_meta("runs/gpt")
    meta.kind, meta.layout.seq_len, meta.class_names, meta.provenance.source      # "ar", 256, (...), "imagelm"

The tokenizer link travels: on disk it is a path relative to the checkpoint directory (so a run
directory moved or copied together with its tokenizer keeps working), the absolute path at
writing time (so a run copied alone still finds a tokenizer that stayed put), and a content hash
of the tokenizer's weights, checked when it is loaded. In memory the link is absolute.

Format 1 files (an untyped dict, written before this module) are read too: their absolute
tokenizer path becomes the link, `imported_from` the provenance, other keys `extra`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from imagelm.vocab import TokenLayout

FORMAT_VERSION = 2
SOURCES = ("imagelm", "llamagen", "elm")     # who made the weights: trained here, or converted


class MetaError(ValueError):
    """A config.json field that is missing or wrong; the message names the field (one line)."""


@dataclass(frozen=True)
class Provenance:
    """Where the weights came from: `source` "imagelm" (trained here), "llamagen" or "elm"
    (converted from a released `file` of compat `format`, e.g. "llamagen-gpt")."""
    source: str = "imagelm"
    file: str | None = None
    format: str | None = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise MetaError(f"field 'provenance.source' is {self.source!r}; known: {', '.join(SOURCES)}")

    @property
    def imported(self) -> bool:
        return self.source != "imagelm"


@dataclass(frozen=True)
class TextSpec:
    """The text encoder a text-conditional generator was trained with (see imagelm.text): its name,
    local directory (None: it ships in a package), caption tokens T and feature width C."""
    name: str
    path: str | None
    max_len: int
    dim: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TokenizerLink:
    """The tokenizer checkpoint a generator's tokens decode with.

    path: absolute (resolved against the directory the link was read from); recorded: the absolute
    path stored when the link was written (a second place to look); sha256: content hash of its
    weights (`weights_sha256`), None when not recorded (format 1 files)."""
    path: str
    sha256: str | None = None
    recorded: str | None = field(default=None, compare=False)   # where to look second, not what it is

    def candidates(self) -> list[Path]:
        """Where to look, in order: the relative link, then the recorded absolute path."""
        found = [Path(self.path)]
        if self.recorded and Path(self.recorded) != found[0]:
            found.append(Path(self.recorded))
        return found

    def to_dict(self, relative_to: Path) -> dict:
        """The on-disk form, `path` relative to directory `relative_to` (absolute where it cannot be,
        e.g. another drive)."""
        here = next((p for p in self.candidates() if p.exists()), Path(self.path))
        try:
            rel = os.path.relpath(here, Path(relative_to).resolve())
        except ValueError:
            rel = str(here)
        return {"path": Path(rel).as_posix(), "absolute": str(here), "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Mapping, base: Path) -> TokenizerLink:
        """Read the on-disk form written beside directory `base` (format 1: an absolute path)."""
        path = d.get("path")
        if not isinstance(path, str) or not path:
            raise MetaError("field 'tokenizer.path' is missing or not a string")
        sha = d.get("sha256")
        if sha is not None and not isinstance(sha, str):
            raise MetaError("field 'tokenizer.sha256' is not a string")
        absolute = d.get("absolute")
        return cls(str((Path(base) / path).resolve()) if not Path(path).is_absolute() else path, sha,
                   absolute if isinstance(absolute, str) else None)

    @classmethod
    def to(cls, tokenizer_dir, tokenizer: torch.nn.Module) -> TokenizerLink:
        """A link to checkpoint directory `tokenizer_dir` holding the (loaded) `tokenizer`."""
        return cls(str(Path(tokenizer_dir).resolve()), weights_sha256(tokenizer.state_dict()))


@dataclass(frozen=True)
class CheckpointMeta:
    """A checkpoint's config.json, typed.

    kind: "ar" | "mlm" (generators), "vq" | "bae" | "bae-elm" (tokenizers), "classifier", ...;
    config: the module config's fields (rebuilt with `config_as`); layout: the token layout a
    generator predicts (None for other kinds); tokenizer: the link to decode with; class_names: one
    name per class id (may be empty); text_encoder: a text generator's encoder; provenance: trained
    here or converted from which file; preset: the preset name it was built from; step: training
    step; extra: what its maker adds (train_args, codes, data, held-out accuracy, ...); path: the
    checkpoint directory it was read from (not saved)."""
    kind: str
    config: Mapping[str, Any]
    layout: TokenLayout | None = None
    tokenizer: TokenizerLink | None = None
    class_names: tuple[str, ...] = ()
    text_encoder: TextSpec | None = None
    provenance: Provenance = Provenance()
    preset: str | None = None
    step: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self):
        if not isinstance(self.kind, str) or not self.kind:
            raise MetaError("field 'kind' is missing or not a string")
        if not isinstance(self.config, Mapping):
            raise MetaError("field 'config' is not an object")
        if self.layout is not None and not isinstance(self.layout, TokenLayout):
            raise MetaError("field 'layout' is not a TokenLayout")
        if self.tokenizer is not None and not isinstance(self.tokenizer, TokenizerLink):
            raise MetaError("field 'tokenizer' is not a TokenizerLink")
        if self.text_encoder is not None and not isinstance(self.text_encoder, TextSpec):
            raise MetaError("field 'text_encoder' is not a TextSpec")
        if not isinstance(self.provenance, Provenance):
            raise MetaError("field 'provenance' is not a Provenance")
        names = tuple(self.class_names)
        if not all(isinstance(n, str) for n in names):
            raise MetaError("field 'class_names' must be a list of strings")
        object.__setattr__(self, "class_names", names)
        if self.step is not None and (not isinstance(self.step, int) or self.step < 0):
            raise MetaError(f"field 'step' must be a non-negative integer, got {self.step!r}")

    def config_as(self, cls):
        """The config as dataclass `cls` (e.g. GPTConfig), naming the field that does not fit."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(self.config) - known)
        if unknown:
            raise MetaError(f"field 'config.{unknown[0]}' is not a {cls.__name__} field "
                            f"(written by a newer imagelm?)")
        required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in self.config]
        if missing:
            raise MetaError(f"field 'config.{missing[0]}' is missing")
        try:
            return cls(**self.config)
        except (TypeError, ValueError) as e:
            raise MetaError(f"field 'config' does not make a {cls.__name__}: {str(e).splitlines()[0]}") from None

    def replace(self, **changes) -> CheckpointMeta:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ the on-disk form
    def to_dict(self, relative_to: Path | None = None) -> dict:
        """The config.json contents; the tokenizer link is written relative to `relative_to` (the
        directory the file goes in; default: where this meta was read from)."""
        base = relative_to or self.path
        if self.tokenizer is not None and base is None:
            raise MetaError("a tokenizer link needs the checkpoint directory it is written to")
        return {"format": FORMAT_VERSION, "kind": self.kind, "config": dict(self.config), "preset": self.preset,
                "step": self.step, "layout": self.layout.to_dict() if self.layout else None,
                "tokenizer": self.tokenizer.to_dict(base) if self.tokenizer else None,
                "class_names": list(self.class_names),
                "text_encoder": self.text_encoder.to_dict() if self.text_encoder else None,
                "provenance": dataclasses.asdict(self.provenance), "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: Mapping, path: Path | None = None) -> CheckpointMeta:
        """Parse config.json contents (format 1 or 2) read from checkpoint directory `path`;
        a MetaError naming the field that is wrong."""
        if not isinstance(d, Mapping):
            raise MetaError("config.json is not a JSON object")
        fmt = d.get("format", 1)
        if fmt not in (1, FORMAT_VERSION):
            raise MetaError(f"field 'format' is {fmt!r}; this imagelm reads formats 1 and {FORMAT_VERSION}")
        for key in ("kind", "config"):
            if key not in d:
                raise MetaError(f"field {key!r} is missing (not an imagelm config)")
        base = Path(path) if path is not None else Path.cwd()
        tokenizer = d.get("tokenizer")
        if tokenizer is not None and not isinstance(tokenizer, Mapping):
            raise MetaError("field 'tokenizer' is not an object")
        if fmt == 1:
            extra = {k: v for k, v in d.items() if k not in _V1_FIELDS}
            provenance = _v1_provenance(d.get("imported_from"))
            layout = d.get("layout") or _v1_layout(d, provenance)
        else:
            extra = d.get("extra") or {}
            provenance = _parse(Provenance, d.get("provenance") or {}, "provenance")
            layout = d.get("layout")
        return cls(kind=d["kind"], config=d["config"],
                   layout=_parse(TokenLayout, layout, "layout") if layout else None,
                   tokenizer=TokenizerLink.from_dict(tokenizer, base) if tokenizer else None,
                   class_names=tuple(_list(d.get("class_names") or [], "class_names")),
                   text_encoder=_parse(TextSpec, d["text_encoder"], "text_encoder") if d.get("text_encoder") else None,
                   provenance=provenance, preset=d.get("preset"), step=d.get("step"), extra=dict(extra),
                   path=Path(path) if path is not None else None)

    # ------------------------------------------------------------------ the old dict view
    def get(self, key: str, default=None):
        """Read-only dict-style access in format 1's key names (`meta.get("class_names")`), for
        code written against the untyped config.json; new code reads the fields."""
        if key == "path":
            return str(self.path) if self.path is not None else default
        view = self.to_dict(relative_to=self.path or Path.cwd())
        if self.tokenizer is not None:
            view["tokenizer"] = {"path": self.tokenizer.path, "sha256": self.tokenizer.sha256}
        if self.provenance.imported:
            view["imported_from"] = {"format": self.provenance.format, "path": self.provenance.file}
        if key in view:
            return view[key]
        return self.extra.get(key, default)

    def __getitem__(self, key: str):
        sentinel = object()
        value = self.get(key, sentinel)
        if value is sentinel:
            raise KeyError(key)
        return value


_V1_FIELDS = {"kind", "config", "preset", "step", "format", "layout", "tokenizer", "class_names",
              "text_encoder", "imported_from", "path"}


def _v1_provenance(imported) -> Provenance:
    if not imported:
        return Provenance()
    fmt = imported.get("format") or ""
    return Provenance(source=fmt.split("-")[0] if fmt.split("-")[0] in SOURCES else "imagelm",
                      file=imported.get("path"), format=fmt or None)


def _v1_layout(d: Mapping, provenance: Provenance) -> dict | None:
    """Format 1 LlamaGen imports stored no layout: one VQ index per position, read off the config."""
    c = d.get("config") or {}
    if provenance.format == "llamagen-gpt" and {"grid_size", "vocab_size"} <= set(c):
        return {"grid_size": c["grid_size"], "vocab_size": c["vocab_size"], "num_subtokens": 1, "bits": None}
    return None


def _parse(cls, value, name: str):
    """Dataclass `cls` from dict `value`, naming the field of config.json that does not fit."""
    if not isinstance(value, Mapping):
        raise MetaError(f"field {name!r} is not an object")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise MetaError(f"field '{name}.{unknown[0]}' is unknown")
    try:
        return cls(**value)
    except TypeError as e:
        raise MetaError(f"field {name!r} is incomplete: {e}") from None
    except ValueError as e:
        raise MetaError(f"field {name!r}: {str(e).splitlines()[0]}") from None


def _list(value, name: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise MetaError(f"field {name!r} must be a list")
    return list(value)


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A content hash of a state dict: sha256 over its keys (sorted), dtypes, shapes and bytes, so
    the same weights hash the same whatever file format or order they were stored in."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().contiguous().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())       # the bytes in place, no copy
    return h.hexdigest()
