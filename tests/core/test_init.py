"""init_from_checkpoint: copy by name and shape, resize kernels (UpKern), never a partial load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segkit import ConfigError
from segkit.nn import UNet
from segkit.training.upkern import init_from_checkpoint

CFG = dict(spatial_dims=3, depth=3, channels=4, in_channels=1, out_channels=2)


def _checkpoint(net: torch.nn.Module, path) -> str:
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": net.spec.to_dict()}}, path)
    return str(path)


def test_same_architecture_copies_everything_and_predicts_the_same(tmp_path):
    torch.manual_seed(0)
    src = UNet(**CFG).eval()
    dst = UNet(**CFG).eval()
    summary = init_from_checkpoint(dst, _checkpoint(src, tmp_path / "a.ckpt"))
    assert summary == f"copied {len(src.state_dict())} tensors"
    x = torch.randn(1, 1, 13, 11, 9)
    assert torch.equal(src(x), dst(x))


@pytest.mark.parametrize(
    ("extra", "resized"),
    # mednext: 3 encoder + 2 decoder depthwise kernels, and the 2 up blocks' (their kernel
    # follows the stage's); plain: 2 convs in each of 3 encoder and 2 decoder stages
    [(dict(block="mednext", upsample="mednext", skip_merge="add"), 7), (dict(), 10)],
)
def test_kernel_3_to_5_resizes_kernels_trilinearly(tmp_path, extra, resized):
    torch.manual_seed(0)
    src = UNet(**CFG, **extra, kernel_size=3)
    dst = UNet(**CFG, **extra, kernel_size=5)
    summary = init_from_checkpoint(dst, _checkpoint(src, tmp_path / "k3.ckpt"))
    n = len(dst.state_dict())
    assert summary == f"copied {n - resized} tensors, resized {resized} kernels 3→5"
    s, d = src.state_dict(), dst.state_dict()
    for name, value in d.items():
        if s[name].shape == value.shape:
            assert torch.equal(value, s[name]), name
        else:
            want = F.interpolate(s[name], size=(5, 5, 5), mode="trilinear", align_corners=False)
            assert torch.allclose(value, want), name
    x = torch.randn(1, 1, 11, 12, 13)
    assert dst(x).shape == (1, 2, 11, 12, 13)


def test_2d_kernels_resize_bilinearly(tmp_path):
    cfg = dict(CFG, spatial_dims=2)
    src, dst = UNet(**cfg, kernel_size=3), UNet(**cfg, kernel_size=[3, 5, 7])
    summary = init_from_checkpoint(dst, _checkpoint(src, tmp_path / "2d.ckpt"))
    # stage 1 (k5): 2 encoder + 2 decoder convs; stage 2 (k7): 2; stage 0 stays 3 (copied)
    assert summary.endswith("resized 4 kernels 3→5, 2 kernels 3→7")


def test_every_tensor_that_cannot_be_mapped_is_listed(tmp_path):
    path = _checkpoint(UNet(**CFG), tmp_path / "src.ckpt")
    wider = UNet(**dict(CFG, channels=6))
    with pytest.raises(ConfigError) as exc:
        init_from_checkpoint(wider, path)
    msg = str(exc.value)
    # each mismatched tensor is named, not just the first
    assert msg.count("checkpoint (") >= 10 and "encoder.0.blocks.0.convs.0.conv.weight" in msg
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    assert all(torch.equal(v, before[k]) for k, v in wider.state_dict().items())  # untouched
    deeper = UNet(**dict(CFG, depth=4))
    with pytest.raises(ConfigError, match=r"encoder\.3\.blocks\.0\.convs\.0\.conv\.weight .*"):
        init_from_checkpoint(deeper, path)
    shallower = UNet(**dict(CFG, depth=2))
    with pytest.raises(ConfigError, match="in the checkpoint, not in the network"):
        init_from_checkpoint(shallower, path)


def test_not_a_segkit_checkpoint(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}}, path)
    with pytest.raises(ConfigError, match="no 'net.\\*' weights"):
        init_from_checkpoint(UNet(**CFG), path)
    with pytest.raises(ConfigError, match="no such file"):
        init_from_checkpoint(UNet(**CFG), tmp_path / "missing.ckpt")
