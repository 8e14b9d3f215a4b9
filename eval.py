"""Evaluate a checkpoint: ``python eval.py checkpoint=DIR [n_test=50] [n_train=6] [n_envs=...] [inference_steps=...]``."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="config", config_name="eval", version_base=None)
def main(cfg: DictConfig) -> None:
    """Compose the config, run the evaluation."""
    from fibpolicy.cli import user_errors
    from fibpolicy.evaluation import run_evaluation

    with user_errors():
        run_evaluation(cfg)


if __name__ == "__main__":
    main()
