"""Where the Hydra configs live, and composing them outside `@hydra.main` (tests, CLIs, notebooks)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONFIG_DIR_ENV = "DGGGAN_CONFIG_DIR"


class ConfigError(ValueError):
    """A config value that cannot mean what it says; the message names the key and the fix.

    Lives here, at the bottom of the package, so that data, callbacks and entry points can raise it without
    importing the config checks (`dgggan_pl.config_checks`) or Hydra.
    """


def config_dir() -> Path:
    """The `conf/` folder: `$DGGGAN_CONFIG_DIR` if set, else the one beside `src/` (editable install)."""
    path = Path(os.environ.get(CONFIG_DIR_ENV, Path(__file__).resolve().parents[2] / "conf"))
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(
            f"Hydra config folder not found at {path} (no train.yaml). Install the project editable "
            f"(`make install`, i.e. `pip install -e .`) from a checkout, or point {CONFIG_DIR_ENV} at its conf/ folder."
        )
    return path


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose `conf/<config_name>.yaml` with command-line style overrides, without running a Hydra app."""
    from hydra import compose, initialize_config_dir  # Hydra only where a config is composed

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))
