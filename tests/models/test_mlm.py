import pytest
import torch

from imagelm.models import build_generator, gpt_config
from imagelm.models.mlm import random_training_mask
from imagelm.sampling.autoregressive import SamplingOptions
from imagelm.sampling.masked import generate_masked


@pytest.fixture(scope="module")
def mlm():
    torch.manual_seed(0)
    m = build_generator(gpt_config("tiny", vocab_size=16, grid_size=4, num_classes=3, num_subtokens=2), "mlm").eval()
    for head in m.output.heads:
        torch.nn.init.normal_(head.weight, std=0.3)
    return m


def test_bidirectional_logits_shapes(mlm):
    tokens = torch.randint(0, 16, (2, 16, 2))
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 5] = True
    logits = mlm(tokens, torch.tensor([0, 1]), mask)
    assert logits.shape == (2, 16, 2, 16)
    changed = tokens.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 16       # a later position changes an earlier prediction
    assert not torch.allclose(logits[:, 5], mlm(changed, torch.tensor([0, 1]), mask)[:, 5])
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 16         # a masked position's own value is not seen
    assert torch.allclose(logits, mlm(changed, torch.tensor([0, 1]), mask))


def test_training_mask_ratio_and_at_least_one():
    mask = random_training_mask(4000, 16)
    assert mask.sum(1).min() >= 1
    # E[cos(pi/2 u)] = 2/pi of the positions on average (rounded up)
    assert abs(mask.float().mean().item() - 2 / torch.pi) < 0.05


class _Recorder(torch.nn.Module):
    """Wraps a masked generator and records how many positions are masked at each call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.kind, self.calls = model, model.config, "mlm", []

    def null_cond(self, c):
        return self.model.null_cond(c)

    def forward(self, tokens, cond, mask):
        self.calls.append(mask.sum(1).tolist())
        return self.model(tokens, cond, mask)


@pytest.mark.parametrize("steps", [1, 4, 10])
def test_sampler_fills_every_position_in_the_requested_steps(mlm, steps):
    rec = _Recorder(mlm)
    tokens = generate_masked(rec, torch.tensor([0, 2]), SamplingOptions(cfg_scale=2.0), steps,
                             torch.Generator().manual_seed(0))
    assert tokens.shape == (2, 16, 2) and tokens.max() < 16
    assert len(rec.calls) == steps
    masked_counts = [c[0] for c in rec.calls]
    assert masked_counts[0] == 16
    assert all(a > b for a, b in zip(masked_counts, masked_counts[1:]))  # strictly fewer each step


def test_sampler_respects_given_tokens_and_seed(mlm):
    given = torch.randint(0, 16, (1, 16, 2))
    known = torch.zeros(1, 16, dtype=torch.bool)
    known[0, :6] = True
    out = generate_masked(mlm, torch.tensor([1]), SamplingOptions(top_k=4), 5, torch.Generator().manual_seed(1),
                          tokens=given, known=known)
    assert torch.equal(out[0, :6], given[0, :6])
    again = generate_masked(mlm, torch.tensor([1]), SamplingOptions(top_k=4), 5, torch.Generator().manual_seed(1),
                            tokens=given, known=known)
    assert torch.equal(out, again)


def test_text_conditioned_masked_generator_ignores_caption_padding():
    from imagelm.models.conditioning import TextCondition
    torch.manual_seed(0)
    cfg = gpt_config("tiny-t2i", vocab_size=16, grid_size=4, cls_token_num=6, caption_dim=8)
    model = build_generator(cfg, "mlm").eval()
    torch.nn.init.normal_(model.output.heads[0].weight, std=0.3)
    feats = torch.randn(1, 6, 8)
    mask = torch.tensor([[False, False, True, True, True, True]])    # left-padded: 2 padding slots
    other = feats.clone()
    other[:, :2] = torch.randn(1, 2, 8)                              # change only the padding
    tokens, hidden = torch.randint(0, 16, (1, 16)), torch.rand(1, 16) < 0.5
    a = model(tokens, TextCondition(feats, mask), hidden)
    b = model(tokens, TextCondition(other, mask), hidden)
    assert torch.allclose(a, b, atol=1e-5)
    out = generate_masked(model, TextCondition(feats, mask), SamplingOptions(cfg_scale=2.0), 3,
                          torch.Generator().manual_seed(0))
    assert out.shape == (1, 16, 1)
