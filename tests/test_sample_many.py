import numpy as np
import pytest

from imagelm.cli import main
from imagelm.eval.fid import load_images_npz
from imagelm.sampling import many
from imagelm.runtime import Runtime


def _run(ckpt, out, **kw):
    return many.sample_many(ckpt, 5, out, batch_size=2, cfg_scale=2.0, top_k=20, seed=3, device="cpu",
                            progress=False, **kw)


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
    import imagelm
    real_sample, calls = imagelm.sample, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(imagelm, "sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_generator, tmp_path / "s.npz")
    assert not (tmp_path / "s.npz").exists()
    assert len(list((tmp_path / "s.npz.parts").glob("chunk-*.npz"))) == 1
    monkeypatch.setattr(imagelm, "sample", real_sample)
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


def test_two_gloo_ranks_give_each_index_once_and_the_one_rank_file(reference, tiny_generator, tmp_path):
    from distributed import launch
    out = tmp_path / "s.npz"
    results = launch(["sample-many", "--ckpt", str(tiny_generator), "--n", "5", "--batch-size", "2", "--cfg", "2.0",
                      "--top-k", "20", "--seed", "3", "--device", "cpu", "--out", str(out)], world_size=2)
    assert [r.returncode for r in results] == [0, 0], results[0].stderr[-2000:]
    assert "2 to sample on this process (of 2)" in results[0].stdout   # chunks 0, 2 on rank 0; 1 on rank 1
    images, labels = load_images_npz(out)
    assert images.shape[0] == 5 and labels.tolist() == [0, 1, 2, 3, 4]  # every index once, in order
    assert np.array_equal(images, reference[0]) and np.array_equal(labels, reference[1])
    assert len({im.tobytes() for im in images}) == 5                    # no chunk written twice
    assert not (tmp_path / "s.npz.parts").exists()
