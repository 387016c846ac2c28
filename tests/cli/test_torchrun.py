"""Every command line the README (and the SLURM example) runs under torchrun goes through torchrun's
own parser intact and then through ours; the README's sample-many line runs for real as 2 gloo
processes and writes the file one process writes."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributed.run import get_args_parser

from imagelm.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def torchrun_lines() -> list[str]:
    """The torchrun command lines of README.md and examples/slurm_train.sh (continuations joined)."""
    text = (ROOT / "README.md").read_text() + "\n" + (ROOT / "examples" / "slurm_train.sh").read_text()
    text = re.sub(r"\\\n\s*", " ", text)
    lines = []
    for line in text.splitlines():
        line = line.split("  #")[0].strip()
        for start in ("torchrun ", "srun --kill-on-bad-exit=1 python -m torch.distributed.run "):
            if line.startswith(start):
                lines.append(line[len(start):])
    return lines


def test_every_documented_torchrun_line_parses_in_torchrun_and_in_imagelm():
    lines = torchrun_lines()
    assert len(lines) >= 5, lines            # 3 training lines, sample-many, the SLURM script
    ours = build_parser()
    for line in lines:
        argv = shlex.split(line)
        args = get_args_parser().parse_args(argv)        # exits on "ambiguous option: --n could match ..."
        assert args.module and args.training_script == "imagelm.cli", line
        script_args = args.training_script_args
        script_args = script_args[1:] if script_args[:1] == ["--"] else script_args
        assert ours.parse_args(script_args).verb in ("train", "sample-many"), line


def test_readme_sample_many_line_runs_under_real_torchrun(tiny_generator, tmp_path):
    """torchrun (2 gloo processes) runs the README's line; the file equals one process's, each index once."""
    from imagelm import sample_many
    from imagelm.eval.fid import load_images_npz
    from imagelm.images import Sampler
    from imagelm.sampling.autoregressive import SamplingOptions
    from distributed import free_port
    (line,) = [l for l in torchrun_lines() if " sample-many " in l]
    line = (line.replace("--nproc-per-node 4", "--nproc-per-node 2").replace("runs/gpt", str(tiny_generator))
            .replace("--n 50000", "--n 5 --batch-size 2 --device cpu").replace("samples.npz", str(tmp_path / "s.npz")))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PET_MASTER_PORT": str(free_port())}
    proc = subprocess.run([torchrun, *shlex.split(line)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 to sample on this process (of 2)" in proc.stdout      # chunks 0, 2 on rank 0; chunk 1 on rank 1
    images, labels = load_images_npz(tmp_path / "s.npz")
    assert images.shape[0] == 5 and labels.tolist() == [0, 1, 2, 3, 4]     # every index once, in order
    assert len({im.tobytes() for im in images}) == 5
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # as each torchrun process: the decoder's sums depend on the thread count
    try:
        one = sample_many.sample_many(tiny_generator, 5, tmp_path / "one.npz", batch_size=2,
                                      sampler=Sampler(SamplingOptions(cfg_scale=2.0)), device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(images, load_images_npz(one)[0])


def test_leading_double_dash_is_accepted(tiny_generator, tmp_path, capsys):
    from imagelm.cli import main
    assert main(["--", "sample", "--ckpt", str(tiny_generator), "--classes", "0", "--n", "1",
                 "--out", str(tmp_path / "g.png"), "--dtype", "float32"]) == 0
    assert (tmp_path / "g.png").is_file()


@pytest.mark.parametrize("verb", ["train", "train-tokenizer", "sample", "sample-many"])
def test_flags_that_torchrun_would_take_are_the_documented_ones(verb):
    """Which of our flags torchrun reads as (ambiguous) abbreviations of its own: the reason the
    README puts `--` before the verb. A new one shows up here."""
    ours = build_parser()._subparsers._group_actions[0].choices[verb]
    theirs = [s for a in get_args_parser()._actions for s in a.option_strings if s.startswith("--")]
    flags = {s for a in ours._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    clashing = sorted(f for f in flags if any(t.startswith(f) for t in theirs))
    assert clashing == {"train": ["--log"], "train-tokenizer": ["--log"], "sample": ["--n"],
                        "sample-many": ["--n"]}[verb]
