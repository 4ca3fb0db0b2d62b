"""The output head (softmax classes / sigmoid regions) and largest-component post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segkit.errors import ConfigError
from segkit.inference.engine.outputs import OutputHead
from segkit.inference.predict.postprocess import apply_postprocessing, largest_component


def test_region_labels_follow_regions_class_order_with_later_regions_on_top():
    # whole tumour ⊃ tumour core ⊃ enhancing, written 2, 1, 3 (BraTS in nnU-Net's order)
    head = OutputHead.regions([2, 1, 3])
    p = torch.zeros(3, 1, 5)
    p[0, 0, 1:5] = 0.9  # whole: voxels 1..4
    p[1, 0, 2:5] = 0.8  # core: 2..4
    p[2, 0, 4] = 0.7  # enhancing: 4
    p[2, 0, 0] = 0.5  # exactly 0.5 is not above the threshold
    assert head.labels(p).tolist() == [[0, 2, 1, 1, 3]]


def test_region_labels_from_logits_equal_labels_of_sigmoid():
    head = OutputHead.regions([1, 2])
    logits = torch.randn(2, 7, 9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(head.labels_from_logits(logits), head.labels(torch.sigmoid(logits)))


def test_softmax_head_is_argmax_of_softmax():
    logits = torch.randn(4, 6, 6, generator=torch.Generator().manual_seed(1))
    head = OutputHead()
    assert torch.allclose(head.probabilities(logits).sum(0), torch.ones(6, 6))
    assert torch.equal(head.labels(head.probabilities(logits)), logits.argmax(0))


def test_region_head_refuses_a_channel_count_that_does_not_match():
    with pytest.raises(ConfigError, match="3 output channel"):
        OutputHead.regions([1, 2]).labels(torch.zeros(3, 4))
    with pytest.raises(ConfigError, match="region_order"):
        OutputHead(kind="sigmoid")


def test_largest_component_uses_full_connectivity():
    m = np.zeros((5, 5, 5), bool)
    m[0, 0, 0] = m[1, 1, 1] = True  # corner-connected: one component of 2
    m[4, 4, 4] = True
    kept = largest_component(m)
    assert kept.sum() == 2 and kept[0, 0, 0] and kept[1, 1, 1] and not kept[4, 4, 4]


def test_largest_per_class_and_of_foreground_by_hand():
    seg = np.zeros((1, 12), np.uint8)
    seg[0, 0:3] = 1  # class 1: 3 voxels
    seg[0, 5:6] = 1  # class 1: 1 voxel, away
    seg[0, 6:8] = 2  # class 2 touching the stray class-1 voxel: foreground blob of 3
    seg[0, 10:12] = 2  # class 2: 2 voxels, away
    per_class = apply_postprocessing(seg, ["largest_per_class"])
    assert per_class.tolist() == [[1, 1, 1, 0, 0, 0, 2, 2, 0, 0, 0, 0]]
    fg = apply_postprocessing(seg, ["largest_foreground"])
    # blobs: 0..2 (3 voxels), 5..7 (3 voxels, first found wins the tie is 0..2)
    assert fg.tolist() == [[1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]]
    assert seg[0, 5] == 1  # the input is left as it is


def test_postprocessing_on_an_empty_or_absent_class_does_not_fail():
    seg = np.zeros((4, 4, 4), np.uint8)
    assert not apply_postprocessing(seg, ["largest_per_class", "largest_foreground"]).any()
    assert not apply_postprocessing(seg, ["largest_per_class"], labels=[1, 2]).any()


def test_unknown_postprocessing_step_is_refused_with_the_allowed_ones():
    with pytest.raises(ConfigError, match="largest_per_class"):
        apply_postprocessing(np.zeros(3, np.uint8), ["biggest"])


def test_the_head_dict_round_trips_and_softmax_is_none():
    from segkit.inference.engine.outputs import SOFTMAX

    head = OutputHead.regions([1, 2, 3])
    assert head.to_dict() == {"kind": "sigmoid", "region_order": [1, 2, 3]}
    assert OutputHead.from_dict(head.to_dict()) == head
    assert SOFTMAX.to_dict() is None and OutputHead.from_dict(None) == SOFTMAX
