"""Prepare a task's data: ``python prepare.py [task=...] [key=value ...]`` runs the task's ``prepare`` step.

For PushT this records the scripted expert's demonstrations (``data/pusht_expert_200.zarr``), which
``python train.py`` would otherwise record before training; an existing store is left as it is.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="config", config_name="prepare", version_base=None)
def main(cfg: DictConfig) -> None:
    """Compose the config, run the task's data preparation."""
    from fibpolicy.cli import user_errors
    from fibpolicy.training.run import prepare_data

    with user_errors():
        result = prepare_data(cfg)
    print(f"[fibpolicy] {cfg.task.name}: " + (f"data ready at {result}" if result is not None else "the task has no prepare step"))


if __name__ == "__main__":
    main()
