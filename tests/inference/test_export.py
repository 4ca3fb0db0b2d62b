"""Exports agree with the eager model on odd sizes they were not traced at."""

from __future__ import annotations

import pytest
import torch

from segkit.cli import main
from segkit.inference.export import ExportableUNet, check_sizes, example_size, export_model
from segkit.nn import UNet

CONFIGS = [
    {"depth": 3, "channels": 4},  # strided convs, transposed up (crop on every level)
    {"depth": 3, "channels": 4, "upsample": "interpolate"},
    {
        "depth": 3,
        "channels": 4,
        "downsample": "maxpool",
        "block": "residual",
        "kernel_size": [[3, 3, 1], 3, 3],
        "up_kernel_size": 3,
    },
]


@pytest.mark.parametrize("config", CONFIGS)
def test_exportable_wrapper_is_exact(config):
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=2, out_channels=3, **config).eval()
    wrapper = ExportableUNet(net)
    for size in [(17, 19, 13), (20, 21, 9), (9, 11, 7)]:
        x = torch.randn(1, 2, *size)
        with torch.no_grad():
            assert torch.equal(wrapper(x), net(x))


def test_check_sizes_are_odd_and_unseen():
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, depth=3, channels=4)
    sizes = check_sizes(net, (24, 24, 16))
    example = example_size(net, (24, 24, 16))
    assert len(set(sizes)) == 2 and example not in sizes
    assert all(v % 2 == 1 for s in sizes for v in s)


@pytest.mark.parametrize("config", CONFIGS[:2])
def test_torchscript_handles_other_sizes(config, tmp_path):
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, **config).eval()
    checks = export_model(net, fmt="torchscript", output=tmp_path / "m.pt", patch_size=(24, 24, 16))
    assert len(checks) == 2 and max(c.max_abs_diff for c in checks) < 1e-5
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(1, 1, 27, 15, 11)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=1e-5, rtol=1e-5)


def test_onnx_dynamic_axes(ckpt, tmp_path, capsys):
    import onnxruntime as ort  # the export extra, inside dev

    out = tmp_path / "m.onnx"
    assert main(["export", f"ckpt={ckpt}", "format=onnx", f"output={out}"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("max |export - eager|") == 2
    diffs = [float(line.rsplit("=", 1)[1]) for line in printed.splitlines() if "max |" in line]
    assert max(diffs) < 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    from segkit.inference.predict.checkpoint import load_model

    net = load_model(ckpt).net
    x = torch.randn(2, 1, 21, 13, 9)
    got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, net(x), atol=1e-4, rtol=1e-4)


def test_unknown_format(ckpt, tmp_path, capsys):
    assert main(["export", f"ckpt={ckpt}", "format=tflite", f"output={tmp_path / 'm'}"]) == 2
    assert "allowed: onnx, torchscript" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
