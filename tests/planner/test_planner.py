"""The planner's decisions on generated fingerprints (pure functions, no data read)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from segkit.config import compose
from segkit.data.fingerprint import Fingerprint
from segkit.errors import ConfigError
from segkit.nn import plan_unet
from segkit.planner import (
    PlannerOptions,
    conv_kernels,
    plan_experiment,
    pool_strides,
    target_spacing,
    training_memory,
)


@pytest.fixture(scope="module")
def unet() -> dict:
    return OmegaConf.to_container(compose(["model=unet"]).model, resolve=True)


def fingerprint(spacing, shape, n=10, *, jitter=0, classes=3, channels=1) -> Fingerprint:
    rng = np.random.default_rng(0)
    shapes = [tuple(int(s + rng.integers(-jitter, jitter + 1)) for s in shape) for _ in range(n)]
    return Fingerprint(
        spacings=(tuple(spacing),) * n,
        shapes_after_crop=tuple(shapes),
        case_ids=tuple(f"case{i}" for i in range(n)),
        num_channels=channels,
        num_classes=classes,
    )


def test_small_isotropic_cases_give_the_whole_median_case(unet):
    fp = fingerprint((1.0, 1.0, 1.0), (37, 51, 35), n=30, jitter=3)
    r = plan_experiment(fp, unet, PlannerOptions(memory_gb=8))
    median = tuple(int(v) for v in np.floor(np.median(fp.shapes_after_crop, axis=0)))
    assert r.patch_size == median == r.median_shape
    assert r.coverage == 1.0
    assert r.batch_size >= 2
    assert r.memory.total <= 8 * 2**30
    # no rounding: the odd median case is the patch, and the network takes it exactly
    assert plan_unet(r.spec, r.patch_size).output_size == r.patch_size
    assert any("the whole median case" in d for d in r.decisions)


def test_anisotropic_axis_gets_kernel_1_and_stride_1_first(unet):
    fp = fingerprint((0.62, 0.62, 3.6), (319, 320, 20), n=32)
    r = plan_experiment(fp, unet, PlannerOptions(memory_gb=8))
    k, s = r.spec.kernel_size, r.spec.strides
    assert k[0] == (3, 3, 1) and k[1] == (3, 3, 1)
    assert s[1] == (2, 2, 1) and s[2] == (2, 2, 1)
    # the in-plane axes are pooled until their spacing comes within 2x of the coarse one
    assert sum(st[2] > 1 for st in s) < sum(st[0] > 1 for st in s)
    line = next(d for d in r.decisions if d.startswith("axis 2"))
    assert "3.60 mm ≥ 2× the finest 0.62 mm" in line and "kernel 1 at stages 0–1" in line
    assert r.memory.total <= 8 * 2**30


def test_larger_budget_gives_a_patch_at_least_as_large_and_estimates_stay_within(unet):
    fp = fingerprint((0.8, 0.8, 2.5), (512, 512, 96), n=50)
    patches = []
    for gb in (2, 8, 24):
        r = plan_experiment(fp, unet, PlannerOptions(memory_gb=gb))
        assert r.memory.total <= gb * 2**30, (gb, r.memory.breakdown())
        assert all(p <= m for p, m in zip(r.patch_size, r.median_shape))
        patches.append(r.patch_size)
    for small, large in zip(patches, patches[1:]):
        assert all(b >= a for a, b in zip(small, large)), patches
    assert math.prod(patches[-1]) > math.prod(patches[0])


def test_budget_too_small_names_the_smallest_budget_that_works(unet):
    fp = fingerprint((1.0, 1.0, 1.0), (200, 200, 200), n=5)
    with pytest.raises(ConfigError, match=r"planner.memory_gb=0.01 is too small") as err:
        plan_experiment(fp, unet, PlannerOptions(memory_gb=0.01))
    need = float(str(err.value).split("Fix: planner.memory_gb=")[1].split(" ")[0])
    r = plan_experiment(fp, unet, PlannerOptions(memory_gb=need))
    assert r.memory.total <= need * 2**30


def test_very_different_spacings_warn_naming_the_cases(unet):
    fp = Fingerprint(
        spacings=((1.0, 1.0, 1.0),) * 8 + ((1.0, 1.0, 5.0), (0.3, 0.3, 1.0)),
        shapes_after_crop=((60, 60, 60),) * 10,
        case_ids=tuple(f"case{i}" for i in range(10)),
        num_channels=1,
        num_classes=2,
    )
    r = plan_experiment(fp, unet, PlannerOptions(memory_gb=8))
    assert len(r.warnings) == 1
    assert "case8" in r.warnings[0] and "case9" in r.warnings[0]
    assert "case0" not in r.warnings[0]


def test_single_case_dataset_plans(unet):
    r = plan_experiment(fingerprint((1.0, 1.0, 2.0), (81, 75, 33), n=1), unet)
    assert r.patch_size == (81, 75, 33)
    assert r.batch_size == 2  # the 5 % cap never goes below nnU-Net's minimum


def test_2d_plans_slices_across_the_coarsest_axis(unet):
    fam = dict(unet, spatial_dims=2, max_channels=512)
    fp = fingerprint((0.7, 0.7, 5.0), (300, 280, 40), n=20)
    r = plan_experiment(fp, fam, PlannerOptions(memory_gb=8))
    assert r.slice_axis == 2
    assert len(r.patch_size) == 2 and r.spec.spatial_dims == 2
    assert r.patch_size == (300, 280)  # a slice fits whole
    assert r.batch_size > 2  # 2D: memory left over goes into the batch
    assert r.memory.total <= 8 * 2**30
    assert len(r.target_spacing) == 3


def test_explicit_values_win(unet):
    fp = fingerprint((1.0, 1.0, 1.0), (120, 130, 110), n=10)
    fixed = {"data.patch_size": [61, 67, 53], "model.depth": 3, "data.batch_size": 3}
    r = plan_experiment(fp, unet, fixed=fixed)
    assert r.patch_size == (61, 67, 53) and r.spec.depth == 3 and r.batch_size == 3
    assert sorted(r.explicit) == sorted(fixed)


def test_target_spacing_takes_the_10th_percentile_along_a_coarse_sparse_axis():
    spacings = [(1.5, 1.5, z) for z in (5, 6, 8, 8, 8, 8, 8, 8, 10, 10)]
    fp = Fingerprint(
        spacings=tuple(spacings),
        shapes_after_crop=((200, 200, 12),) * 10,
        case_ids=tuple(map(str, range(10))),
        num_channels=1,
        num_classes=2,
    )
    spacing, why = target_spacing(fp)
    assert spacing[:2] == (1.5, 1.5)
    assert spacing[2] == pytest.approx(np.percentile([s[2] for s in spacings], 10))
    assert "10th percentile" in why


def test_pooling_rule_keeps_bottleneck_edges_and_needs_no_divisibility():
    strides = pool_strides((97, 131, 77), (1.0, 1.0, 1.0), min_edge=4)
    sizes = [97, 131, 77]
    for s in strides[1:]:
        sizes = [-(-n // st) for n, st in zip(sizes, s)]
    assert min(sizes) >= 4 and len(strides) == 5  # 97→49→25→13→7
    k = conv_kernels(pool_strides((20, 320, 319), (3.6, 0.62, 0.62)), (3.6, 0.62, 0.62))
    assert k[0] == (1, 3, 3) and k[-1] == (3, 3, 3)


def test_memory_scales_exactly_from_one_plan_per_topology(unet):
    from segkit.planner import LevelModel
    from segkit.spec import UNetSpec

    spec = UNetSpec.from_config(dict(unet, depth=4, in_channels=1, out_channels=3))
    model = LevelModel.from_plan(spec, plan_unet(spec, (40, 48, 36)))
    for patch in [(41, 53, 37), (64, 64, 64), (33, 80, 17)]:
        exact = training_memory(spec, plan_unet(spec, patch), 2)
        scaled = model.memory(patch, 2, optimizer_states=1, precision="bf16")
        # per-channel norm statistics do not scale with voxels: a few bytes apart
        assert scaled.activations == pytest.approx(exact.activations, rel=2e-3)
        assert scaled.total == pytest.approx(exact.total, rel=1e-3)
        assert (scaled.params, scaled.loss, scaled.transient) == (
            exact.params,
            exact.loss,
            exact.transient,
        )


def test_explicit_per_stage_lists_fix_the_topology(unet):
    fp = fingerprint((1.0, 1.0, 1.0), (64, 64, 64), n=10)
    fixed = {"model.strides": [1, 2, [2, 2, 1]], "model.channels": [8, 16, 24, 32, 40]}
    r = plan_experiment(fp, unet, fixed=fixed)
    assert r.spec.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 1))
    assert r.spec.channels == (8, 16, 24)  # a per-stage list follows the depth
    with pytest.raises(ConfigError, match="a scalar stride needs model.depth"):
        plan_experiment(fp, unet, fixed={"model.strides": 2})
