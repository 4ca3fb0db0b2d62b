"""The same answer at any size: a network of local layers computes each output voxel from
the input voxels around it, whatever the input's extent.

The property, checked on real forward passes: cutting voxels off the end of an axis
changes the output only near the cut (within the receptive field). It fails when the
decoder's grid depends on the size (a padding chosen per size parity moves every
upsampled voxel by one on some sizes), which is what makes a network trained on patches
answer differently on a whole volume.
"""

from __future__ import annotations

import pytest
import torch

from segkit.nn import UNet
from segkit.spec import UNetSpec

DOWN_UP = {
    # nnU-Net's: 3×3 stride-2 conv, undone by a 2×2 transposed conv (P + u − e odd)
    "conv3-transposed2": dict(downsample="conv", kernel_size=3, up_kernel_size=2),
    # 3×3 stride-2 conv undone by a 3×3 transposed conv (P + u − e even)
    "conv3-transposed3": dict(downsample="conv", kernel_size=3, up_kernel_size=3),
    # 2×2 max pool undone by a 2×2 transposed conv (the seed article's)
    "maxpool-transposed2": dict(downsample="maxpool", kernel_size=3, up_kernel_size=2),
    # even kernels: asymmetric "same" padding
    "conv4-transposed2": dict(downsample="conv", kernel_size=4, up_kernel_size=2),
}


def _net(spatial_dims: int, **kw) -> UNet:
    spec = UNetSpec.from_config(
        dict(
            spatial_dims=spatial_dims,
            in_channels=1,
            out_channels=3,
            depth=3,
            channels=4,
            max_channels=16,
            norm="batch",  # eval mode: a local, per-channel affine map
            deep_supervision=False,
            **kw,
        )
    )
    torch.manual_seed(0)
    net = UNet(spec).eval()
    with torch.no_grad():  # running statistics that are not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


@pytest.mark.parametrize("case", sorted(DOWN_UP))
def test_cutting_the_end_changes_only_the_voxels_near_the_cut(case):
    net = _net(2, **DOWN_UP[case])
    full = 71  # odd; the cuts below give every parity and remainder
    rf = max(net.plan((full, 9)).receptive_field)
    x = torch.randn(1, 1, full, 9, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = net(x)
        for cut in (1, 2, 3):
            size = full - cut
            keep = size - rf  # voxels farther than the receptive field from the cut
            assert keep > 8, "the test volume is too small for this receptive field"
            out = net(x[:, :, :size])
            diff = (out[:, :, :keep] - ref[:, :, :keep]).abs().max().item()
            assert diff < 1e-5, (
                f"{case}: input {full} vs {size} along axis 0 changes voxels far from the "
                f"cut by {diff:.3g}; the decoder's grid depends on the size"
            )


def test_same_grid_in_3d_on_anisotropic_strides():
    net = _net(3, downsample="conv", kernel_size=3, up_kernel_size=2, strides=[1, [1, 2, 2], 2])
    x = torch.randn(1, 1, 13, 47, 47, generator=torch.Generator().manual_seed(2))
    rf = net.plan((13, 47, 47)).receptive_field
    with torch.inference_mode():
        ref = net(x)
        out = net(x[:, :, :, :46, :45])
    k1, k2 = 46 - rf[1], 45 - rf[2]
    assert min(k1, k2) > 4
    diff = (out[..., :k1, :k2] - ref[..., :k1, :k2]).abs().max().item()
    assert diff < 1e-5, diff


@pytest.mark.parametrize("up_kernel", [1, 2, 3])
def test_export_path_equals_eager_where_the_up_kernel_is_smaller_than_the_stride(up_kernel):
    """The shape-free path the exporters trace (``traceable=True``) computes what the eager
    path computes, also where output_padding cannot reach the skip's size (a 1×1
    transposed conv after a 3-stride pool: the voxels past it carry the bias alone)."""
    net = _net(
        2,
        downsample="maxpool",
        kernel_size=3,
        up_kernel_size=up_kernel,
        strides=[1, 3, 2],
        upsample="transposed",
    )
    with torch.inference_mode():
        for size in [(19, 17), (20, 16), (21, 23), (24, 25)]:
            x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(sum(size)))
            eager = net(x)
            traced = net(x, traceable=True)
            assert eager.shape[2:] == size
            torch.testing.assert_close(traced, eager, atol=1e-5, rtol=1e-5)
