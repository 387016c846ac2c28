"""From conditions to pictures: the one path that `imagelm sample`, `sample-many`, the demos, the
study, training previews and the server all take.

    conds = conditions(gen, classes=[0, "circle"])                  # the one condition validator
    out = generate_images(gen, conds.cond, tokenizer, n=4, sampler=Sampler(SamplingOptions(cfg_scale=2)))
    save_images(out.images, "grid.png", nrow=4)                     # out.tokens [8, L, n], out.images [8, 3, H, W]

A generator's tokens decode through the layout its checkpoint records (`meta.layout`), so an
imported generator whose grid differs from its tokenizer's native size decodes right.

Sampling AR generators through the engine reuses one engine while the same model's weights are
unchanged (a small cache held here, never on the model): a bf16 or int8 engine holds a converted
copy of the weights, so the cache is keyed by the model and a fingerprint of its parameters
(storage and in-place version counters), and a training preview after an optimizer or EMA step
gets a fresh engine.
"""
from __future__ import annotations

import dataclasses
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imagelm import checkpoint
from imagelm.models.conditioning import TextCondition
from imagelm.runtime import choose_sampling_dtype, seeded_generator
from imagelm.sampling.autoregressive import SamplingOptions, generate
from imagelm.sampling.conventions import CONVENTIONS, plan_sampling, resolve_conventions
from imagelm.sampling.engine import COMPILE_CHOICES, DECODE_MODES, Engine
from imagelm.sampling.jacobi import describe_passes
from imagelm.sampling.masked import REMASK_RULES, generate_masked
from imagelm.vocab import TokenLayout

SAMPLERS = ("engine", "plain")
# The options a caller may leave to the conventions' defaults (Sampler.defaulted).
OPTION_NAMES = ("cfg_scale", "cfg_schedule", "cfg_interval", "temperature", "top_k", "top_p", "steps")


@dataclass(frozen=True)
class Sampler:
    """How tokens are drawn: the logits maths (`options`), and the machinery: AR generators through
    the fast `engine` (in `dtype`: auto | float32 | bfloat16 | int8) or the `plain` reference
    sampler; masked generators in `steps` parallel steps. The engine decodes one token per step
    (`decode="plain"`) or verifies `window` draft tokens per forward pass (`decode="jacobi"`,
    speculative Jacobi decoding: the same distribution, another random stream; `groups` > 1: lossy
    grouped acceptance over each token's `groups` nearest codes; `draft_codes`: a codes directory to
    draft from where the last `draft_match` tokens match a stored image, exact; see
    sampling/jacobi.py), eager or with its step compiled (`compile`: auto | on | off; auto compiles only when the work pays it back).

    `conventions`: whose meaning the options have (sampling/conventions.py): imagelm (ours), elm,
    llamagen, or auto (the generator's provenance: an import samples as its original code does).
    `defaulted` names the options (OPTION_NAMES) the caller left unset: under elm / llamagen they
    take that project's sampling-script defaults. Masked generators re-mask by `remask` (rank: ours,
    elm: ELM's cut-off rule) with Gumbel noise of `choice_temperature` on the confidences.
    `resolve_sampler` turns all of this into our own terms before sampling."""
    options: SamplingOptions = field(default_factory=SamplingOptions)
    steps: int = 10
    engine: str = "engine"
    dtype: str = "auto"
    decode: str = "plain"
    window: int = 16
    groups: int = 1
    draft_codes: str | None = None
    draft_match: int = 4
    compile: str = "auto"
    conventions: str = "imagelm"
    defaulted: frozenset = frozenset()
    choice_temperature: float = 4.5
    remask: str = "rank"

    def __post_init__(self):
        if self.engine not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.engine!r}; choose engine or plain")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"unknown decoding {self.decode!r}; choose plain or jacobi")
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"--compile must be auto, on or off, got {self.compile!r}")
        if self.decode == "jacobi" and self.engine == "plain":
            raise ValueError("--decode jacobi runs in the engine; drop --engine plain")
        if self.window < 1:
            raise ValueError(f"--window must be >= 1, got {self.window}")
        if self.groups < 1:
            raise ValueError(f"--jacobi-groups must be >= 1 (1: exact acceptance), got {self.groups}")
        if self.groups > 1 and self.decode != "jacobi":
            raise ValueError("--jacobi-groups is an acceptance rule of --decode jacobi; add --decode jacobi")
        if self.draft_codes is not None and self.decode != "jacobi":
            raise ValueError("--draft-codes gives Jacobi decoding its drafts; add --decode jacobi")
        if not 1 <= self.draft_match <= 16:
            raise ValueError(f"--draft-match must be 1..16 tokens, got {self.draft_match}")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.conventions not in ("auto", *CONVENTIONS):
            raise ValueError(f"unknown sampling conventions {self.conventions!r}; choose auto, "
                             f"{', '.join(CONVENTIONS)}")
        if not set(self.defaulted) <= set(OPTION_NAMES):
            raise ValueError(f"unknown options {sorted(set(self.defaulted) - set(OPTION_NAMES))} in defaulted")
        if self.remask not in REMASK_RULES:
            raise ValueError(f"unknown re-masking rule {self.remask!r}; choose {' or '.join(REMASK_RULES)}")


def asked_sampler(asked: dict, conventions: str = "auto", fallback: dict | None = None, **machinery) -> Sampler:
    """The Sampler for options as a caller asks them: asked maps OPTION_NAMES (and cfg_power) to a
    value or None (unset: the conventions' default, else `fallback`'s value, else SamplingOptions');
    machinery: the other Sampler fields (engine, dtype, ...)."""
    values = {**(fallback or {}), **{k: v for k, v in asked.items() if v is not None}}
    steps = values.pop("steps", 10)
    return Sampler(SamplingOptions(**values), steps=steps, conventions=conventions,
                   defaulted=frozenset(k for k in OPTION_NAMES if asked.get(k) is None), **machinery)


@dataclass(frozen=True)
class Conditions:
    """Validated conditions: cond (class ids [B] int64 or a TextCondition of batch B), a readable
    name for each (class name or prompt), and what they are ("classes" or "prompts")."""
    cond: torch.Tensor | TextCondition
    names: tuple[str, ...]
    what: str

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Generated:
    """What `generate_images` made: tokens [B * n, L, n_sub] int64 and images [B * n, 3, H, W]
    float32 on the CPU in [-1, 1], grouped by condition."""
    tokens: torch.Tensor
    images: torch.Tensor


# ---------------------------------------------------------------------------------- conditions
def resolve_classes(classes, class_names, num_classes: int) -> list[int]:
    """Class ids from ids or names (e.g. [0, "circle"]); a one-line ValueError for unknown ones."""
    class_names = list(class_names)
    ids = []
    for c in classes:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in class_names:
                known = ", ".join(class_names) if class_names else "none (the model has only numeric ids)"
                raise ValueError(f"unknown class {c!r}; known class names: {known}")
            ids.append(class_names.index(c))
            continue
        i = int(c)
        if not 0 <= i < num_classes:
            raise ValueError(f"unknown class {i}: the model has classes 0..{num_classes - 1}")
        ids.append(i)
    return ids


def encode_prompts(generator, prompts: list[str], text_encoder=None) -> TextCondition:
    """Prompts (B strings) -> TextCondition [B, T, C] from the text encoder the generator was trained
    with (named in its checkpoint), or from `text_encoder` (an imagelm.text.TextEncoder) if given."""
    from imagelm.text import text_encoder_from_spec
    if not prompts:
        raise ValueError("no prompts given")
    device = next(generator.parameters()).device
    if text_encoder is None:
        meta = meta_of(generator)
        if meta is None or meta.text_encoder is None:
            raise ValueError("this text-conditional generator does not name its text encoder; pass text_encoder=")
        text_encoder = text_encoder_from_spec(meta.text_encoder.to_dict(), device)
    want = (generator.config.cls_token_num, generator.config.caption_dim)
    if (text_encoder.max_len, text_encoder.dim) != want:
        raise ValueError(f"text encoder gives [T, C] = [{text_encoder.max_len}, {text_encoder.dim}] but the "
                         f"generator expects [{want[0]}, {want[1]}]")
    return text_encoder.encode(list(prompts)).to(device)


def read_prompts(file) -> list[str]:
    """The non-empty lines of a prompts file; a one-line error when missing or empty."""
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"no prompts in {path} (one per line)")
    return prompts


def conditions(generator, classes=None, prompts=None, text_encoder=None) -> Conditions:
    """The one condition validator: class ids or names for a class generator (None: every class),
    prompts for a text generator; the wrong kind for the generator is a one-line ValueError."""
    prompts = list(prompts or [])
    if generator.config.cond == "text":
        if classes:
            raise ValueError("this generator is text-conditional: give --prompt TEXT or --prompts FILE, not --classes")
        if not prompts:
            raise ValueError("this generator is text-conditional: give --prompt TEXT or --prompts FILE")
        return Conditions(encode_prompts(generator, prompts, text_encoder), tuple(prompts), "prompts")
    if prompts:
        raise ValueError("this generator is class-conditional: give --classes, not --prompt/--prompts")
    names = class_names_of(generator)
    num = generator.config.num_classes
    ids = resolve_classes(list(classes) if classes else range(num), names, num)
    return Conditions(torch.tensor(ids, dtype=torch.long),
                      tuple(names[i] if i < len(names) else str(i) for i in ids), "classes")


def as_condition(generator, cond, text_encoder=None) -> torch.Tensor | TextCondition:
    """What `imagelm.sample` accepts, as the sampler's condition: a tensor of class ids [B] or a
    TextCondition as they are; a list of ids/names (class generators) or a prompt / list of prompts
    (text generators) through `conditions`."""
    if isinstance(cond, TextCondition) or torch.is_tensor(cond):
        return cond
    if generator.config.cond == "text":
        return conditions(generator, prompts=[cond] if isinstance(cond, str) else list(cond),
                          text_encoder=text_encoder).cond
    return conditions(generator, classes=list(cond) or None).cond


def meta_of(module) -> checkpoint.CheckpointMeta | None:
    """The CheckpointMeta a loader attached to `module`; None for a module built in memory."""
    meta = getattr(module, "meta", None)
    return meta if isinstance(meta, checkpoint.CheckpointMeta) else None


def class_names_of(generator) -> tuple[str, ...]:
    meta = meta_of(generator)
    return meta.class_names if meta else ()


# ------------------------------------------------------------------------------------ sampling
def sample_tokens(generator, cond, n: int = 1, sampler: Sampler = Sampler(), seed: int = 0,
                  progress: bool = False, say=None) -> torch.Tensor:
    """Sample `n` images per condition (cond: class ids [B] or a TextCondition of batch B)
    -> tokens [B * n, L, n_sub] int64, grouped by condition. Same seed, same tokens (same device,
    same dtype); in float32 the engine and the plain sampler give the same tokens. `say` (if given)
    gets a line on how many passes Jacobi decoding took."""
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    device = next(generator.parameters()).device
    cond = cond.to(device).repeat_interleave(n)
    sampler = resolve_sampler(generator, sampler)
    options = sampler.options
    if generator.kind == "mlm":
        if options.cfg_interval >= 0:
            raise ValueError("--cfg-interval guides the first N tokens of an autoregressive generator; a masked "
                             "generator decodes every position at every step (use --cfg-schedule)")
        return generate_masked(generator, cond, options, sampler.steps, seeded_generator(seed, device),
                               choice_temperature=sampler.choice_temperature, progress=progress,
                               remask=sampler.remask)
    if sampler.engine == "plain":
        return generate(generator, cond, options, seeded_generator(seed, device), progress=progress)
    rows = len(cond) * (2 if options.guided else 1)
    request = engine_for(generator, rows, sampler).run_request(cond, options, seed, progress=progress)
    if say is not None and request.jacobi is not None:
        say(describe_passes(request.jacobi.passes, generator.config.seq_len))
    return request.tokens


def resolve_sampler(generator, sampler: Sampler) -> Sampler:
    """The Sampler in our own terms (conventions "imagelm", nothing defaulted) that samples
    `generator` as `sampler` asks: its conventions resolved against the generator's provenance,
    unset options filled with those conventions' defaults, schedule names, temperatures, guidance
    interval and re-masking rule translated (sampling/conventions.plan_sampling)."""
    conventions = resolve_conventions(sampler.conventions, meta_of(generator))
    if conventions == "imagelm" and sampler.conventions == "imagelm":
        return sampler if not sampler.defaulted else dataclasses.replace(sampler, defaulted=frozenset())
    o = sampler.options
    values = {name: getattr(o, name) for name in OPTION_NAMES if name != "steps"} | {"steps": sampler.steps}
    if conventions != "imagelm":           # ours keep the caller's values (e.g. the CLI's CFG 2)
        values = {k: None if k in sampler.defaulted else v for k, v in values.items()}
    plan = plan_sampling(conventions, generator.kind, generator.config.cond, **values, cfg_power=o.cfg_power,
                         choice_temperature=sampler.choice_temperature, remask=sampler.remask)
    return dataclasses.replace(sampler, options=plan.options, steps=plan.steps, conventions="imagelm",
                               defaulted=frozenset(), choice_temperature=plan.choice_temperature,
                               remask=plan.remask)


def describe_sampler(generator, sampler: Sampler) -> str:
    """One line saying how `generator` will be sampled, e.g. "sampler: engine, bfloat16 (...)"; an
    import sampled with its original code's conventions says so first."""
    conventions = resolve_conventions(sampler.conventions, meta_of(generator))
    line = _describe_machinery(generator, resolve_sampler(generator, sampler))
    if conventions == "imagelm":
        return line
    return (f"sampling conventions: {conventions}'s (its schedules, rules and defaults; --conventions imagelm "
            f"for ours)\n{line}")


def _describe_machinery(generator, sampler: Sampler) -> str:
    if generator.kind != "ar":
        rule = ", ELM's re-masking" if sampler.remask == "elm" else ""
        return f"sampler: masked parallel decoding, {sampler.steps} steps{rule}"
    if sampler.engine == "plain":
        return "sampler: plain (reference), float32"
    dtype, why = choose_sampling_dtype(next(generator.parameters()).device, sampler.dtype)
    grouped = f", grouped acceptance over {sampler.groups} codes: lossy" if sampler.groups > 1 else ""
    if sampler.draft_codes:
        grouped += f", drafts from {sampler.draft_codes} (matches of {sampler.draft_match}+ tokens)"
    how = f", speculative Jacobi decoding (window {sampler.window}{grouped})" if sampler.decode == "jacobi" else ""
    return f"sampler: engine, {dtype} ({why}){how}"


# One engine, for the model sampled last: the cache holds the model weakly and the engine only while
# that model's weights are unchanged.
_cache_lock = threading.Lock()
_cached: dict = {}


def _fingerprint(model) -> tuple:
    """Changes whenever a parameter or buffer is replaced or written in place (optimizer and EMA
    steps, load_state_dict): the storage address and autograd's in-place version of each."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


def engine_for(generator, rows: int, sampler: Sampler = Sampler()) -> Engine:
    """An Engine over `generator`'s current weights with at least `rows` cache rows, in the
    sampler's dtype, decoding and compile setting, reused while the same model is sampled again
    with unchanged weights."""
    key = (_fingerprint(generator), sampler.dtype, sampler.decode, sampler.window, sampler.groups,
           sampler.draft_codes, sampler.draft_match, sampler.compile)
    with _cache_lock:
        ref, old_key, engine = _cached.get("model"), _cached.get("key"), _cached.get("engine")
        if ref is not None and ref() is generator and old_key == key and engine.rows >= rows:
            return engine
        _cached.clear()                  # free the old engine's caches (and weight copy) first
    # workload: one batch of seq_len steps; `compile="auto"` compiles only for much more than that.
    engine = Engine(generator, rows=rows, dtype=sampler.dtype, compile=sampler.compile,
                    workload=generator.config.seq_len, **decoding_arguments(generator, sampler))
    with _cache_lock:
        _cached.update(model=weakref.ref(generator), key=key, engine=engine)
    return engine


def decoding_arguments(generator, sampler: Sampler) -> dict:
    """The Engine arguments of the sampler's decoding for `generator`: decode and window, and for
    Jacobi decoding its acceptance groups and draft store (None when not asked for)."""
    return dict(decode=sampler.decode, window=sampler.window,
                groups=acceptance_groups(generator, sampler.groups) if sampler.groups > 1 else None,
                draft_store=draft_store(generator, sampler.draft_codes, sampler.draft_match)
                if sampler.draft_codes else None)


def token_vectors(generator) -> torch.Tensor:
    """Where each of the generator's tokens lies in its tokenizer's code space -> [V, D]: the bits of
    a binary sub-token (D = bits per sub-token), else the linked VQ tokenizer's codebook as used."""
    layout = layout_of(generator)
    if layout is not None and layout.bits is not None:
        values = torch.arange(layout.vocab_size)
        return ((values[:, None] >> torch.arange(layout.bits_per_token)) & 1).float()
    meta = meta_of(generator)
    if meta is None:
        raise ValueError("grouped acceptance needs the generator's tokenizer: load the generator from its "
                         "checkpoint directory (imagelm.load) so that its linked tokenizer can be found")
    from imagelm.tokenizers import load_linked_tokenizer
    tokenizer = load_linked_tokenizer(meta)
    quantize = getattr(tokenizer, "quantize", None)
    if not hasattr(quantize, "codebook"):
        raise ValueError(f"grouped acceptance needs a codebook; {type(tokenizer).__name__} has none")
    vectors = quantize.codebook().detach().float()
    if vectors.shape[0] != generator.config.vocab_size:
        raise ValueError(f"the linked tokenizer has {vectors.shape[0]} codes, the generator "
                         f"{generator.config.vocab_size} tokens")
    return vectors


def draft_store(generator, codes_dir, min_match: int = 4):
    """Jacobi decoding's drafts from a codes directory (`imagelm extract-codes`, e.g. the generator's
    training codes) -> a jacobi.DraftStore of its first view, checked against the generator."""
    from imagelm.data.codes import CodesDataset
    from imagelm.sampling.jacobi import DraftStore
    try:
        codes = CodesDataset(codes_dir)
    except FileNotFoundError as e:
        raise ValueError(f"--draft-codes: {e}") from None
    layout, expected = codes.layout, layout_of(generator)
    config = generator.config
    if (layout.seq_len, layout.num_subtokens, layout.vocab_size) != (config.seq_len, config.num_subtokens,
                                                                    config.vocab_size):
        raise ValueError(f"--draft-codes {codes_dir}: its codes ({layout.grid_size}x{layout.grid_size} x "
                         f"{layout.num_subtokens} of {layout.vocab_size}) are not this generator's tokens "
                         f"({config.grid_size}x{config.grid_size} x {config.num_subtokens} of {config.vocab_size})")
    if expected is not None and expected.bits != layout.bits:
        raise ValueError(f"--draft-codes {codes_dir}: other codes ({layout.bits} bits) than the generator's "
                         f"({expected.bits} bits)")
    tokens, labels = codes.batch(torch.arange(len(codes)), views=torch.zeros(len(codes), dtype=torch.long))
    return DraftStore(tokens, labels if config.cond == "class" else None, min_match)


def acceptance_groups(generator, size: int) -> torch.Tensor:
    """Jacobi decoding's acceptance groups of `generator`'s tokens: [V, size], each token's nearest
    tokens in its tokenizer's code space (itself first)."""
    from imagelm.sampling.jacobi import nearest_groups
    vectors = token_vectors(generator)
    if size > len(vectors):
        raise ValueError(f"--jacobi-groups {size} is more than the {len(vectors)} tokens of the vocabulary")
    return nearest_groups(vectors, size).to(next(generator.parameters()).device)


# ------------------------------------------------------------------------------------ decoding
def layout_of(generator) -> TokenLayout | None:
    """The token layout a generator's checkpoint records (None for a module built in memory)."""
    meta = meta_of(generator)
    return meta.layout if meta else None


@torch.no_grad()
def decode_tokens(tokens: torch.Tensor, tokenizer, layout: TokenLayout | None = None) -> torch.Tensor:
    """tokens [B, L, n] (or [B, L]) -> images [B, 3, H, W] float32 on the CPU in [-1, 1].

    layout: how the tokens map to the tokenizer's codes (a generator's `meta.layout`); default: the
    tokenizer's own codes split into n sub-tokens on a square grid of L positions."""
    if layout is None:
        n_sub = tokens.shape[-1] if tokens.dim() == 3 else 1
        layout = TokenLayout.for_tokenizer(tokenizer, n_sub, grid_size=int(round(tokens.shape[1] ** 0.5)))
    else:
        check_tokenizer_fits(layout, tokenizer)
    device = next(tokenizer.parameters()).device
    return tokenizer.decode(layout.to_codes(tokens.to(device))).float().cpu()


def check_tokenizer_fits(layout: TokenLayout, tokenizer) -> None:
    """A one-line ValueError unless tokens of `layout` are codes of `tokenizer` (the same codebook
    size, or the same number of bits a position; the grid may differ: the tokenizers are convolutional)."""
    bits = getattr(tokenizer, "code_bits", None)
    if layout.bits != bits or (bits is None and layout.vocab_size != tokenizer.vocab_size):
        def say(b, v):
            return f"{b}-bit codes" if b is not None else f"indices of a {v}-entry codebook"
        raise ValueError(f"the generator's tokens ({say(layout.bits, layout.vocab_size)}) do not fit this "
                         f"tokenizer's codes ({say(bits, tokenizer.vocab_size)})")


def generate_images(generator, cond, tokenizer, n: int = 1, sampler: Sampler = Sampler(), seed: int = 0,
                    progress: bool = False, layout: TokenLayout | None = None) -> Generated:
    """Sample n images per condition (cond: class ids [B] or a TextCondition) and decode them with
    `tokenizer` through `layout` (default: the one the generator's checkpoint records)."""
    tokens = sample_tokens(generator, cond, n, sampler, seed, progress)
    return Generated(tokens, decode_tokens(tokens, tokenizer, layout or layout_of(generator)))


def save_images(images: torch.Tensor, grid, nrow: int, each=None) -> list[Path]:
    """images [B, 3, H, W] in [-1, 1] -> a PNG grid at `grid` (`nrow` a row) and, when `each` is a
    folder, one PNG per image (00000.png, ...); returns the paths written (grid first)."""
    from PIL import Image

    from imagelm.data.transforms import save_grid, to_uint8
    written = [save_grid(images, grid, nrow=nrow)]
    if each is not None:
        folder = Path(each)
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(to_uint8(images)):
            Image.fromarray(img).save(folder / f"{i:05d}.png")
        written.append(folder)
    return written


def sample_to_files(ckpt, out, classes=None, prompts=None, n: int = 4, sampler: Sampler = Sampler(),
                    seed: int = 0, tokenizer=None, each=None, tokens_out=None, device=None,
                    say=print, progress: bool = True) -> Generated:
    """`imagelm sample`: the generator at `ckpt`, n images per class or prompt -> a PNG grid at `out`
    (a row per condition), optionally one PNG per image in `each` and the tokens [B, L, n] as .npy at
    `tokens_out` (then a missing tokenizer only skips the images). `say` gets one line per step."""
    import numpy as np

    from imagelm.runtime import pick_device
    from imagelm.tokenizers import load_linked_tokenizer, load_tokenizer
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    device = pick_device(device)
    gen = _load_generator(ckpt, device)
    conds = conditions(gen, classes, prompts)
    # Found (and its hash checked) before sampling, so a missing tokenizer fails fast.
    tok = (load_tokenizer(tokenizer, device) if tokenizer else
           load_linked_tokenizer(gen.meta, device, required=not tokens_out))
    say(describe_sampler(gen, sampler))
    tokens = sample_tokens(gen, conds.cond, n, sampler, seed, progress, say=say)
    if tokens_out:
        np.save(tokens_out, tokens.cpu().numpy())
        say(f"tokens {tuple(tokens.shape)}: {tokens_out}")
    if tok is None:
        say("no tokenizer found for this generator: saved tokens only")
        return Generated(tokens, torch.empty(0))
    images = decode_tokens(tokens, tok, layout_of(gen))
    save_images(images, out, nrow=n, each=each)
    say(f"{len(images)} images ({len(conds)} {conds.what} x {n}, a row each): {out}")
    if each:
        say(f"one PNG per image: {each}")
    return Generated(tokens, images)


def _load_generator(ckpt, device):
    from imagelm.models import load_generator
    return load_generator(ckpt, device)
