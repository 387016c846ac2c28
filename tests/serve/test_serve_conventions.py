"""The server samples an imported model with its checkpoint's conventions, as `imagelm sample` does:
fields a request leaves out take the original script's defaults, given ones that project's meaning."""
from imagelm.metadata import CheckpointMeta, Provenance
from imagelm.sampling.logits import SamplingOptions
from imagelm.serve.schema import request_model, sampling_options


class _Gen:
    def __init__(self, source="imagelm", cond="class"):
        fmt = None if source == "imagelm" else f"{source}-gpt"
        self.kind, self.config = "ar", type("C", (), {"cond": cond})()
        self.meta = CheckpointMeta(kind="ar", config={}, provenance=Provenance(source, None, fmt))


def test_request_options_follow_the_served_models_conventions():
    Body = request_model(8, text=False)
    bare, given = Body(**{"class": 0}), Body(**{"class": 0, "cfg": 3.0, "cfg_schedule": "linear", "top_k": 5})
    # Ours: the schema's defaults and values, unchanged (and the same without a generator).
    assert sampling_options(bare, _Gen()) == sampling_options(bare) == SamplingOptions(cfg_scale=2.0)
    assert sampling_options(given, _Gen()) == SamplingOptions(cfg_scale=3.0, cfg_schedule="linear", top_k=5)
    # ELM: sample_fid.sh's defaults for what is left out; its linear schedule for "linear".
    elm = sampling_options(bare, _Gen("elm"))
    assert (elm.cfg_scale, elm.cfg_schedule, elm.top_k) == (4.0, "elm-linear", 1000)
    assert sampling_options(given, _Gen("elm")) == SamplingOptions(cfg_scale=3.0, cfg_schedule="elm-linear", top_k=5)
    # LlamaGen: sample_c2i.py's defaults; its cfg_interval counts from the second token.
    lg = sampling_options(Body(**{"class": 0, "cfg_interval": 3}), _Gen("llamagen"))
    assert (lg.cfg_scale, lg.top_k, lg.cfg_interval) == (4.0, 2000, 5)
