"""``train.py`` as a module, so ``segkit cv`` finds it wherever segkit is installed.

``python -m segkit.crossval.launch -m --config-path=CONF --config-name=train ...`` is
``python train.py -m ...`` with the config directory given on the command line.
"""

import hydra
from omegaconf import DictConfig

from segkit.training.run import main as run


@hydra.main(version_base="1.3", config_path=None, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
