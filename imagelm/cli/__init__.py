"""`imagelm <verb>`: each verb parses, calls one library function and prints. No logic of its own.

Verbs live in modules by group (training.py, codes.py, sampling.py, editing.py, evaluation.py,
serving.py, checkpoints.py); each module's `register(sub)` adds its verbs' parsers, every parser's `func` is the
verb, and flags that several verbs share are defined once in flags.py. To add a verb: write its
function and its `sub.add_parser(...)` in the group's `register` (or a new module listed in
VERB_MODULES); to add a flag to many verbs: extend or add a group in flags.py.

Bad input (unknown preset, missing or wrong-kind checkpoint, bad counts) ends with one line on
stderr and exit code 2; never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from imagelm.cli import checkpoints, codes, editing, evaluation, sampling, serving, training

EXIT_USAGE = 2
VERB_MODULES = (training, codes, sampling, editing, evaluation, serving, checkpoints)   # the help lists verbs in this order


def say(*args) -> None:
    """print() on the main process only (under torchrun every rank runs the CLI)."""
    if os.environ.get("RANK", "0") == "0":
        print(*args, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imagelm", description="Image generation with language models.",
                                epilog="Under torchrun, put `--` before the verb: torchrun ... -m imagelm.cli -- VERB ...")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in VERB_MODULES:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:   # torchrun ... -m imagelm.cli -- VERB ...: some Pythons pass the `--` on
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    from imagelm.checkpoint import CheckpointError
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, CheckpointError) as e:
        print(f"imagelm {args.verb}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"imagelm {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0
