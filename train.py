"""Train a segkit U-Net: ``python train.py [hydra overrides]`` (see README)."""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from segkit.training.run import main as run

    return run(cfg)


if __name__ == "__main__":
    from segkit.config import check_command_line
    from segkit.errors import SegkitError, refuse

    # Hydra's own refusal of an override is several lines and exit code 1
    try:
        check_command_line(sys.argv[1:])
    except SegkitError as exc:
        sys.exit(refuse("train.py", exc))
    main()
