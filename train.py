"""Train: ``python train.py [task=...] [encoder=...] [policy=...] [training=...] [key=value ...]``.

With no arguments: a diffusion policy on PushT images with the Fibottention ViT encoder, on expert
demonstrations generated (once, cached under ``data/``) if they are not there yet.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="config", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    """Compose the config, build the task, run it."""
    from fibpolicy.cli import user_errors
    from fibpolicy.training.run import run_training

    with user_errors():
        run_training(cfg)


if __name__ == "__main__":
    main()
