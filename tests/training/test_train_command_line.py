"""``python train.py`` with an override Hydra cannot take: exit code 2 and one line
``train.py: error: ...`` naming the override and a fix that works when pasted (Hydra itself
prints several lines and exits 1), before any run directory is made."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from segkit.config import check_command_line
from tests.utils import REPO


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.depht=3", "unknown key 'model.depht'"),  # unknown key
        ("model=unet3", "model=unet3: no such option"),  # bad group option
        ("data.patch_size=[64,64,48", "'data.patch_size=[64,64,48' is not a Hydra override"),
    ],
)
def test_bad_override_is_one_line_with_a_fix_that_works(override, named, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", override, f"hydra.run.dir={run}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: config: "), proc.stderr
    assert named in lines[0]
    assert not run.exists()  # refused before Hydra made the run directory
    # the fix, pasted in place of the override, is taken
    fix = shlex.split(lines[0].split("Fix: ")[1].split(" (or ")[0])
    assert len(fix) == 1 and fix[0] != override
    check_command_line([fix[0], f"hydra.run.dir={run}"])


def test_fixes_of_other_malformed_overrides_are_taken():
    from segkit.config import compose
    from segkit.errors import ConfigError

    for override, fix in [
        ("model.depth", f"model.depth={compose([]).model.depth}"),  # no value: its value now
        ("+experiment=msd_hipocampus", "experiment=msd_hippocampus"),
        ("launcher=1e308", "launcher=joblib"),
        ("model..depth=3", "model.depth=3"),
    ]:
        with pytest.raises(ConfigError) as err:
            check_command_line([override])
        assert str(err.value).endswith(f"Fix: {fix}"), err.value
        check_command_line([fix])


def test_hydra_flags_stay_hydras(capsys):
    check_command_line(["--help"])  # Hydra prints its help; nothing is composed here
    check_command_line(["-m", "model.depth=3,4", "model=unet,resenc"])
    from segkit.errors import ConfigError

    with pytest.raises(ConfigError, match="model=unet4: no such option"):
        check_command_line(["-m", "model=unet,unet4"])  # every swept option is composed
    with pytest.raises(ConfigError, match=r"unrecognized argument\(s\) --nope"):
        check_command_line(["--nope"])
