import pytest
import torch

from langseg.blocks.hamburger import NMF2D, HamburgerHead


def _low_rank(b=2, c=16, n=64, rank=4):
    torch.manual_seed(0)
    return (torch.rand(b, c, rank) @ torch.rand(b, rank, n)).reshape(b, c, 8, 8)


def _relative_error(nmf, x):
    return ((nmf(x) - x).norm() / x.norm()).item()


def test_nmf_reconstruction_improves_with_more_updates():
    x = _low_rank()
    few, many = NMF2D(16, rank=4, eval_steps=1).eval(), NMF2D(16, rank=4, eval_steps=50).eval()
    assert _relative_error(many, x) < _relative_error(few, x)
    assert _relative_error(many, x) < 0.2


def test_nmf_is_nonnegative_deterministic_and_fp32_inside_autocast():
    x = _low_rank()
    nmf = NMF2D(16, rank=4, groups=2).eval()
    out = nmf(x)
    assert out.shape == x.shape and (out >= 0).all()
    torch.testing.assert_close(out, nmf(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert nmf(x.bfloat16()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="divisible"):
        NMF2D(15, groups=2)


@pytest.mark.parametrize("size", [8, 16])
def test_head_shapes_and_gradient_through_the_decomposition(size):
    head = HamburgerHead(24, ham_channels=16, channels=12, rank=4)
    x = torch.randn(2, 24, size, size, requires_grad=True)
    out = head(x)
    assert out.shape == (2, 12, size, size)
    out.sum().backward()
    assert head.hamburger.ham_in.weight.grad.abs().sum() > 0
