"""Train a segkit U-Net: ``python train.py [hydra overrides]`` (see README)."""

import hydra
from omegaconf import DictConfig

from segkit.training.run import main as run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
