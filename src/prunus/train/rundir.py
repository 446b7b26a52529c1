"""Run directories: never overwrite a previous run, create one with a clear error."""

from __future__ import annotations

from pathlib import Path

from prunus.errors import CheckpointError, ConfigError


# -- the whole job from a config -----------------------------------------------------
def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite an existing run unless resuming it: nothing of a previous run is lost."""
    if resume:
        if not (run_dir / "config.json").is_file():
            raise CheckpointError(f"--resume {run_dir}: no run there (config.json is missing)")
    elif run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(f"--out {run_dir} already exists and is not empty; pass --resume {run_dir} to continue "
                          "that run or choose a new --out")


def create_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {run_dir} cannot be created ({e.strerror})") from None
