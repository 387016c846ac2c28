"""The CLI's shared flag groups: one definition, so names, defaults and choices agree across verbs."""
import argparse

import pytest

from imagelm.cli import build_parser, flags


def _verb(name) -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices[name]


def _options(parser) -> dict:
    return {a.option_strings[-1] if a.option_strings[-1] != "--workers" else "--num-workers": (a.default, a.choices)
            for a in parser._actions if a.option_strings and a.option_strings[0] != "-h"}


@pytest.mark.parametrize("a,b", [("sample", "sample-many"), ("train", "train-tokenizer")])
def test_verbs_of_a_kind_share_their_flags_exactly(a, b):
    oa, ob = _options(_verb(a)), _options(_verb(b))
    shared = set(oa) & set(ob) - {"--n", "--out", "--batch-size", "--steps", "--lr", "--preset", "--preview-every",
                                  "--ckpt-every", "--classes"}
    assert len(shared) >= 12
    assert {k: oa[k] for k in shared} == {k: ob[k] for k in shared}


def test_sampling_flags_have_their_choices_everywhere():
    from imagelm.runtime import SAMPLING_DTYPES
    from imagelm.sampling.logits import CFG_SCHEDULES
    assert tuple(flags.SAMPLING_DTYPES) == tuple(SAMPLING_DTYPES)
    for verb in ("sample", "sample-many"):
        assert list(_options(_verb(verb))["--cfg-schedule"][1]) == list(CFG_SCHEDULES)
    assert _options(_verb("serve"))["--dtype"] == _options(_verb("sample"))["--dtype"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample-many", "--ckpt", "x", "--out", "y", "--cfg-schedule", "wobbly"])


def test_sampler_is_built_from_the_flags():
    a = build_parser().parse_args(["sample", "--ckpt", "x", "--cfg", "3", "--top-k", "7", "--engine", "plain",
                                   "--steps", "4", "--dtype", "int8"])
    s = flags.sampler(a)
    assert (s.options.cfg_scale, s.options.top_k, s.engine, s.steps, s.dtype) == (3.0, 7, "plain", 4, "int8")


def test_every_verb_takes_device_and_the_workers_default_is_one():
    sub = build_parser()._subparsers._group_actions[0].choices
    without_device = {v for v, p in sub.items() if "--device" not in _options(p)}
    assert without_device == {"study", "convert", "export"}
    assert _options(sub["train"])["--num-workers"] == _options(sub["train-tokenizer"])["--num-workers"]


def test_the_cli_modules_stay_small():
    from pathlib import Path
    import imagelm.cli as cli
    sizes = {p.name: len(p.read_text().splitlines()) for p in Path(cli.__file__).parent.glob("*.py")}
    assert max(sizes.values()) < 300, sizes
