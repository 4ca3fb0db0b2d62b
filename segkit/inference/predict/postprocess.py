"""Post-processing of label maps: keep the largest connected component.

Two steps, the ones nnU-Net's ``find_best_configuration`` tries, each kept only where the
cross-validation says it helps (``segkit select``):

- ``largest_foreground``: of all foreground (every label but 0) keep the largest connected
  component; voxels outside it become background.
- ``largest_per_class``: for each label value, keep its largest connected component; the
  rest of that label becomes background.

Components are face-, edge- and corner-connected (26-connectivity in 3D, 8 in 2D), as
``scipy.ndimage.label`` with a full structuring element. A label absent from a case is
left alone (nothing to keep), so an empty prediction never fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from segkit.errors import ConfigError

STEPS = ("largest_foreground", "largest_per_class")


def check_steps(steps: Iterable[str]) -> tuple[str, ...]:
    """The steps as a tuple, refusing unknown names with the allowed ones."""
    steps = tuple(str(s) for s in steps)
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise ConfigError(
            f"postprocess: unknown step(s) {bad}; allowed: {', '.join(STEPS)} (or none)"
        )
    return steps


def largest_component(mask: np.ndarray) -> np.ndarray:
    """``mask`` with only its largest connected component (ties: the first found)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    components, n = ndimage.label(mask, structure=structure)
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def apply_postprocessing(
    seg: np.ndarray, steps: Sequence[str], *, labels: Sequence[int] | None = None
) -> np.ndarray:
    """``seg`` after ``steps`` in order (a new array; ``seg`` is left as it is).

    Args:
        seg: a label map (integer, background 0).
        steps: names from :data:`STEPS`.
        labels: for ``largest_per_class``, the label values to treat (default: every
            non-zero value present).
    """
    steps = check_steps(steps)
    out = np.array(seg, copy=True)
    for step in steps:
        if step == "largest_foreground":
            out[~largest_component(out != 0)] = 0
        else:
            values = [int(v) for v in np.unique(out) if v != 0] if labels is None else labels
            for value in values:
                mask = out == value
                if mask.any():
                    out[mask & ~largest_component(mask)] = 0
    return out
