import torch

from imagelm.eval.recon import evaluate_tokenizer, psnr_uint8


def test_psnr_values():
    a = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    b = a.clone()
    b[1] = 255
    p = psnr_uint8(a, b)
    assert p[1].item() == 0.0          # maximal error
    assert p[0].item() > 90            # identical (clamped)


class _Identityish(torch.nn.Module):
    """A 'tokenizer' with 4 codes: the image's mean brightness, quantised."""
    vocab_size = 4

    def encode(self, x):
        return ((x.mean(dim=(1, 2, 3)) + 1) / 2 * 3.999).long().view(-1, 1, 1)

    def decode(self, codes):
        return (codes.float() / 3 * 2 - 1).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)


def test_evaluate_tokenizer_usage_and_psnr():
    data = [(torch.full((3, 4, 4), v), 0, "") for v in (-1.0, 1.0, -1.0)]
    m = evaluate_tokenizer(_Identityish(), data, progress=False)
    assert m["images"] == 3
    assert m["usage"] == 0.5           # codes 0 and 3 of 4
    assert m["psnr"] > 40              # exact reconstructions of flat images
