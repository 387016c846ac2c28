import numpy as np
import pytest
import torch

from imagelm import sample_many as many
from imagelm.cli import main
from imagelm.eval.fid import load_images_npz
from imagelm.images import Sampler
from imagelm.runtime import Runtime
from imagelm.sampling.autoregressive import SamplingOptions


def _run(ckpt, out, **kw):
    return many.sample_many(ckpt, 5, out, batch_size=2, sampler=Sampler(SamplingOptions(cfg_scale=2.0, top_k=20)),
                            seed=3, device="cpu", progress=False, **kw)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One thread, as each process of a torchrun job has: the decoder's float sums (and so a pixel's
    rounding) depend on how many threads split them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tiny_generator, tmp_path_factory):
    out = tmp_path_factory.mktemp("many") / "ref.npz"
    _run(tiny_generator, out)
    return load_images_npz(out)


def test_writes_adm_batch_with_cycled_labels(reference, tiny_generator):
    images, labels = reference
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2, 3, 4]
    assert images.std() > 0


def test_resumes_after_an_interruption(reference, tiny_generator, tmp_path, monkeypatch):
    real_generate, calls = many.generate_images, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(many, "generate_images", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_generator, tmp_path / "s.npz")
    assert not (tmp_path / "s.npz").exists()
    assert len(list((tmp_path / "s.npz.parts").glob("chunk-*.npz"))) == 1
    monkeypatch.setattr(many, "generate_images", real_generate)
    assert _run(tiny_generator, tmp_path / "s.npz") == tmp_path / "s.npz"
    images, labels = load_images_npz(tmp_path / "s.npz")
    assert np.array_equal(images, reference[0]) and np.array_equal(labels, reference[1])
    assert not (tmp_path / "s.npz.parts").exists()


def test_ranks_split_the_chunks_and_give_the_same_file(reference, tiny_generator, tmp_path, monkeypatch):
    monkeypatch.setattr(many.runtime, "barrier", lambda rt: None)
    monkeypatch.setattr(many.runtime, "cleanup_runtime", lambda rt: None)
    for rank in (1, 0):  # rank 1 first: rank 0 then finds its share done and assembles
        monkeypatch.setattr(many.runtime, "setup_runtime", lambda device, r=rank: Runtime(device="cpu", rank=r,
                                                                                        world_size=2))
        result = _run(tiny_generator, tmp_path / "s.npz")
        if rank == 1:
            assert result is None
            assert sorted(p.name for p in (tmp_path / "s.npz.parts").glob("chunk-*")) == ["chunk-000001.npz"]
    images, labels = load_images_npz(tmp_path / "s.npz")
    assert np.array_equal(images, reference[0]) and np.array_equal(labels, reference[1])


def test_resume_with_other_settings_is_refused(tiny_generator, tmp_path, capsys):
    parts = tmp_path / "s.npz.parts"
    parts.mkdir()
    (parts / "plan.json").write_text('{"n": 7}')
    code = main(["sample-many", "--ckpt", str(tiny_generator), "--n", "5", "--out", str(tmp_path / "s.npz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "plan.json: a run with other settings" in err


def test_cli_sample_many(tiny_generator, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["sample-many", "--ckpt", str(tiny_generator), "--n", "3", "--batch-size", "4", "--classes",
                 "square", "--out", str(out)]) == 0
    images, labels = load_images_npz(out)
    assert images.shape == (3, 16, 16, 3) and labels.tolist() == [1, 1, 1]
    assert main(["sample-many", "--ckpt", str(tiny_generator), "--n", "0", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
