import math
from functools import partial

import pytest
import torch
from torch import nn

from langseg.blocks.layers import ConvNormAct, sine_position_encoding_1d, sine_position_encoding_2d


def test_conv_norm_act_defaults_to_a_same_padded_3x3_conv_without_bias_batch_norm_and_inplace_relu():
    block = ConvNormAct(3, 8)
    conv, norm, act = block
    assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == 8
    assert isinstance(act, nn.ReLU) and act.inplace
    assert set(block.state_dict()) == {"0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                       "1.num_batches_tracked"}
    assert block(torch.randn(2, 3, 10, 12)).shape == (2, 8, 10, 12)


@pytest.mark.parametrize("kernel_size, stride, padding, out_side", [(1, 1, None, 16), (5, 2, None, 8), (3, 1, 0, 14)])
def test_conv_norm_act_passes_kernel_stride_and_padding_to_the_conv(kernel_size, stride, padding, out_side):
    block = ConvNormAct(3, 4, kernel_size, stride, padding, bias=True)
    conv = block[0]
    assert conv.kernel_size == (kernel_size, kernel_size) and conv.stride == (stride, stride)
    assert conv.padding == ((kernel_size // 2 if padding is None else padding),) * 2
    assert conv.bias is not None
    assert block(torch.randn(1, 3, 16, 16)).shape == (1, 4, out_side, out_side)


def test_instance_norm_is_an_affine_group_norm_with_one_group_per_channel():
    conv, norm = ConvNormAct(3, 6, 1, norm="instance", act=None)
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels == 6 and norm.affine
    out = nn.Sequential(conv, norm)(torch.randn(2, 3, 8, 8) * 5 + 3)
    torch.testing.assert_close(out.mean((2, 3)), torch.zeros(2, 6), atol=1e-5, rtol=0)  # each map of each sample


def test_norm_and_activation_can_be_left_out_or_given_as_callables():
    assert [type(m) for m in ConvNormAct(3, 4, norm=None, act=None)] == [nn.Conv2d]
    assert [type(m) for m in ConvNormAct(3, 4, norm=None)] == [nn.Conv2d, nn.ReLU]
    _, norm, act = ConvNormAct(3, 4, norm=partial(nn.GroupNorm, 2), act=partial(nn.LeakyReLU, 0.01, inplace=True))
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 2 and norm.num_channels == 4
    assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.01 and act.inplace


def test_unknown_norm_name_is_rejected():
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        ConvNormAct(3, 4, norm="layer")


@pytest.mark.parametrize("dim", [16, 7])
def test_1d_code_is_the_vaswani_sine_cosine_formula(dim):
    length = 50
    code = sine_position_encoding_1d(length, dim)
    assert code.shape == (length, dim) and code.dtype == torch.float32
    for pos in (0, 1, 7, length - 1):
        for col in range(dim):
            angle = pos / 10000 ** (2 * (col // 2) / dim)
            expected = math.sin(angle) if col % 2 == 0 else math.cos(angle)
            assert code[pos, col].item() == pytest.approx(expected, abs=1e-5), (pos, col)


def test_1d_code_is_cast_to_the_requested_dtype():
    code = sine_position_encoding_1d(5, 8, dtype=torch.bfloat16)
    assert code.dtype == torch.bfloat16
    torch.testing.assert_close(code, sine_position_encoding_1d(5, 8).bfloat16())


@pytest.mark.parametrize("height, width, dim", [(4, 5, 16), (3, 3, 18), (1, 6, 8)])
def test_2d_code_has_one_distinct_row_per_cell(height, width, dim):
    code = sine_position_encoding_2d(height, width, dim)
    assert code.shape == (height * width, dim) and code.dtype == torch.float32
    dist = torch.cdist(code, code).masked_fill(torch.eye(height * width, dtype=torch.bool), math.inf)
    assert dist.min() > 0.1


def test_2d_code_encodes_the_row_in_its_first_half_and_the_column_in_its_second():
    height, width, dim = 3, 4, 18  # 4 frequencies per sin/cos part, 2 zero columns of padding
    grid = sine_position_encoding_2d(height, width, dim).view(height, width, dim)
    rows, cols, pad = grid[..., :8], grid[..., 8:16], grid[..., 16:]
    assert torch.equal(rows, rows[:, :1].expand_as(rows))  # the same along a row
    assert torch.equal(cols, cols[:1].expand_as(cols))  # the same down a column
    assert torch.equal(pad, torch.zeros_like(pad))
    torch.testing.assert_close(rows[:, 0, :4], sine_position_encoding_1d(height, 8)[:, 0::2])  # sin(y * freq)
