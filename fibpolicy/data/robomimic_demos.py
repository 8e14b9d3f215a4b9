"""Recording robomimic demonstrations into robomimic's own HDF5 layout.

Its command line is ``python -m fibpolicy.record_robomimic_demos``. The episodes come from
``envs.robomimic.demos.expert_demos`` (the scripted experts; how a demo is made is described there);
this module owns the file. The layout is robomimic's v1.4.1 PH ``image.hdf5``
(``scripts/dataset_states_to_obs.py``):

- ``data`` attrs ``total`` (number of samples) and ``env_args`` (JSON: ``env_name``, ``type``,
  ``env_version``, ``env_kwargs``; ``EnvRobosuite.serialize()`` of the image env);
- ``data/demo_0 … demo_{N-1}`` (contiguous, in seed order), attrs ``num_samples``, ``model_file`` (the
  scene MJCF) and ``seed`` (ours); datasets ``states`` (n, D) flat ``[time, qpos, qvel]`` *before* each
  action, ``actions`` (n, 7) delta OSC_POSE in [-1, 1], ``actions_abs`` (n, 7), ``rewards`` (n,),
  ``dones`` (n,) (done mode 2), ``obs/<key>`` and ``next_obs/<key>`` for every key robomimic returns;
- ``mask/train`` and ``mask/valid`` (90 / 10, byte strings).

Diffusion Policy's ``image_abs.hdf5`` is the same file with ``actions`` replaced by ``actions_abs``
(:func:`write_abs_copy`). Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from .recording import RECIPE_ATTR, EpisodeSource, demo_recipe, record_demos

__all__ = ["ABS_ACTION_KEY", "RobomimicHDF5Writer", "record_robomimic_demos", "split_train_valid", "write_abs_copy"]

ABS_ACTION_KEY = "actions_abs"
VALID_RATIO = 0.1
MASK_SEED = 0
# Observation datasets: the only ones --compress gzips (robomimic's own --compress does the same).
OBS_GROUPS = ("obs/", "next_obs/")


def split_train_valid(names: list[str], valid_ratio: float = VALID_RATIO, seed: int = MASK_SEED) -> tuple[list[str], list[str]]:
    """A seeded 90 / 10 split like robomimic's ``split_train_val.py`` (sorted demo names)."""
    n_valid = int(valid_ratio * len(names))
    perm = np.random.default_rng(seed).permutation(len(names))
    valid = sorted((names[i] for i in perm[:n_valid]), key=lambda s: int(s[5:]))
    train = sorted((names[i] for i in perm[n_valid:]), key=lambda s: int(s[5:]))
    return train, valid


class RobomimicHDF5Writer:
    """Writes episodes as ``data/demo_<i>`` of a robomimic HDF5 file that appears at ``path`` only when complete.

    An episode's ``data`` keys are dataset paths inside its demo group (``actions``, ``obs/agentview_image``,
    …) and its ``meta`` becomes the group's attributes. ``attrs`` are the ``data`` group's attributes;
    ``env_args`` (a dict) is stored as robomimic stores it, as JSON.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False, attrs: Mapping[str, Any] | None = None,
                 compress: bool = False) -> None:
        self.path = Path(path)
        self.overwrite, self.attrs = overwrite, dict(attrs or {})
        self.compression = "gzip" if compress else None
        self.names: list[str] = []
        self.n_steps = 0
        self._atomic: Any = None
        self._file: Any = None

    @property
    def n_episodes(self) -> int:
        """Episodes written so far."""
        return len(self.names)

    def __enter__(self) -> "RobomimicHDF5Writer":
        import h5py

        self._atomic = atomic_path(self.path, overwrite=self.overwrite, suffix=".hdf5")
        tmp = self._atomic.__enter__()
        try:
            self._file = h5py.File(tmp, "w")
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise
        self._file.create_group("data")
        return self

    def add_episode(self, data: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> None:
        """Append one demo; ``data["actions"]`` sets its ``num_samples``."""
        if "actions" not in data:
            raise KeyError(f"{self.path}: episode {self.n_episodes} has no 'actions' (it has {sorted(data)})")
        name = f"demo_{self.n_episodes}"
        group = self._file["data"].create_group(name)
        for key in sorted(data):
            group.create_dataset(key, data=data[key], compression=self.compression if key.startswith(OBS_GROUPS) else None)
        for key, value in (meta or {}).items():
            group.attrs[key] = value
        length = len(data["actions"])
        group.attrs["num_samples"] = length
        self.names.append(name)
        self.n_steps += length

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        try:
            if exc_type is None:
                self._finish()
        except BaseException:
            exc_type, exc, tb = sys.exc_info()
            raise
        finally:
            self._file.close()
            # The rename publishes the file only when nothing went wrong; otherwise the temporary goes.
            self._atomic.__exit__(exc_type, exc, tb)
        return None

    def _finish(self) -> None:
        data = self._file["data"]
        data.attrs["total"] = self.n_steps
        for key, value in self.attrs.items():
            data.attrs[key] = json.dumps(value, indent=4) if key == "env_args" else value
        train, valid = split_train_valid(self.names)
        mask = self._file.create_group("mask")
        mask.create_dataset("train", data=np.array(train, dtype="S"))
        mask.create_dataset("valid", data=np.array(valid, dtype="S"))


def record_robomimic_demos(
    out: str | os.PathLike,
    source: EpisodeSource,
    *,
    env_args: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    keep_failed: bool = False,
    overwrite: bool = False,
    compress: bool = False,
    progress: bool = True,
    attrs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Record the episodes of ``source`` into a robomimic HDF5 file at ``out``; returns ``record_demos``' summary.

    ``env_args``: the env's ``env_meta`` (or a callable giving it, called before the first episode, so a
    file whose env cannot be built fails at once). This is the ``generate`` step the robomimic task
    configs name, with ``source`` = ``envs.robomimic.demos.expert_demos``.
    """
    meta = env_args() if callable(env_args) else env_args
    file_attrs = {"env_args": dict(meta), "abs_action_key": ABS_ACTION_KEY, **(attrs or {})}
    recipe = demo_recipe(source, keep_failed=keep_failed)
    if recipe is not None:  # what recorded the file, with every setting (HDF5 attributes hold strings, not dicts)
        file_attrs.setdefault("generator", recipe["source"])
        file_attrs[RECIPE_ATTR] = json.dumps(recipe)
    return record_demos(out, source, keep_failed=keep_failed, overwrite=overwrite, attrs=file_attrs, progress=progress,
                        writer=partial(RobomimicHDF5Writer, compress=compress))


def write_abs_copy(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> None:
    """Diffusion Policy's ``image_abs.hdf5``: a copy of ``src`` whose ``actions`` are the absolute ones."""
    import h5py

    with atomic_path(dst, overwrite=overwrite, suffix=".hdf5") as tmp:
        with h5py.File(src, "r") as fin, h5py.File(tmp, "w") as fout:
            for key in fin:
                fin.copy(key, fout)
            for attr, value in fin.attrs.items():
                fout.attrs[attr] = value
            for name in fout["data"]:
                g = fout["data"][name]
                if ABS_ACTION_KEY not in g:
                    raise KeyError(f"{src}: data/{name} has no {ABS_ACTION_KEY!r}")
                abs_actions = g[ABS_ACTION_KEY][()]
                del g["actions"]
                g.create_dataset("actions", data=abs_actions)
