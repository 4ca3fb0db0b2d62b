"""What wrote a prediction, recorded inside it, so a rerun skips only what it would rewrite.

Every label map ``segkit predict`` writes carries a NIfTI header extension (code 6,
``comment``) holding a small JSON record: the format, the SHA-256 of each checkpoint file
(for an nnU-Net model folder also of its ``plans.json`` and ``dataset.json``), the options
that change the answer (every :class:`~segkit.inference.predict.run.PredictOptions` field
but ``device``, ``progress``, ``part`` and ``workers``), the SHA-256 of the case's input
files, and one ``fingerprint`` over all of it. A ``{case}.npz`` of probabilities carries the
same record as its member ``segkit_record.npy``.

A rerun into the same folder skips a case only where its label map (and, with
``save_probabilities``, its ``.npz``) is complete and carries the fingerprint this run would
write; any other file of that name is overwritten. Outputs are written atomically, so one
carrying a record is whole: a run killed or stopped by a full disk is finished by running
the same command again.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

FORMAT = "segkit-prediction/1"
NPZ_MEMBER = "segkit_record"
COMMENT = 6  # NIFTI_ECODE_COMMENT
# how a run is spread, not what it computes: outputs do not depend on them
NOT_RECORDED = ("device", "progress", "part", "workers")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (read in 16 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(16 * 2**20):
            digest.update(block)
    return digest.hexdigest()


def run_record(checkpoints: Sequence[Path], options: Any) -> dict[str, Any]:
    """What every case of one run shares: the checkpoints' bytes and the options."""
    opts = {k: v for k, v in asdict(options).items() if k not in NOT_RECORDED}
    return {
        "format": FORMAT,
        "checkpoints": [file_sha256(Path(p)) for p in checkpoints],
        "options": json.loads(json.dumps(opts, default=list)),
    }


def model_files(model: Any) -> list[Path]:
    """The files a loaded model's answer depends on (an nnU-Net fold: also its plans)."""
    files = [Path(model.path)]
    if getattr(model, "origin", "segkit") == "nnunet":
        folder = Path(model.path).parent.parent
        files += [folder / name for name in ("plans.json", "dataset.json")]
    return [f for f in files if f.is_file()]


def case_record(run: dict[str, Any], images: Sequence[Path]) -> dict[str, Any]:
    """One case's record: the run's, the inputs' SHA-256 and the fingerprint of it all."""
    record = {**run, "inputs": [file_sha256(Path(p)) for p in images]}
    text = json.dumps(record, sort_keys=True)
    return {**record, "fingerprint": hashlib.sha256(text.encode()).hexdigest()}


def nifti_extension(record: dict[str, Any]) -> nib.nifti1.Nifti1Extension:
    """The record as a NIfTI header extension."""
    return nib.nifti1.Nifti1Extension(COMMENT, json.dumps(record, sort_keys=True).encode())


def npz_member(record: dict[str, Any]) -> np.ndarray:
    """The record as the ``.npz`` member ``segkit_record.npy`` (a 0-d string array)."""
    return np.asarray(json.dumps(record, sort_keys=True))


def _parse(content: bytes | str) -> dict[str, Any] | None:
    try:
        record = json.loads(content)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def read_nifti_record(path: Path) -> dict[str, Any] | None:
    """The record of a complete label map; None when the file is missing, damaged (its
    voxels are read to the end) or carries none."""
    try:
        image = nib.load(str(path))
        records = [
            r
            for ext in image.header.extensions
            if ext.get_code() == COMMENT and (r := _parse(ext.get_content())) is not None
        ]
        np.asarray(image.dataobj)  # a truncated body fails here
    except Exception:  # noqa: BLE001 - nibabel and zlib raise many types for damaged files
        return None
    return records[-1] if records else None


def read_npz_record(path: Path) -> dict[str, Any] | None:
    """The record of a complete ``.npz`` of probabilities; None when missing, damaged or
    without one."""
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.testzip() is not None:  # every member's CRC: a damaged archive
                return None
        with np.load(path, allow_pickle=False) as data:
            return _parse(str(data[NPZ_MEMBER][()])) if NPZ_MEMBER in data.files else None
    except Exception:  # noqa: BLE001 - zipfile and numpy raise many types for damaged files
        return None


def already_written(label_file: Path, record: dict[str, Any], *, probabilities: bool) -> bool:
    """Whether ``label_file`` (and its ``.npz``) are complete and written with ``record``."""
    found = read_nifti_record(label_file)
    if found is None or found.get("fingerprint") != record["fingerprint"]:
        return False
    if not probabilities:
        return True
    case = label_file.name.removesuffix(".gz").removesuffix(".nii")
    npz = read_npz_record(label_file.with_name(f"{case}.npz"))
    return npz is not None and npz.get("fingerprint") == record["fingerprint"]
