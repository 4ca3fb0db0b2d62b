"""Seeded corrupted inputs for every file segkit reads, each with the command that reads it.

A :class:`Case` is one corrupted input: ``build(folder, assets)`` writes the case's files
under ``folder`` (an empty directory) and returns its command line, ``["segkit", COMMAND,
...]`` or ``["train.py", OVERRIDE, ...]``. :func:`generate` draws ``n`` cases round-robin
over the file kinds; the same ``(n, seed)`` gives the same cases and the same bytes.
:data:`REGRESSIONS` are the cases that once ended in a traceback, by name.
:mod:`tests.fuzzing.invariant` runs a case and checks what it must never do.

File kinds (:data:`KINDS`) and the commands that read them:

- ``dataset.json``: ``configure``, ``plan data=msd`` (they read every case), ``train.py``;
- ``nifti``: a training image or label (``configure``, ``plan``, ``train.py``), an image to
  predict (``predict``), a prediction or reference (``evaluate``);
- ``splits.json`` and the preprocessed arrays (``cache``): ``train.py``; the cached
  fingerprint and planner decisions (``cache``): ``configure``, ``plan``;
- ``checkpoint``: ``predict``, ``export``, ``train.py init.from_checkpoint=``;
- ``decision.json``: ``predict ckpt=``; ``plans``: nnU-Net's plans and fingerprint files
  (``configure plans= | fingerprint=``);
- ``cli``: the values of every command's keys; ``train.py``: its Hydra overrides.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
PLANS = REPO / "tests/planner/data/Dataset004_Hippocampus/nnUNetPlans.json"
FINGERPRINT = REPO / "tests/planner/data/Dataset005_Prostate/dataset_fingerprint.json"

KINDS = (
    "dataset.json",
    "nifti",
    "splits.json",
    "cache",
    "checkpoint",
    "decision.json",
    "plans",
    "cli",
    "train.py",
)
# read by training alone: left out where nothing may train (the default suite)
TRAINING_ONLY = ("splits.json", "train.py")

# the tiny dataset: 12×10×8 voxels of 1×1.5×2 mm, labels 0..2
SHAPE = (12, 10, 8)
AFFINE = np.diag([1.0, 1.5, 2.0, 1.0])

# One training step of train.py on the tiny dataset (cases of kinds read by training).
TRAIN_STEP = (
    "data=msd",
    "planner=none",
    "data.patch_size=[8,8,8]",
    "data.batch_size=1",
    "data.num_workers=0",
    "data.samples_per_epoch=1",
    "data.num_folds=2",
    "model.depth=2",
    "model.channels=4",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=1",
    "++trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "logger=csv",
    "~callbacks.pictures",
    "~callbacks.progress_bar",
    "print_plan=false",
    "calibrate_inference.enabled=false",
)


@dataclass(frozen=True)
class Assets:
    """What cases copy instead of making: a tiny trained segkit checkpoint (1 channel,
    3 classes, patch 16×16×12; ``tests.inference.conftest.make_checkpoint``)."""

    checkpoint: Path


Build = Callable[[Path, Assets], list[str]]


@dataclass(frozen=True)
class Case:
    """One corrupted input and the command that reads it.

    Attributes:
        kind: the file kind (one of :data:`KINDS`).
        command: ``segkit`` subcommand or ``train.py``.
        description: what was corrupted, and how.
        build: writes the files under a folder and returns the command line.
        names: a refusal must name one of these (the file's name, the key).
        replaceable: files (relative to the folder) segkit may rewrite: its own cache
            entries, recomputed when found corrupt; every other file must stay unchanged.
    """

    kind: str
    command: str
    description: str
    build: Build
    names: tuple[str, ...]
    replaceable: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.kind} | {self.command} | {self.description}"


# ---------------------------------------------------------------- values


WEIRD: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    7,
    2**31,
    2**64,
    -(10**30),
    0.5,
    -0.0,
    1e308,
    float("nan"),
    float("inf"),
    "",
    "x",
    "0",
    "-1",
    "1e999",
    "💥",
    "\u202eevil",
    "ab" * 5000,
    [],
    [None],
    [1, 2, 3],
    [[1]],
    ["a"],
    {},
    {"a": 1},
    {"0": None},
)
WEIRD_KEYS = ("", " ", "💥", "0", "-1", "1.5", "NaN", "ignore", "__proto__")
# command-line words: Hydra's grammar, paths, numbers and text a user might paste
WORDS = (
    "",
    "null",
    "-1",
    "0",
    "1e308",
    "nan",
    "inf",
    "-inf",
    "[]",
    "[1,",
    "[[1]]",
    "[1,2,3]",
    "{a:1}",
    "'",
    '"',
    "${oops}",
    "${oc.env:SEGKIT_FUZZ_NOPE}",
    "abc",
    "é",
    "💥",
    "a" * 3000,
    "0x10",
    "1_000",
    "true",
    "1/0",
    "0/0",
    "3/2",
    "../nope",
    "/dev/null",
    "/nonexistent/x",
    "*",
    "a,b",
    "=",
    "\udcff",
    " ",
    "-",
    "--x",
    "~",
    "+",
    "2147483648",
    "-2147483649",
    "1e-300",
)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------- JSON trees


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, list):
        items = list(enumerate(obj))
    else:
        return []
    out = []
    for key, value in items:
        out.append((*prefix, key))
        out += _paths(value, (*prefix, key))
    return out


def _get(obj: Any, path: Sequence) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _show(path: Sequence) -> str:
    return ".".join(str(k) for k in path) or "(top level)"


def tree_mutation(rng: random.Random, obj: Any, *, under: Sequence = ()) -> tuple[Callable, str]:
    """One structural change of a parsed JSON (or checkpoint) tree, drawn now and applied
    later: ``(apply, description)``; ``apply(tree)`` returns the changed copy."""
    paths = [p for p in _paths(_jsonable(obj)) if tuple(p[: len(under)]) == tuple(under)]
    if not paths or rng.random() < 0.05:
        value = rng.choice(WEIRD)
        return (lambda tree: copy.deepcopy(value)), f"top level is {_short(value)}"
    path = rng.choice(paths)
    op = rng.choice(("drop", "replace", "replace", "replace", "as text", "duplicate", "rename"))
    value, new_key = rng.choice(WEIRD), rng.choice(WEIRD_KEYS)

    def apply(tree: Any) -> Any:
        tree = _jsonable(copy.deepcopy(tree))
        parent, key = _get(tree, path[:-1]), path[-1]
        if op == "drop":
            del parent[key]
        elif op == "as text":
            old = parent[key]
            parent[key] = json.dumps(old) if isinstance(old, int | float | list | dict) else "?"
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif op == "rename" and isinstance(parent, dict):
            parent[new_key] = parent.pop(key)
        else:
            parent[key] = copy.deepcopy(value)
        return tree

    what = {
        "drop": "removed",
        "as text": "written as a string",
        "duplicate": "given twice (if in a list)",
        "rename": f"renamed to {new_key!r} (if a key)",
    }.get(op, f"is {_short(value)}")
    return apply, f"{_show(path)} {what}"


def text_mutation(rng: random.Random) -> tuple[Callable[[str], bytes], str]:
    """One corruption of a text file's bytes: ``(apply, description)``."""
    cut, noise_seed = rng.random(), rng.getrandbits(32)
    choices: list[tuple[Callable[[str], bytes], str]] = [
        (lambda t: t.encode()[: int(len(t.encode()) * cut)], f"truncated at {cut:.0%}"),
        (lambda t: b"", "empty"),
        (lambda t: random.Random(noise_seed).randbytes(300), "random bytes"),
        (lambda t: b"\xef\xbb\xbf" + t.encode(), "a UTF-8 byte-order mark first"),
        (lambda t: t.encode("utf-16"), "UTF-16 encoded"),
        (lambda t: b"[" * 100_000 + b"]" * 100_000, "arrays nested 100000 deep"),
        (lambda t: _insert(t.encode(), b"\xff\xfe", cut), "an invalid UTF-8 byte"),
        (lambda t: t.encode() + b"}{", "trailing garbage"),
        (lambda t: b"null", "JSON null"),
        (lambda t: b"\0" * 64, "NUL bytes"),
        (lambda t: t.replace("1", "NaN", 1).encode(), "a NaN literal for a number"),
    ]
    return rng.choice(choices)


def _insert(data: bytes, extra: bytes, where: float) -> bytes:
    i = int(len(data) * where)
    return data[:i] + extra + data[i:]


def fs_mutation(rng: random.Random) -> tuple[Callable[[Path], None], str]:
    """The file replaced by something that is not a readable file."""

    def directory(path: Path) -> None:
        path.unlink(missing_ok=True)
        path.mkdir()
        (path / "x").write_text("x")

    def dangling(path: Path) -> None:
        path.unlink(missing_ok=True)
        path.symlink_to(path.parent / "nowhere")

    def loop(path: Path) -> None:
        path.unlink(missing_ok=True)
        path.symlink_to(path.name)

    def fifo(path: Path) -> None:
        path.unlink(missing_ok=True)
        os.mkfifo(path)

    def missing(path: Path) -> None:
        path.unlink(missing_ok=True)

    return rng.choice(
        (
            (directory, "a directory"),
            (dangling, "a dangling symlink"),
            (loop, "a symlink to itself"),
            (fifo, "a named pipe (FIFO)"),
            (missing, "missing"),
        )
    )


def json_file_mutation(
    rng: random.Random, template: Any, *, under: Sequence = ()
) -> tuple[Callable[[Path, Any], None], str]:
    """A JSON file's corruption: its tree (mostly), its bytes, or the file itself.
    ``apply(path, tree)`` writes the corrupted file (``tree``: the valid content)."""
    r = rng.random()
    if r < 0.6:
        change, what = tree_mutation(rng, template, under=under)
        return (lambda p, tree: p.write_text(json.dumps(change(tree)))), what
    if r < 0.92:
        change, what = text_mutation(rng)
        return (lambda p, tree: p.write_bytes(change(json.dumps(tree, indent=1)))), what
    replace, what = fs_mutation(rng)
    return (lambda p, tree: replace(p)), what


# ---------------------------------------------------------------- NIfTI


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE, **kw: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine, **kw), str(path))
    return path


def case_arrays(seed: int, shape: Sequence[int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A float32 image and its uint8 label (classes 1 and 2 as boxes)."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[2:6, 2:6, 2:5] = 1
    label[6:10, 5:9, 4:7] = 2
    image = (rng.normal(50, 5, shape) + 40 * label).astype(np.float32)
    return image, label


def _raw(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def _header_change(field: str, index: int | None, value: Any) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        raw = _raw(path)
        hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
        with np.errstate(all="ignore"):
            if index is None:
                hdr[field] = value
            else:
                values = np.array(hdr[field])
                values[index] = value
                hdr[field] = values
        path.write_bytes(gzip.compress(hdr.binaryblock + raw[348:]))

    return apply


def _header_mutation(rng: random.Random) -> tuple[Callable[[Path], None], str]:
    axis = rng.randrange(1, 4)
    bad = rng.choice((0.0, -1.5, float("nan"), float("inf"), 1e-30, 1e30))
    choices = [
        (_header_change("pixdim", axis, bad), f"pixdim[{axis}] = {bad}"),
        (_header_change("srow_x", rng.randrange(3), rng.choice((0.0, 0.7, 1e308))), "sform row"),
        (_sform(np.zeros((3, 4))), "an all-zero sform"),
        (_sform(np.array([[1.0, 0.7, 0, 0], [0, 1.5, 0, 0], [0, 0, 2, 0]])), "a sheared sform"),
        (_sform(np.array([[1.0, 1, 0, 0], [1, 1.5, 0, 0], [0, 0, 2, 0]])), "a degenerate sform"),
        (_sform(np.full((3, 4), np.nan)), "a NaN sform"),
        (_no_orientation, "qform and sform codes 0"),
        (_header_change("quatern_b", None, 2.0), "quatern_b = 2 (no rotation has it)"),
        (_header_change("dim", 0, rng.choice((0, 2, 8, -1))), "dim[0] (the number of axes)"),
        (_header_change("dim", axis, rng.choice((0, -3, 30000))), f"dim[{axis}]"),
        (
            _header_change("datatype", None, rng.choice((1, 128, 1536, 2304, 0, 9999))),
            "datatype code",
        ),
        (_header_change("bitpix", None, rng.choice((0, 3, 64))), "bitpix"),
        (_header_change("vox_offset", None, rng.choice((0.0, 1e9, 100.0))), "vox_offset"),
        (_header_change("scl_slope", None, rng.choice((0.0, float("nan"), float("inf")))), "slope"),
        (_header_change("scl_inter", None, float("inf")), "scl_inter = inf"),
        (_header_change("magic", None, b"abc"), "wrong magic"),
        (_header_change("sizeof_hdr", None, rng.choice((0, 540, 1 << 24))), "sizeof_hdr"),
    ]
    return rng.choice(choices)


def _sform(rows: np.ndarray) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        raw = _raw(path)
        hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
        hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = rows
        hdr["sform_code"], hdr["qform_code"] = 1, 0
        path.write_bytes(gzip.compress(hdr.binaryblock + raw[348:]))

    return apply


def _no_orientation(path: Path) -> None:
    raw = _raw(path)
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
    hdr["sform_code"], hdr["qform_code"] = 0, 0
    path.write_bytes(gzip.compress(hdr.binaryblock + raw[348:]))


def _bytes_mutation(rng: random.Random) -> tuple[Callable[[Path], None], str]:
    cut, seed = rng.random(), rng.getrandbits(32)

    def truncate(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])

    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        r = random.Random(seed)
        for _ in range(8):
            i = r.randrange(10, len(data))
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))

    def plain(path: Path) -> None:
        path.write_bytes(_raw(path))

    def garbage(path: Path) -> None:
        path.write_bytes(random.Random(seed).randbytes(2000))

    def not_nifti(path: Path) -> None:
        path.write_bytes(gzip.compress(b"hello, not a NIfTI file\n" * 40))

    return rng.choice(
        (
            (truncate, f"gzip truncated at {cut:.0%}"),
            (flip, "8 bytes of the gzip stream flipped"),
            (plain, "uncompressed NIfTI under a .nii.gz name"),
            (garbage, "random bytes"),
            (not_nifti, "gzipped text"),
            (lambda p: p.write_bytes(b""), "empty"),
        )
    )


def _data_mutation(rng: random.Random) -> tuple[Callable[[Path], None], str]:
    """The file rewritten with other voxels: dtype, dimensionality, values, grid."""
    seed = rng.getrandbits(32)
    axis = rng.randrange(3)

    def rewrite(make: Callable[[np.ndarray, np.ndarray], tuple], what: str):
        def apply(path: Path) -> None:
            img = nib.load(str(path))
            data, affine = np.asanyarray(img.dataobj), img.affine
            out = make(data, affine)
            data, affine, kw = out if len(out) == 3 else (*out, {})
            path.unlink()
            save_nifti(path, data, affine, **kw)

        return apply, what

    def grow(d, a):
        pad = [(0, 0)] * d.ndim
        pad[axis] = (0, 1)
        return np.pad(d, pad), a

    def rotate(d, a):
        t = np.radians(10)
        rot = np.eye(4)
        rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        return d, rot @ a

    def shift(d, a):
        a = a.copy()
        a[axis, 3] += rng_shift
        return d, a

    def rgb(d, a):
        out = np.zeros(d.shape[:3], dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        out["R"] = np.clip(d, 0, 255).astype(np.uint8)
        return out, a

    def values(v):
        def make(d, a):
            d = d.astype(np.float32)
            idx = tuple(np.random.default_rng(seed).integers(0, n) for n in d.shape)
            d[idx] = v
            return d, a

        return make

    rng_shift = rng.choice((1e-4, 0.5, 30.0))
    choices = [
        rewrite(lambda d, a: (d[..., 0] if d.ndim == 3 else d, a), "2D where 3D is expected"),
        rewrite(lambda d, a: (np.stack([d, d], -1), a), "4D: two volumes"),
        rewrite(lambda d, a: (d[..., None], a), "4D with one volume"),
        rewrite(lambda d, a: (d[..., None, None], a), "5D"),
        rewrite(lambda d, a: (d[:1], a), "one voxel thick"),
        rewrite(lambda d, a: (d[:1, :1, :1], a), "a single voxel"),
        rewrite(grow, f"one voxel larger along axis {axis}"),
        rewrite(rotate, "rotated by 10° (affine only)"),
        rewrite(shift, f"shifted by {rng_shift} mm along axis {axis} (affine only)"),
        rewrite(lambda d, a: (d.astype(np.complex64) * 1j, a), "complex64"),
        rewrite(lambda d, a: (d.astype(np.complex128), a), "complex128"),
        rewrite(rgb, "RGB24"),
        rewrite(lambda d, a: (d.astype(np.int8), a), "int8"),
        rewrite(lambda d, a: (d.astype(np.uint16), a), "uint16"),
        rewrite(lambda d, a: (d.astype(np.int64), a, {"dtype": np.int64}), "int64"),
        rewrite(
            lambda d, a: (d.astype(np.uint64) + 2**63, a, {"dtype": np.uint64}), "uint64 >= 2^63"
        ),
        rewrite(lambda d, a: (d.astype(np.float64), a), "float64"),
        rewrite(values(np.nan), "a NaN voxel"),
        rewrite(values(np.inf), "an infinite voxel"),
        rewrite(values(-1.0), "a voxel -1"),
        rewrite(values(0.5), "a voxel 0.5"),
        rewrite(values(7.0), "a voxel 7 (no such label)"),
        rewrite(values(1e38), "a voxel 1e38"),
        rewrite(lambda d, a: (np.zeros_like(d), a), "all zero (an empty label)"),
        rewrite(lambda d, a: (np.full_like(d, 255), a), "all 255"),
        rewrite(lambda d, a: (np.full(d.shape, -1, np.int16), a), "all -1 (int16)"),
    ]
    return rng.choice(choices)


def nifti_mutation(rng: random.Random) -> tuple[Callable[[Path], None], str]:
    """One corruption of a NIfTI file: its bytes, header, voxels or the file itself."""
    r = rng.random()
    if r < 0.25:
        return _bytes_mutation(rng)
    if r < 0.55:
        return _header_mutation(rng)
    if r < 0.95:
        return _data_mutation(rng)
    return fs_mutation(rng)


# ---------------------------------------------------------------- datasets


def write_dataset(root: Path, *, layout: str = "msd", cases: int = 2, seed: int = 0) -> dict:
    """A tiny valid dataset: ``msd`` (Decathlon), ``nnunet`` (v2 raw) or ``regions``.

    Files: ``imagesTr/c{i}[_0000].nii.gz``, ``labelsTr/c{i}.nii.gz``, one test image
    ``imagesTs/t0[_0000].nii.gz``. Returns the dataset.json written.
    """
    channel = "" if layout == "msd" else "_0000"
    for i in range(cases):
        image, label = case_arrays(seed + i)
        save_nifti(root / "imagesTr" / f"c{i}{channel}.nii.gz", image)
        save_nifti(root / "labelsTr" / f"c{i}.nii.gz", label)
    save_nifti(root / "imagesTs" / f"t0{channel}.nii.gz", case_arrays(seed + 99)[0])
    if layout == "msd":
        meta = {
            "name": "fuzz",
            "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "a", "2": "b"},
            "numTraining": cases,
            "training": [
                {"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"}
                for i in range(cases)
            ],
            "test": ["./imagesTs/t0.nii.gz"],
        }
    else:
        labels: dict[str, Any] = {"background": 0, "a": 1, "b": 2}
        if layout == "regions":
            labels = {"background": 0, "whole": [1, 2], "core": [2]}
        meta = {
            "channel_names": {"0": "MRI"},
            "labels": labels,
            "numTraining": cases,
            "file_ending": ".nii.gz",
        }
        if layout == "regions":
            meta["regions_class_order"] = [1, 2]
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return meta


def _files(root: Path, layout: str, role: str) -> list[str]:
    """Relative names of the dataset's training images or labels."""
    channel = "" if layout == "msd" or role == "label" else "_0000"
    folder = "imagesTr" if role == "image" else "labelsTr"
    return [f"{folder}/c{i}{channel}.nii.gz" for i in range(2)]


def _dataset_command(rng: random.Random, train: bool) -> str:
    return rng.choice(("configure", "plan", "train.py") if train else ("configure", "plan"))


def _reader_argv(command: str, folder: Path, root: Path) -> list[str]:
    """The command line of a command reading the dataset at ``root``."""
    if command == "configure":
        return ["segkit", "configure", f"data.root={root}"]
    if command == "plan":
        return ["segkit", "plan", "data=msd", f"data.root={root}"]
    return ["train.py", f"data.root={root}", *TRAIN_STEP, f"hydra.run.dir={folder / 'run'}"]


def _ignore_clash(meta: dict, rng: random.Random) -> tuple[dict, str]:
    meta = copy.deepcopy(meta)
    value = rng.choice((0, 1, 2, 5, -1, "3", 2.5))
    if "modality" in meta:
        meta["labels"][str(value)] = "ignore"
    else:
        meta["labels"]["ignore"] = value
    return meta, f"an ignore label {value!r}"


def _regions_change(meta: dict, rng: random.Random) -> tuple[dict, str]:
    meta = copy.deepcopy(meta)
    change = rng.choice(
        (
            ("whole", []),
            ("whole", [1, "a"]),
            ("whole", [[1]]),
            ("core", [-1]),
            ("core", [99]),
            ("core", [1, 2]),
            ("core", [0]),
            ("regions_class_order", [1]),
            ("regions_class_order", [2, 1, 0]),
            ("regions_class_order", ["1", "2"]),
            ("regions_class_order", None),
            ("regions_class_order", [2**40, 1]),
        )
    )
    key, value = change
    if key == "regions_class_order":
        meta[key] = value
    else:
        meta["labels"][key] = value
    return meta, f"{key} is {value!r}"


def _unicode_names(meta: dict, rng: random.Random) -> tuple[dict, str]:
    meta = copy.deepcopy(meta)
    name = rng.choice(("肝臓", "🫀 heart", "\u202eevil", "a\u0000b", "ｂ", "é" * 300))
    if "modality" in meta:
        meta["labels"]["1"] = name
        key = rng.choice(("1", "١", "１"))  # ASCII, Arabic-Indic and full-width one
        meta["labels"] = {("0" if k == "0" else key if k == "1" else k): v for k, v in
                          meta["labels"].items()}  # fmt: skip
    else:
        meta["labels"] = {(name if v == 1 else k): v for k, v in meta["labels"].items()}
    return meta, f"unicode label name {name[:12]!r}"


def _huge_values(meta: dict, rng: random.Random) -> tuple[dict, str]:
    meta = copy.deepcopy(meta)
    big = rng.choice((2**31, 2**63, 10**100, 1e308))
    if "modality" in meta:
        meta["labels"][str(big)] = "huge"
    elif isinstance(meta["labels"].get("b"), int):
        meta["labels"]["b"] = big
    else:
        meta["numTraining"] = big
    return meta, f"a label value {big:g}" if isinstance(big, float) else f"a label value {big}"


def _entries_change(meta: dict, rng: random.Random) -> tuple[dict, str]:
    meta = copy.deepcopy(meta)
    entries = meta.get("training")
    if entries is None:  # nnU-Net: files are found, not listed
        meta["file_ending"] = rng.choice((".nii", ".mha", "", "nii.gz", ".NII.GZ"))
        return meta, f"file_ending {meta['file_ending']!r}"
    what, value = rng.choice(
        (
            ("image", "./imagesTr/nope.nii.gz"),
            ("image", "/etc/passwd"),
            ("image", "../../../../etc/hostname"),
            ("label", "./imagesTr/c0.nii.gz"),
            ("image", "./labelsTr/c0.nii.gz"),
            ("label", None),
            ("image", ""),
            ("image", "./imagesTr/"),
        )
    )
    entries[0][what] = value
    return meta, f"training[0].{what} is {value!r}"


def _dataset_json_case(rng: random.Random, train: bool) -> Case:
    layout = rng.choice(("msd", "nnunet", "regions"))
    command = _dataset_command(rng, train)
    semantic = rng.choice((_ignore_clash, _regions_change, _unicode_names, _huge_values,
                           _entries_change))  # fmt: skip
    use_semantic = rng.random() < 0.35 and not (semantic is _regions_change and layout != "regions")
    sub_seed = rng.getrandbits(32)
    listed: tuple[str, ...] = ()
    if use_semantic:
        probe, what = semantic(_meta_of(layout), random.Random(sub_seed))
        write = None
        # a file dataset.json lists (anywhere) is refused by its own name
        entry = (probe.get("training") or [{}])[0]
        listed = tuple(Path(v).name for v in entry.values() if isinstance(v, str) and v)
    else:
        write, what = json_file_mutation(rng, _meta_of(layout))

    def build(folder: Path, assets: Assets) -> list[str]:
        root = folder / "ds"
        meta = write_dataset(root, layout=layout)
        path = root / "dataset.json"
        if write is None:
            path.write_text(json.dumps(semantic(meta, random.Random(sub_seed))[0]))
        else:
            write(path, meta)
        return _reader_argv(command, folder, root)

    # a dataset.json naming the wrong file is refused where that file is read
    names = ("dataset.json", "/imagesTr/", "/labelsTr/", "/imagesTs/", *listed)
    return Case("dataset.json", command, f"{layout}: {what}", build, names)


_META_CACHE: dict[str, dict] = {}


def _meta_of(layout: str) -> dict:
    """The dataset.json :func:`write_dataset` writes for ``layout`` (without writing)."""
    if layout not in _META_CACHE:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            _META_CACHE[layout] = write_dataset(Path(tmp), layout=layout)
    return copy.deepcopy(_META_CACHE[layout])


def _nifti_case(rng: random.Random, train: bool) -> Case:
    command = rng.choice(
        ("configure", "plan", "predict", "evaluate", "train.py")
        if train
        else ("configure", "plan", "predict", "evaluate")
    )
    layout = rng.choice(("msd", "nnunet"))
    role = "image" if command == "predict" else rng.choice(("image", "label"))
    if command == "evaluate":
        role = "label"
    change, what = nifti_mutation(rng)
    pick = rng.randrange(2)
    side = rng.choice(("pred", "labels"))

    def build(folder: Path, assets: Assets) -> list[str]:
        root = folder / "ds"
        write_dataset(root, layout=layout)
        if command == "predict":
            target = folder / "in" / "t0.nii.gz"
            save_nifti(target, case_arrays(5, (13, 11, 9))[0])
            change(target)
            return ["segkit", "predict", f"ckpt={assets.checkpoint}", f"input={target.parent}",
                    f"output={folder / 'out'}", "progress=false"]  # fmt: skip
        if command == "evaluate":
            for name in ("pred", "labels"):
                for i in range(2):
                    save_nifti(folder / name / f"c{i}.nii.gz", case_arrays(i)[1])
            change(folder / side / f"c{pick}.nii.gz")
            return ["segkit", "evaluate", f"pred={folder / 'pred'}", f"labels={folder / 'labels'}",
                    f"summary={folder / 'summary.json'}", "progress=false"]  # fmt: skip
        change(root / _files(root, layout, role)[pick])
        return _reader_argv(command, folder, root)

    name = (
        "t0.nii.gz"
        if command == "predict"
        else f"c{pick}.nii.gz"
        if command == "evaluate"
        else Path(_files(Path(), layout, role)[pick]).name
    )
    where = f"{side}/{name}" if command == "evaluate" else name
    # where the file is not a file (missing, a pipe), the case or its folder is named
    names = {
        "predict": (name, "t0", "input="),
        "evaluate": (name, f"'c{pick}'"),
    }.get(command, (name, f"'c{pick}'"))
    return Case("nifti", command, f"{where}: {what}", build, names)


# ---------------------------------------------------------------- training cache


def prepare_cache(root: Path, folder: Path) -> Path:
    """Preprocesses the tiny dataset as the one-step train.py run (:data:`TRAIN_STEP`)
    would and writes its splits.json; returns the cache's settings directory."""
    from hydra.utils import instantiate

    from segkit.config import compose

    overrides = [f"data.root={root}", *TRAIN_STEP, f"hydra.run.dir={folder / 'run'}"]
    cfg = compose([o for o in overrides if not o.startswith(("~", "++"))])
    dm = instantiate(cfg.data, num_workers=0)
    with contextlib.redirect_stderr(io.StringIO()):
        dm.prepare_data()
        dm.setup("fit")
    return dm.cache_path


def _splits_case(rng: random.Random, train: bool) -> Case:
    template = [{"train": ["c0"], "val": ["c1"]}, {"train": ["c1"], "val": ["c0"]}]
    semantic = rng.choice(
        (
            ([{"train": ["c0"], "val": ["c1"]}], "one fold, hand-made"),
            ([{"train": ["c0", "c1"], "val": ["c1"]}] * 2, "a case in train and val"),
            ([{"train": ["c9"], "val": ["c0"]}] * 2, "an unknown case"),
            ([{"train": [], "val": ["c0"]}] * 2, "no training case"),
            ([{"train": ["c0"], "val": []}] * 2, "no validation case"),
            ([{"train": ["c0"], "val": ["c1"]}] * 7, "seven folds"),
            (None, ""),
        )
    )
    if semantic[0] is None:
        write, what = json_file_mutation(rng, template)
    else:
        write, what = (lambda p, tree, s=semantic[0]: p.write_text(json.dumps(s))), semantic[1]

    def build(folder: Path, assets: Assets) -> list[str]:
        root = folder / "ds"
        write_dataset(root)
        cache = prepare_cache(root, folder)
        write(cache / "splits.json", json.loads((cache / "splits.json").read_text()))
        return _reader_argv("train.py", folder, root)

    return Case("splits.json", "train.py", what, build, ("splits.json",))


def _cache_case(rng: random.Random, train: bool) -> Case:
    """A corrupted cache entry: fingerprint/planner JSON (configure, plan) or, where
    training runs, a preprocessed case (train.py)."""
    arrays = train and rng.random() < 0.5
    if arrays:
        target = rng.choice(("c0_image.npy", "c0_label.npy", "c0_fg.npy", "c0.json",
                             "settings.json", "preprocessor.json", "fingerprint.json"))  # fmt: skip
        command = "train.py"
    else:
        target = rng.choice(("fingerprint-*.json", "plans/planner-*.json"))
        command = rng.choice(("configure", "plan"))
    if target.endswith(".npy"):
        change, what = _npy_mutation(rng)
    elif rng.random() < 0.6:
        seed = rng.getrandbits(32)

        def change(path: Path) -> None:
            tree = json.loads(path.read_text())
            apply, _ = tree_mutation(random.Random(seed), tree)
            path.write_text(json.dumps(apply(tree)))

        what = f"a value of its tree (seed {seed})"
    else:
        corrupt, what = text_mutation(rng)
        if rng.random() < 0.8:

            def change(path: Path) -> None:
                path.write_bytes(corrupt(path.read_text()))

        else:
            change, what = fs_mutation(rng)

    def build(folder: Path, assets: Assets) -> list[str]:
        root = folder / "ds"
        write_dataset(root)
        if arrays:
            cache = prepare_cache(root, folder)
            path = cache / ("cases/" if target.startswith("c0") else "") / target
        else:
            from segkit.cli import main

            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                main(["plan", "data=msd", f"data.root={root}"])  # fingerprint and planner
            path = next((root / "segkit_cache").glob(target))
        change(path)
        return _reader_argv(command, folder, root)

    name = target.split("/")[-1].split("-")[0]
    return Case("cache", command, f"{target}: {what}", build, (name, "segkit_cache"),
                replaceable=("ds/segkit_cache/",))  # fmt: skip


def _npy_mutation(rng: random.Random) -> tuple[Callable[[Path], None], str]:
    cut = rng.random()

    def truncate(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])

    def rewrite(make: Callable[[np.ndarray], Any]) -> Callable[[Path], None]:
        def apply(path: Path) -> None:
            arr = np.load(path)
            out = make(arr)
            with path.open("wb") as fh:
                np.save(fh, out, allow_pickle=True)

        return apply

    return rng.choice(
        (
            (truncate, f"truncated at {cut:.0%}"),
            (rewrite(lambda a: a.reshape(-1)), "flattened"),
            (rewrite(lambda a: a[..., :1]), "cut to one slice"),
            (rewrite(lambda a: a.astype(np.float64)), "float64"),
            (rewrite(lambda a: a.astype(np.complex64)), "complex64"),
            (rewrite(lambda a: np.full_like(a, np.nan, dtype=np.float32)), "all NaN"),
            (rewrite(lambda a: np.array([{"pickled": 1}], dtype=object)), "a pickled object"),
            (rewrite(lambda a: np.zeros((0,), a.dtype)), "empty"),
            (lambda p: p.write_bytes(b"\x93NUMPY garbage"), "a broken .npy header"),
        )
    )


# ---------------------------------------------------------------- checkpoints


def _tensor_mutation(rng: random.Random) -> tuple[Callable[[dict], dict], str]:
    import torch

    pick = rng.random()
    how = rng.choice(("shape", "int64", "bool", "complex", "nan", "scalar", "python int"))

    def apply(ckpt: dict) -> dict:
        state = ckpt["state_dict"]
        keys = sorted(state)
        key = keys[int(pick * len(keys))]
        t = state[key]
        state[key] = {
            "shape": lambda: torch.zeros(*t.shape, 2) if t.ndim else torch.zeros(3),
            "int64": lambda: t.long(),
            "bool": lambda: t > 0,
            "complex": lambda: t.to(torch.complex64),
            "nan": lambda: torch.full_like(t, float("nan")),
            "scalar": lambda: torch.tensor(1.0),
            "python int": lambda: 3,
        }[how]()
        return ckpt

    return apply, f"a state_dict tensor: {how}"


def _other_layout(rng: random.Random) -> tuple[Callable[[dict], Any], str]:
    import torch

    def nnunet(ckpt: dict) -> dict:
        weights = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        return {
            "network_weights": weights,
            "init_args": {"plans": {}, "configuration": "3d_fullres", "fold": 0},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
        }

    def unprefixed(ckpt: dict) -> dict:
        ckpt["state_dict"] = {k[4:]: v for k, v in ckpt["state_dict"].items()}
        return ckpt

    def hparams(ckpt: dict) -> dict:
        ckpt["hparams"] = ckpt.pop("hyper_parameters")
        return ckpt

    def weights_only(ckpt: dict) -> dict:
        return ckpt["state_dict"]

    def tensor(ckpt: dict) -> Any:
        return torch.zeros(3)

    return rng.choice(
        (
            (nnunet, "nnU-Net's checkpoint_final.pth layout"),
            (unprefixed, "state_dict keys without 'net.'"),
            (hparams, "'hparams' instead of 'hyper_parameters' (an old layout)"),
            (weights_only, "a bare state_dict"),
            (tensor, "a single tensor"),
        )
    )


class _Foreign:
    """A pickled object no weights-only loader rebuilds."""


def _checkpoint_mutation(rng: random.Random) -> tuple[Callable[[Path], None], str]:
    """One corruption of a segkit checkpoint file."""
    import torch

    def via_dict(change: Callable[[dict], Any]) -> Callable[[Path], None]:
        def apply(path: Path) -> None:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            torch.save(change(ckpt), path)

        return apply

    r = rng.random()
    if r < 0.2:
        change, what = _bytes_mutation(rng)
        if "gzip" in what or "NIfTI" in what:
            cut = rng.random()
            change = _cut(cut)
            what = f"truncated at {cut:.0%}"
        return change, what
    if r < 0.6:
        under = rng.choice((("hyper_parameters",), ("hyper_parameters", "model"), ()))
        seed = rng.getrandbits(32)

        def mutate(ckpt: dict) -> Any:
            apply, _ = tree_mutation(random.Random(seed), _without_tensors(ckpt), under=under)
            return _with_tensors(apply(_without_tensors(ckpt)), ckpt)

        where = _show(under) if under else "the checkpoint"
        return via_dict(mutate), f"a value under {where} (seed {seed})"
    if r < 0.75:
        change, what = _tensor_mutation(rng)
        return via_dict(change), what
    if r < 0.9:
        change, what = _other_layout(rng)
        return via_dict(change), what
    obj = rng.choice(("class", "module", "numpy", "set"))

    def pickled(path: Path) -> None:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        ckpt["hyper_parameters"]["extra"] = {
            "class": _Foreign(),
            "module": torch.nn.Linear(1, 1),
            "numpy": np.zeros(2),
            "set": {1, 2},
        }[obj]
        torch.save(ckpt, path)

    return pickled, f"a pickled {obj} object"


def _cut(where: float) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * where)])

    return apply


_TENSOR = "<tensor>"


def _without_tensors(ckpt: Any) -> Any:
    """The checkpoint's tree with every tensor as a placeholder string (JSON-like)."""
    import torch

    if isinstance(ckpt, dict):
        return {k: _without_tensors(v) for k, v in ckpt.items()}
    if isinstance(ckpt, list | tuple):
        return [_without_tensors(v) for v in ckpt]
    return _TENSOR if isinstance(ckpt, torch.Tensor) else ckpt


def _with_tensors(tree: Any, original: Any) -> Any:
    """``tree`` with each placeholder put back to the tensor at the same place."""
    if isinstance(tree, dict):
        src = original if isinstance(original, dict) else {}
        return {k: _with_tensors(v, src.get(k)) for k, v in tree.items()}
    if isinstance(tree, list):
        src = list(original) if isinstance(original, list | tuple) else []
        return [_with_tensors(v, src[i] if i < len(src) else None) for i, v in enumerate(tree)]
    if tree == _TENSOR and original is not None:
        return original
    return tree


def _checkpoint_case(rng: random.Random, train: bool) -> Case:
    command = rng.choice(("predict", "export", "train.py") if train else ("predict", "export"))
    change, what = _checkpoint_mutation(rng) if rng.random() < 0.9 else fs_mutation(rng)

    def build(folder: Path, assets: Assets) -> list[str]:
        ckpt = folder / "model" / "best.ckpt"
        ckpt.parent.mkdir(parents=True)
        shutil.copy(assets.checkpoint, ckpt)
        change(ckpt)
        if command == "predict":
            image = save_nifti(folder / "in" / "t0.nii.gz", case_arrays(5, (13, 11, 9))[0])
            return ["segkit", "predict", f"ckpt={ckpt}", f"input={image}",
                    f"output={folder / 'out'}", "progress=false"]  # fmt: skip
        if command == "export":
            return ["segkit", "export", f"ckpt={ckpt}", "format=torchscript",
                    f"output={folder / 'out' / 'm.pt'}", "check=false"]  # fmt: skip
        root = folder / "ds"
        write_dataset(root)
        return [*_reader_argv("train.py", folder, root), f"init.from_checkpoint={ckpt}"]

    # a valid checkpoint of another network: the case it cannot predict is named
    return Case("checkpoint", command, what, build, ("best.ckpt", "t0"))


# ---------------------------------------------------------------- decision.json


def decision_template() -> dict:
    """A valid decision.json naming one checkpoint (``cv/fold_0/best.ckpt``)."""
    return {
        "format": "segkit-selection/1",
        "selected": {"configurations": ["cv"], "cv_dice": 0.5},
        "postprocessing": {"steps": ["largest_foreground"], "trials": []},
        "inference": {"mode": "auto", "overlap": 0.5, "window_scale": 1.0, "tta": False},
        "configurations": [{"name": "cv", "checkpoints": ["../cv/fold_0/best.ckpt"]}],
    }


def _decision_case(rng: random.Random, train: bool) -> Case:
    template = decision_template()
    write, what = json_file_mutation(rng, template)
    as_folder = rng.random() < 0.5

    def build(folder: Path, assets: Assets) -> list[str]:
        ckpt = folder / "cv" / "fold_0" / "best.ckpt"
        ckpt.parent.mkdir(parents=True)
        shutil.copy(assets.checkpoint, ckpt)
        path = folder / "selection" / "decision.json"
        path.parent.mkdir()
        write(path, template)
        image = save_nifti(folder / "in" / "t0.nii.gz", case_arrays(5, (13, 11, 9))[0])
        where = path.parent if as_folder else path
        return ["segkit", "predict", f"ckpt={where}", f"input={image}",
                f"output={folder / 'out'}", "progress=false"]  # fmt: skip

    return Case("decision.json", "predict", what, build, ("decision.json", "selection"))


# ---------------------------------------------------------------- nnU-Net plans


def _plans_case(rng: random.Random, train: bool) -> Case:
    fingerprint = rng.random() < 0.3
    source = FINGERPRINT if fingerprint else PLANS
    template = json.loads(source.read_text())
    configuration = rng.choice(("3d_fullres", "3d_fullres", "2d"))
    under: tuple = () if fingerprint or rng.random() < 0.3 else ("configurations", configuration)
    write, what = json_file_mutation(rng, template, under=under)

    def build(folder: Path, assets: Assets) -> list[str]:
        path = folder / "nnunet" / source.name
        path.parent.mkdir()
        write(path, template)
        if fingerprint:
            shutil.copy(source.parent / "dataset.json", path.parent / "dataset.json")
            return ["segkit", "configure", f"fingerprint={path}", "model=unet"]
        return ["segkit", "configure", f"plans={path}", f"configuration={configuration}"]

    return Case("plans", "configure", f"{source.name}: {what}", build, (source.name,))


# ---------------------------------------------------------------- command-line values

# every key=value key of each command the fuzzer drives (search launches training: left out)
_KEYS = {
    "plan": ("model.depth", "model.kernel_size", "model.channels", "model.strides",
             "model.block", "model.norm", "model.spatial_dims", "data.patch_size",
             "model.max_channels", "model.dropout", "model.act", "model", "data", "trainer",
             "multirun", "json"),
    "configure": ("data.root", "planner.memory_gb", "model.spatial_dims", "data.patch_size",
                  "plans", "configuration", "fingerprint", "json", "data.target_spacing"),
    "predict": ("ckpt", "input", "output", "mode", "overlap", "window_scale", "tta",
                "save_probabilities", "device", "sw_batch_size", "progress", "part",
                "workers", "max_memory_gb", "postprocess", "trust"),
    "evaluate": ("pred", "labels", "output", "summary", "nsd_tolerance", "num_classes",
                 "ignore_label", "progress"),
    "export": ("ckpt", "format", "output", "check", "tolerance", "trust"),
    "make-demo": ("dir", "seed", "sparse", "regions", "num_cases"),
    "sweep-report": ("dir", "metric", "best", "storage"),
    "select": ("cv_dirs", "out", "allow_incomplete"),
    # cv without a from= folder trains every fold: from= stays, whatever else changes
    "cv": ("out", "tta", "device", "folds"),
}  # fmt: skip
# keys whose huge values are honest requests for a long run, not mistakes
_BOUNDED = {("make-demo", "num_cases"): ("-1", "0", "abc", "1.5", "null", "[]", "")}


def _cli_base(command: str, folder: Path, assets: Assets) -> list[str]:
    """A valid command line of ``command`` on files made under ``folder``."""
    if command == "plan":
        return ["model.depth=3", "data.patch_size=[16,16,12]"]
    if command == "configure":
        root = folder / "ds"
        write_dataset(root)
        return [f"data.root={root}"]
    if command == "predict":
        image = save_nifti(folder / "in" / "t0.nii.gz", case_arrays(5, (13, 11, 9))[0])
        return [f"ckpt={assets.checkpoint}", f"input={image}", f"output={folder / 'out'}",
                "progress=false"]  # fmt: skip
    if command == "evaluate":
        for name in ("pred", "labels"):
            save_nifti(folder / name / "c0.nii.gz", case_arrays(0)[1])
        return [f"pred={folder / 'pred'}", f"labels={folder / 'labels'}",
                f"summary={folder / 'summary.json'}", "progress=false"]  # fmt: skip
    if command == "export":
        return [f"ckpt={assets.checkpoint}", "format=torchscript",
                f"output={folder / 'out' / 'm.pt'}", "check=false"]  # fmt: skip
    if command == "make-demo":
        return [str(folder / "demo"), "num_cases=1"]
    if command == "sweep-report":
        (folder / "sweep").mkdir()
        return [str(folder / "sweep")]
    if command == "select":
        (folder / "cv1").mkdir()
        return [str(folder / "cv1"), f"out={folder / 'selection'}"]
    (folder / "multirun").mkdir()
    return [f"from={folder / 'multirun'}", f"out={folder / 'cvout'}"]


_MALFORMED = ("model.depth", "=3", "model..depth=3", "+model.depth=3", "~nope", "model.depth=3,4",
              "model.depth=[3", "model.depth=${nope}", "hydra.nope=1", "++", "model=", "@=1",
              "model.depth=3 4", "data.patch_size=[16,16,12")  # fmt: skip


def _as_read(word: str) -> str:
    """``word`` as segkit shows a value it read in Hydra's grammar (``1e308`` → ``1e+308``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return str(OverridesParser.create().parse_override(f"k={word}").value())
    except Exception:  # noqa: BLE001 - not Hydra's grammar: shown as written
        return word


def _cli_case(rng: random.Random, train: bool) -> Case:
    command = rng.choice(sorted(_KEYS))
    key = rng.choice(_KEYS[command])
    op = rng.choice(("value", "value", "value", "unknown key", "missing", "bare word", "flag",
                     "twice", "malformed"))  # fmt: skip
    word = rng.choice(_BOUNDED.get((command, key), WORDS))
    typo = key[:-1] + rng.choice("xyz") if len(key) > 1 else key + "x"

    def build(folder: Path, assets: Assets) -> list[str]:
        args = _cli_base(command, folder, assets)
        if op == "value":
            args = [a for a in args if a.partition("=")[0] != key] + [f"{key}={word}"]
        elif op == "unknown key":
            args.append(f"{typo}={word}")
        elif op == "missing":
            args = [a for a in args if a.partition("=")[0] != key or command == "cv"]
        elif op == "bare word":
            args.append(word)
        elif op == "flag":
            args += [f"--{key}", word]
        elif op == "twice":
            args += [f"{key}={word}", f"{key}={rng_word}"]
        else:
            args.append(malformed)
        return ["segkit", command, *args]

    rng_word = rng.choice(WORDS)
    malformed = rng.choice(_MALFORMED)
    what = {
        "value": f"{key}={_short(word)}",
        "unknown key": f"{typo}={_short(word)}",
        "missing": f"without {key}",
        "bare word": f"a bare word {_short(word)}",
        "flag": f"--{key} {_short(word)}",
        "twice": f"{key} given twice ({_short(word)}, {_short(rng_word)})",
        "malformed": f"override {malformed!r}",
    }[op]
    # the base of sweep-report, select and cv names an empty folder: refused by its name
    base = {"sweep-report": ("sweep",), "select": ("cv1",), "cv": ("multirun",)}.get(command, ())
    names = {
        "unknown key": (typo,),
        # a list key's items are read in Hydra's grammar: the error shows 1e+308 for 1e308
        "value": (key, word, _as_read(word)),
        "flag": (key, word, _as_read(word)),
        "bare word": (word.strip() or "key=value", "not key=value", "positional"),
        "twice": (key, word, rng_word),
        "malformed": (malformed.partition("=")[0] or malformed, malformed),
    }.get(op, (key,))
    return Case("cli", command, what, build, tuple(n for n in (*names, *base) if n))


def _train_py_case(rng: random.Random, train: bool) -> Case:
    """A Hydra override train.py cannot take (or can), on the tiny dataset."""
    op = rng.choice(("unknown key", "group option", "malformed", "value", "value"))
    key = rng.choice(("model.depth", "model.kernel_size", "model.channels", "data.patch_size",
                      "model.block", "model.norm", "optim.optimizer.lr", "data.batch_size",
                      "data.fold", "seed", "trainer.max_epochs", "loss.dice_weight",
                      "data.normalization", "val_mode", "resume", "ckpt_path"))  # fmt: skip
    group = rng.choice(("model", "trainer", "optim", "loss", "logger", "data", "planner",
                        "experiment", "+experiment", "debug", "launcher", "callbacks"))  # fmt: skip
    word = rng.choice(WORDS)
    override = {
        "unknown key": f"{key[:-1]}x={rng.choice(('3', word))}",
        "group option": f"{group}={rng.choice(('nope', 'unet3', word))}",
        "malformed": rng.choice(_MALFORMED),
        "value": f"{key}={word}",
    }[op]

    def build(folder: Path, assets: Assets) -> list[str]:
        root = folder / "ds"
        write_dataset(root)
        return [*_reader_argv("train.py", folder, root), override]

    key_named = override.partition("=")[0].lstrip("+~") or override
    return Case("train.py", "train.py", f"{op}: {override[:60]!r}", build, (key_named, override))


_FAMILIES: dict[str, Callable[[random.Random, bool], Case]] = {
    "dataset.json": _dataset_json_case,
    "nifti": _nifti_case,
    "splits.json": _splits_case,
    "cache": _cache_case,
    "checkpoint": _checkpoint_case,
    "decision.json": _decision_case,
    "plans": _plans_case,
    "cli": _cli_case,
    "train.py": _train_py_case,
}


def generate(n: int, seed: int, *, train: bool = True) -> list[Case]:
    """``n`` cases, round-robin over the file kinds, each drawn from its own seed.

    Args:
        n: how many.
        seed: the same seed gives the same cases (and files).
        train: include cases whose command trains (``train.py``); without, the kinds only
            training reads are left out and no case's command trains.
    """
    kinds = [k for k in KINDS if train or k not in TRAINING_ONLY]
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        cases.append(_FAMILIES[kind](random.Random(rng.getrandbits(64)), train))
    return cases


# ---------------------------------------------------------------- regressions


def _set(path: Sequence, value: Any) -> Callable[[Any], Any]:
    """A tree change: the value at ``path`` (keys and indices) replaced."""

    def apply(tree: Any) -> Any:
        tree = copy.deepcopy(tree)
        _get(tree, path[:-1])[path[-1]] = value
        return tree

    return apply


def _in_dataset(rel: str, change: Callable[[Path], None], command: str = "configure",
                layout: str = "msd") -> Build:  # fmt: skip
    """The tiny dataset with one of its files changed, read by ``command``."""

    def build(folder: Path, assets: Assets) -> list[str]:
        root = folder / "ds"
        write_dataset(root, layout=layout)
        change(root / rel)
        return _reader_argv(command, folder, root)

    return build


def _json_change(change: Callable[[Any], Any]) -> Callable[[Path], None]:
    return lambda path: path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _checkpoint_with(change: Callable[[Path], None], command: str = "predict") -> Build:
    def build(folder: Path, assets: Assets) -> list[str]:
        ckpt = folder / "model" / "best.ckpt"
        ckpt.parent.mkdir(parents=True)
        shutil.copy(assets.checkpoint, ckpt)
        change(ckpt)
        if command == "export":
            return ["segkit", "export", f"ckpt={ckpt}", "format=torchscript",
                    f"output={folder / 'out' / 'm.pt'}", "check=false"]  # fmt: skip
        image = save_nifti(folder / "in" / "t0.nii.gz", case_arrays(5, (13, 11, 9))[0])
        return ["segkit", "predict", f"ckpt={ckpt}", f"input={image}", f"output={folder / 'out'}"]

    return build


def _checkpoint_dict(change: Callable[[dict], Any]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        import torch

        torch.save(change(torch.load(path, map_location="cpu", weights_only=True)), path)

    return apply


def _first_tensor(how: Callable[[Any], Any]) -> Callable[[dict], dict]:
    """The network's first conv weight changed by ``how``."""

    def apply(ckpt: dict) -> dict:
        state = sorted(ckpt["state_dict"])
        key = next(k for k in state if k.startswith("net.") and k.endswith("conv.weight"))
        ckpt["state_dict"][key] = how(ckpt["state_dict"][key])
        return ckpt

    return apply


def _predicted(change: Callable[[Path], None]) -> Build:
    def build(folder: Path, assets: Assets) -> list[str]:
        image = save_nifti(folder / "in" / "t0.nii.gz", case_arrays(5, (13, 11, 9))[0])
        change(image)
        return ["segkit", "predict", f"ckpt={assets.checkpoint}", f"input={image}",
                f"output={folder / 'out'}", "progress=false"]  # fmt: skip

    return build


def _evaluated(change: Callable[[Path], None]) -> Build:
    def build(folder: Path, assets: Assets) -> list[str]:
        for name in ("pred", "labels"):
            save_nifti(folder / name / "c0.nii.gz", case_arrays(0)[1])
        change(folder / "labels" / "c0.nii.gz")
        return ["segkit", "evaluate", f"pred={folder / 'pred'}", f"labels={folder / 'labels'}",
                f"summary={folder / 'summary.json'}"]  # fmt: skip

    return build


def _nnunet_file(source: Path, change: Callable[[Path], None], configuration: str = "3d_fullres"
                 ) -> Build:  # fmt: skip
    def build(folder: Path, assets: Assets) -> list[str]:
        path = folder / "nnunet" / source.name
        path.parent.mkdir()
        shutil.copy(source, path)
        change(path)
        if source == FINGERPRINT:
            return ["segkit", "configure", f"fingerprint={path}", "model=unet"]
        return ["segkit", "configure", f"plans={path}", f"configuration={configuration}"]

    return build


def _decision_with(change: Callable[[Any], Any]) -> Build:
    def build(folder: Path, assets: Assets) -> list[str]:
        ckpt = folder / "cv" / "fold_0" / "best.ckpt"
        ckpt.parent.mkdir(parents=True)
        shutil.copy(assets.checkpoint, ckpt)
        path = folder / "selection" / "decision.json"
        path.parent.mkdir()
        path.write_text(json.dumps(change(decision_template())))
        image = save_nifti(folder / "in" / "t0.nii.gz", case_arrays(5, (13, 11, 9))[0])
        return ["segkit", "predict", f"ckpt={path}", f"input={image}", f"output={folder / 'out'}"]

    return build


def _cached(target: str, change: Callable[[Path], None], command: str = "plan") -> Build:
    """The tiny dataset planned once (fingerprint and planner caches), one entry changed."""

    def build(folder: Path, assets: Assets) -> list[str]:
        from segkit.cli import main

        root = folder / "ds"
        write_dataset(root)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main(["plan", "data=msd", f"data.root={root}"])
        change(next((root / "segkit_cache").glob(target)))
        return _reader_argv(command, folder, root)

    return build


def _command(*words: str, dataset: bool = False) -> Build:
    """``segkit WORDS...``; ``{root}`` in a word is the tiny dataset's folder."""

    def build(folder: Path, assets: Assets) -> list[str]:
        root = folder / "ds"
        if dataset:
            write_dataset(root)
        return ["segkit", *(w.replace("{root}", str(root)) for w in words)]

    return build


def _splits(folds: list) -> Build:
    def build(folder: Path, assets: Assets) -> list[str]:
        root = folder / "ds"
        write_dataset(root)
        (prepare_cache(root, folder) / "splits.json").write_text(json.dumps(folds))
        return _reader_argv("train.py", folder, root)

    return build


def _train(*overrides: str, cache: tuple[str, Callable[[Path], None]] | None = None) -> Build:
    """One training step of train.py on the tiny dataset with ``overrides``; with ``cache``,
    the preprocessed cache made first and one of its files (relative name) changed."""

    def build(folder: Path, assets: Assets) -> list[str]:
        root = folder / "ds"
        write_dataset(root)
        if cache is not None:
            cache[1](prepare_cache(root, folder) / cache[0])
        return [*_reader_argv("train.py", folder, root),
                *(o.replace("{root}", str(root)) for o in overrides)]  # fmt: skip

    return build


def _loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)


def _dangling(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.parent / "nowhere")


def _garbage(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(2000))


def _to_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


_ARCH = ("configurations", "3d_fullres", "architecture", "arch_kwargs")
_TWO_D = [[1.0, 1.0]] + [[1.0, 1.0, 1.0]] * 31
_SHAPES_2D = [[30, 40]] + [[30, 40, 20]] * 31


def _regression(kind: str, command: str, what: str, build: Build, *names: str) -> Case:
    # a damaged cache entry is segkit's to recompute and write again
    replaceable = ("ds/segkit_cache/",) if kind == "cache" else ()
    return Case(kind, command, what, build, names or ("",), replaceable)


# Inputs that once ended in a traceback (or broke the one-line refusal), by name: each stays a
# case of every run. "was": what segkit did before the fix; "a check": a neighbour kept beside.
REGRESSIONS: tuple[Case, ...] = (
    _regression("checkpoint", "predict", "hyper_parameters.preprocessor is an int (was TypeError)",
                _checkpoint_with(_checkpoint_dict(_set(("hyper_parameters", "preprocessor"), 3))),
                "best.ckpt"),
    _regression("checkpoint", "predict", "2000 random bytes (was IndexError in torch.load)",
                _checkpoint_with(_garbage), "best.ckpt"),
    _regression("checkpoint", "export", "a tensor of another shape (was RuntimeError)",
                _checkpoint_with(_checkpoint_dict(_first_tensor(lambda t: t[..., :1])), "export"),
                "best.ckpt"),
    _regression("checkpoint", "predict", "a state_dict int, not a tensor (was RuntimeError)",
                _checkpoint_with(_checkpoint_dict(_first_tensor(lambda t: 3))), "best.ckpt"),
    _regression("checkpoint", "predict", "model.convs_per_stage 2**31 (was memory exhausted)",
                _checkpoint_with(_checkpoint_dict(
                    _set(("hyper_parameters", "model", "convs_per_stage"), 2**31))), "best.ckpt"),
    _regression("nifti", "configure", "datatype code 1 (was nibabel's HeaderDataError)",
                _in_dataset("imagesTr/c0.nii.gz", _header_change("datatype", None, 1)),
                "c0.nii.gz"),
    _regression("nifti", "evaluate", "scl_inter = inf (was nibabel's HeaderDataError)",
                _evaluated(_header_change("scl_inter", None, float("inf"))), "c0.nii.gz"),
    _regression("nifti", "predict", "quatern_b = 2 (was ValueError writing the prediction)",
                _predicted(_header_change("quatern_b", None, 2.0)), "t0.nii.gz"),
    _regression("nifti", "configure", "an all-zero sform (was a refusal over five lines)",
                _in_dataset("labelsTr/c1.nii.gz", _sform(np.zeros((3, 4)))), "c1.nii.gz"),
    _regression("nifti", "configure", "truncated gzip (was the refusal after a progress bar)",
                _in_dataset("imagesTr/c1.nii.gz", _cut(0.9)), "c1.nii.gz"),
    _regression("nifti", "configure", "dim[0] = 8 (was nibabel's log lines before the refusal)",
                _in_dataset("imagesTr/c0.nii.gz", _header_change("dim", 0, 8)), "c0.nii.gz"),
    _regression("nifti", "evaluate", "label values >= 2**63 (was OverflowError)",
                _evaluated(lambda p: save_nifti(p, np.full(SHAPE, 2**63, np.uint64),
                                                dtype=np.uint64)), "c0.nii.gz"),
    _regression("dataset.json", "configure", "arrays nested 100000 deep (was RecursionError)",
                _in_dataset("dataset.json", lambda p: p.write_bytes(b"[" * 10**5 + b"]" * 10**5)),
                "dataset.json"),
    _regression("dataset.json", "configure", "a region value 2**40 (was MemoryError)",
                _in_dataset("dataset.json", _json_change(_set(("labels", "core"), [2**40])),
                            layout="regions"), "dataset.json"),
    _regression("plans", "configure", "dataset_fingerprint.json in UTF-16 (was UnicodeDecodeError)",
                _nnunet_file(FINGERPRINT, lambda p: p.write_bytes(p.read_text().encode("utf-16"))),
                "dataset_fingerprint.json"),
    _regression("plans", "configure", "a 2D case in a 3D fingerprint (was numpy's ValueError)",
                _nnunet_file(FINGERPRINT, _json_change(
                    lambda t: {**t, "spacings": _TWO_D, "shapes_after_crop": _SHAPES_2D})),
                "dataset_fingerprint.json"),
    _regression("plans", "configure", "a fingerprint that is `true` (was TypeError)",
                _nnunet_file(FINGERPRINT, lambda p: p.write_text("true")),
                "dataset_fingerprint.json"),
    _regression("plans", "configure", "features_per_stage a string (was ValueError)",
                _nnunet_file(PLANS, _json_change(_set((*_ARCH, "features_per_stage"), "ab"))),
                "nnUNetPlans.json"),
    _regression("plans", "configure", "the configuration a string (was AttributeError)",
                _nnunet_file(PLANS, _json_change(_set(_ARCH[:2], "-1"))), "nnUNetPlans.json"),
    _regression("plans", "configure", "n_conv_per_stage 2**31 (was memory exhausted)",
                _nnunet_file(PLANS, _json_change(_set((*_ARCH, "n_conv_per_stage"), 2**31))),
                "nnUNetPlans.json"),
    _regression("plans", "configure", "n_stages 2**31 (was memory exhausted)",
                _nnunet_file(PLANS, _json_change(_set((*_ARCH, "n_stages"), 2**31))),
                "nnUNetPlans.json"),
    _regression("decision.json", "predict", "selected.cv_dice a string (was ValueError)",
                _decision_with(_set(("selected", "cv_dice"), "")), "decision.json"),
    _regression("decision.json", "predict", "a checkpoint path that is an int (was TypeError)",
                _decision_with(_set(("configurations", 0, "checkpoints", 0), 5)), "decision.json"),
    _regression("decision.json", "predict", "inference.window_scale a string (was TypeError)",
                _decision_with(_set(("inference", "window_scale"), "1.0")), "decision.json"),
    _regression("cache", "plan", "the planner's cached answer is JSON null (was TypeError)",
                _cached("plans/planner-*.json", lambda p: p.write_text("null")), ""),
    _regression("cache", "plan", "the planner's cached answer is a folder (was IsADirectoryError)",
                _cached("plans/planner-*.json", _to_dir), ""),
    _regression("cli", "configure", "planner.memory_gb=0/0 (was ValueError)",
                _command("configure", "data.root={root}", "planner.memory_gb=0/0", dataset=True),
                "planner.memory_gb"),
    _regression("cli", "configure", "planner.memory_gb=${oops} (was InterpolationKeyError)",
                _command("configure", "data.root={root}", "planner.memory_gb=${oops}",
                         dataset=True), "planner.memory_gb"),
    _regression("cli", "configure", "model.depth='3 4' (was ValueError in the planner)",
                _command("configure", "data.root={root}", "model.depth=3 4", dataset=True),
                "model.depth"),
    _regression("cli", "make-demo", "a folder name of 3000 characters (was OSError)",
                _command("make-demo", "a" * 3000), "aaaa"),
    _regression("cli", "select", "cv_dirs=1e308 (was TypeError)",
                _command("select", "cv_dirs=1e308"), "1e+308"),
    _regression("cli", "predict", "'=3' (was: unknown key '')",
                _command("predict", "ckpt=a", "input=b", "output=c", "=3"), "'=3'"),
    _regression("plans", "configure", "a kernel of 2**64 (was TypeError building the plan)",
                _nnunet_file(PLANS, _json_change(_set((*_ARCH, "kernel_sizes", 0, 1), 2**64))),
                "nnUNetPlans.json"),
    _regression("nifti", "evaluate", "an infinite label voxel (was a RuntimeWarning first)",
                _evaluated(lambda p: save_nifti(p, np.full(SHAPE, np.inf, np.float32))),
                "c0.nii.gz"),
    _regression("cli", "plan", "launcher=1e308 (was: Hydra's words, no option named)",
                _command("plan", "launcher=1e308"), "launcher"),
    _regression("cli", "configure", "data.target_spacing=1e308 (was TypeError)",
                _command("configure", "data.root={root}", "data.target_spacing=1e308",
                         dataset=True), "data.target_spacing"),
    _regression("cli", "configure", "plans=[[1]] (was TypeError)",
                _command("configure", "plans=[[1]]"), "planner.plans"),
    _regression("train.py", "train.py", "trainer.max_epochs=abc (was TypeError mid-run)",
                _train("trainer.max_epochs=abc"), "trainer.max_epochs"),
    _regression("train.py", "train.py", "data.patch_size=- (was Hydra's exit 1)",
                _train("data.patch_size=-"), "data.patch_size"),
    _regression("train.py", "train.py", "optim.optimizer.lr=-1 (was ValueError)",
                _train("optim.optimizer.lr=-1"), "optim.optimizer"),
    _regression("train.py", "train.py", "loss.dice_weight=* (was TypeError mid-run)",
                _train("loss.dice_weight=*"), "loss.dice_weight"),
    _regression("train.py", "train.py", "data.normalization=1e-300 (was TypeError)",
                _train("data.normalization=1e-300"), "data.normalization"),
    _regression("train.py", "train.py", "+experiment=[1,2,3] (was TypeError in Hydra)",
                _train("+experiment=[1,2,3]"), "experiment"),
    _regression("train.py", "train.py", "${oc.env:...} of an unset variable (was: no key named)",
                _train("data.normalization=${oc.env:SEGKIT_FUZZ_NOPE}"), "data.normalization"),
    _regression("cache", "train.py", "preprocessor.json holding 3 (was TypeError)",
                _train(cache=("preprocessor.json", lambda p: p.write_text("3"))),
                "preprocessor.json"),
    _regression("cache", "train.py", "preprocessor.json a folder (was IsADirectoryError)",
                _train(cache=("preprocessor.json", _to_dir)), "preprocessor.json"),
    _regression("train.py", "train.py", "seed=* (was TypeError seeding)", _train("seed=*"), "seed"),
    _regression("train.py", "train.py", "val_mode=1_000 (was: val_mode not named)",
                _train("val_mode=1_000"), "val_mode"),
    _regression("plans", "configure", "a case's shape 1e308 (was OverflowError)",
                _nnunet_file(FINGERPRINT, _json_change(_set(("shapes_after_crop", 0, 0), 1e308))),
                "dataset_fingerprint.json"),
    _regression("train.py", "train.py", "model.kernel_size=1000 (was RuntimeError allocating)",
                _train("model.kernel_size=1000"), "model.kernel_size"),
    _regression("cache", "train.py", "c0_fg.npy a pickled object (a check beside them)",
                _train(cache=("cases/c0_fg.npy", lambda p: np.save(p, np.array([{}]), True))),
                "c0_fg.npy"),
    _regression("checkpoint", "train.py", "init.from_checkpoint an empty file (a check)",
                _train("init.from_checkpoint={root}/../empty.ckpt", cache=("../../empty.ckpt",
                       lambda p: p.write_bytes(b""))), "empty.ckpt"),
    _regression("splits.json", "train.py", "one hand-made fold (a check)",
                _splits([{"train": ["c0"], "val": ["c1"]}]), "splits.json"),
    _regression("nifti", "configure", "a label that is a symlink to itself (was RuntimeError)",
                _in_dataset("labelsTr/c1.nii.gz", _loop), "c1.nii.gz"),
    _regression("nifti", "configure", "a dangling symlink (was: the case named by its target)",
                _in_dataset("imagesTr/c0.nii.gz", _dangling), "'c0'"),
    _regression("cli", "configure", "model.spatial_dims=0x10 (was ValueError in the planner)",
                _command("configure", "data.root={root}", "model.spatial_dims=0x10",
                         dataset=True), "model.spatial_dims"),
    _regression("splits.json", "train.py", "seven folds of two cases (was: data.num_folds=7)",
                _splits([{"train": ["c0"], "val": ["c1"]}] * 7), "splits.json"),
)  # fmt: skip

__all__ = [
    "KINDS",
    "REGRESSIONS",
    "TRAIN_STEP",
    "Assets",
    "Case",
    "case_arrays",
    "generate",
    "save_nifti",
    "write_dataset",
]
