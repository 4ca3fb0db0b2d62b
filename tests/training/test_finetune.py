"""Fine-tuning across tasks: init.from_checkpoint maps heads for another number of classes and
the first conv for another number of input channels, lists every tensor, refuses the rest."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from segkit import ConfigError
from segkit.config import compose, plan_network
from segkit.nn import UNet
from segkit.training.run import train
from segkit.training.upkern import freeze, map_checkpoint
from tests.utils import TINY, CaptureWeights

CFG = dict(spatial_dims=3, depth=3, channels=4, in_channels=1, out_channels=4)
FIRST = "encoder.0.blocks.0.convs.0.conv.weight"


def _checkpoint(net: torch.nn.Module, path) -> str:
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": net.spec.to_dict()}}, path)
    return str(path)


def _reference(path) -> dict[str, torch.Tensor]:
    """The checkpoint's network tensors, read without segkit."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


def _listed(text: str, name: str, action: str) -> bool:
    """``name`` is on a line of its own followed by ``action`` (the listing pads names)."""
    return re.search(rf"^\s*{re.escape(name)}\s+{re.escape(action)}$", text, re.M) is not None


def _closed_form(old: torch.Tensor, new_channels: int) -> torch.Tensor:
    """weight[:, c] = Σ_j old[:, j] / new_C for every new channel c (= mean · old_C/new_C)."""
    return old.sum(dim=1, keepdim=True).repeat(1, new_channels, *[1] * (old.dim() - 2)) / (
        new_channels
    )


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_4_class_checkpoint_into_2_class_network_keeps_fresh_heads(tmp_path, deep_supervision):
    torch.manual_seed(0)
    path = _checkpoint(UNet(**CFG, deep_supervision=deep_supervision), tmp_path / "c4.ckpt")
    dst = UNet(**dict(CFG, out_channels=2), deep_supervision=deep_supervision)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = map_checkpoint(dst, path)
    ref = _reference(path)
    heads = [k for k in before if k.startswith("heads.")]
    assert len(heads) == (2 * 2 if deep_supervision else 2)  # weight + bias per head
    for name, value in dst.state_dict().items():
        if name in heads:
            assert torch.equal(value, before[name]), name
            assert not torch.equal(value[:2], ref[name][:2]), name  # really not the checkpoint's
        else:
            assert torch.equal(value, ref[name]), name
    listing = report.listing()
    for name in heads:
        assert _listed(listing, name, "re-initialised (classes 4→2)"), name
    assert report.of("re-initialised") == heads
    assert len(report.of("copied")) == len(before) - len(heads)
    assert report.summary() == (
        f"copied {len(before) - len(heads)} tensors, "
        f"re-initialised {len(heads)} tensors of heads (another number of classes)"
    )


@pytest.mark.parametrize(
    ("extra", "inputs"),
    [
        (dict(), [FIRST]),
        # a residual first block reads the input twice: its first conv and its 1×1 shortcut
        (dict(block="residual"), [FIRST, "encoder.0.blocks.0.shortcut.conv.weight"]),
        # MedNeXt: a 1×1 stem projection reads the input
        (
            dict(block="mednext", upsample="mednext", skip_merge="add", stem="conv1x1"),
            ["encoder.0.stem.conv.weight"],
        ),
    ],
)
@pytest.mark.parametrize(("old_c", "new_c"), [(1, 2), (3, 2)])
def test_input_channels_get_the_averaged_weights(tmp_path, extra, inputs, old_c, new_c):
    torch.manual_seed(0)
    src = UNet(**dict(CFG, in_channels=old_c), **extra).eval()
    path = _checkpoint(src, tmp_path / "c.ckpt")
    dst = UNet(**dict(CFG, in_channels=new_c), **extra).eval()
    report = map_checkpoint(dst, path)
    ref = _reference(path)
    assert report.of("input channels averaged") == inputs
    got = dst.state_dict()
    for name, value in got.items():
        want = _closed_form(ref[name], new_c) if name in inputs else ref[name]
        assert torch.allclose(value, want, atol=1e-7), name
    # the rule's purpose: an input whose channels all carry one signal gives the old answer
    x = torch.randn(1, 1, 13, 11, 9)
    with torch.no_grad():
        assert torch.allclose(
            dst(x.expand(1, new_c, *x.shape[2:])),
            src(x.expand(1, old_c, *x.shape[2:])),
            atol=1e-5,
        )


def test_input_channels_and_kernel_size_together(tmp_path):
    src = UNet(**CFG, kernel_size=3)
    path = _checkpoint(src, tmp_path / "k3.ckpt")
    dst = UNet(**dict(CFG, in_channels=2), kernel_size=5)
    report = map_checkpoint(dst, path)
    assert dict(report.actions)[FIRST] == "input channels averaged 1→2, kernel resized 3→5"
    want = torch.nn.functional.interpolate(
        _closed_form(_reference(path)[FIRST], 2), size=(5, 5, 5), mode="trilinear"
    )
    assert torch.allclose(dst.state_dict()[FIRST], want, atol=1e-7)


def test_other_mismatches_still_raise_listing_them_all(tmp_path):
    path = _checkpoint(UNet(**CFG), tmp_path / "src.ckpt")
    deeper = UNet(**dict(CFG, depth=4, out_channels=2, in_channels=2))
    before = {k: v.clone() for k, v in deeper.state_dict().items()}
    with pytest.raises(ConfigError) as exc:
        map_checkpoint(deeper, path)
    msg = str(exc.value)
    # every tensor of the extra level (encoder.3, decoder.2), not only the first
    missing = [k for k in before if k not in _reference(path)]
    assert len(missing) == 18 and f"{len(missing)} tensor(s) cannot be mapped" in msg
    assert all(f"{k} {tuple(before[k].shape)}: not in the checkpoint" in msg for k in missing)
    assert all(torch.equal(v, before[k]) for k, v in deeper.state_dict().items())  # untouched
    # a head reading another width is not a change of classes
    narrower = UNet(**dict(CFG, channels=2, out_channels=2))
    with pytest.raises(ConfigError) as exc:
        map_checkpoint(narrower, path)
    assert "heads.0.weight: checkpoint (4, 4, 1, 1, 1) vs network (2, 2, 1, 1, 1)" in str(exc.value)
    assert "encoder.1.blocks.0.convs.0.conv.weight: checkpoint" in str(exc.value)
    # a 1-D tensor of a narrower first stage (2 wide, 2 classes) differs only in dim 0, by the
    # number of classes, as a head's does: not a head, still refused
    assert "encoder.0.blocks.0.convs.0.conv.bias: checkpoint (4,) vs network (2,)" in str(exc.value)


def test_freeze_choices():
    with pytest.raises(ConfigError, match="choose one of none, encoder"):
        freeze(UNet(**CFG), "decoder")
    assert freeze(UNet(**CFG), None) == "froze nothing"


def test_finetune_run_trains_and_logs_the_reinitialised_tensors(tmp_path, demo_data_dir, caplog):
    """The real config on the demo data (1 channel, 4 classes) from a 2-channel, 2-class
    checkpoint of the same architecture, encoder frozen."""
    overrides = [
        *TINY,
        f"paths.data_dir={demo_data_dir}",
        f"paths.output_dir={tmp_path / 'run'}",
        "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=2",  # no validation: the training step is the point
        "+callbacks.capture._target_=tests.utils.CaptureWeights",
    ]
    cfg = compose(overrides)
    spec, _ = plan_network(cfg, num_channels=2, num_classes=2)
    torch.manual_seed(1)
    path = _checkpoint(UNet(spec), tmp_path / "other_task.ckpt")
    cfg = compose([*overrides, f"init.from_checkpoint={path}", "init.freeze=encoder"])
    with caplog.at_level(logging.INFO, logger="segkit"):
        _, metrics = train(cfg)
    assert metrics["global_step"] == 2
    ref, final = _reference(path), CaptureWeights.final
    log = caplog.text
    heads = [k for k in final if k.startswith("heads.")]
    for name in heads:
        assert _listed(log, name, "re-initialised (classes 2→4)"), name
    assert _listed(log, FIRST, "input channels averaged 2→1")
    assert "init.freeze=encoder: froze" in log
    for name, value in final.items():
        if name.startswith("encoder."):  # frozen: still what the mapping gave
            want = _closed_form(ref[name], 1) if name == FIRST else ref[name]
            assert torch.allclose(value, want, atol=1e-7), name
    trained = [k for k in final if k.startswith("decoder.") and k.endswith("conv.weight")]
    assert trained and all(not torch.equal(final[k], ref[k]) for k in trained)


def test_freeze_without_a_checkpoint_is_refused(tmp_path, demo_data_dir):
    cfg = compose(
        [
            *TINY,
            f"paths.data_dir={demo_data_dir}",
            f"paths.output_dir={tmp_path}",
            "init.freeze=encoder",
        ]
    )
    with pytest.raises(ConfigError, match="without init.from_checkpoint"):
        train(cfg)
