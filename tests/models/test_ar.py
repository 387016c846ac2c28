import torch

from imagelm.models import build_generator, count_params, gpt_config
from imagelm.models.conditioning import ClassEmbedder
from imagelm.train.generator import token_loss


def _tiny(**kw):
    return gpt_config("tiny", vocab_size=32, grid_size=4, num_classes=3, **kw)


def test_presets_have_llamagen_parameter_counts():
    expected = {"GPT-B": 111e6, "GPT-L": 343e6, "GPT-XL": 775e6, "GPT-XXL": 1.4e9, "GPT-XXXL": 3.9e9,
                "GPT-1B": 1.2e9, "GPT-3B": 3.1e9}
    for name, n in expected.items():
        got = count_params(gpt_config(name))  # on the meta device: nothing allocated
        assert abs(got - n) / n < 0.02, (name, got)


def test_teacher_forced_shapes_and_zero_init_head():
    model = build_generator(_tiny()).eval()
    tokens = torch.randint(0, 32, (2, 16))
    logits = model(tokens, torch.tensor([0, 1]))
    assert logits.shape == (2, 16, 32)
    assert torch.all(logits == 0)  # zero-initialised output head: uniform first guesses
    assert model(tokens.unsqueeze(-1), torch.tensor([0, 1])).shape == (2, 16, 1, 32)


def test_position_i_depends_only_on_tokens_before_i():
    model = build_generator(_tiny()).eval()
    torch.nn.init.normal_(model.output.heads[0].weight, std=0.1)
    tokens = torch.randint(0, 32, (1, 16))
    a = model(tokens, torch.tensor([1]))
    changed = tokens.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 32
    b = model(changed, torch.tensor([1]))
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)  # positions 0..7 do not see token 7
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_condition_dropout_rate_and_null_class():
    emb = ClassEmbedder(num_classes=10, dim=4, dropout_prob=0.1)
    labels = torch.randint(0, 10, (200_000,))
    dropped = emb.drop(labels, torch.Generator().manual_seed(0))
    rate = (dropped == 10).float().mean().item()
    assert abs(rate - 0.1) < 0.005
    assert torch.equal(dropped[dropped != 10], labels[dropped != 10])
    assert emb.embedding_table.num_embeddings == 11


def test_tiny_model_overfits_a_handful_of_sequences():
    model = build_generator(_tiny(class_dropout=0.0))
    tokens = torch.randint(0, 32, (4, 16, 1))
    labels = torch.tensor([0, 1, 2, 0])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = token_loss(model(tokens, labels), tokens)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0 and loss.item() < 0.05
