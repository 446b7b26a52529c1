"""Checkpoints that never execute code: safetensors for tensors, JSON for the rest.

A checkpoint is a directory::

    model.safetensors   the model's state dict, plain keys (readable by any safetensors tool)
    state.safetensors   every other tensor (optimizer buffers, RNG states, pruner state)
    meta.json           everything else: epoch, config, metrics, and the *skeleton* of each
                        state dict with its tensors replaced by references into state.safetensors

It is written into a temporary sibling directory and renamed into place, so a
reader sees either the whole checkpoint or none of it, even after a SIGKILL.
Loading uses ``safetensors`` and ``json`` only: nothing in a file can run code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from prunus.errors import CheckpointError, ConfigError

FORMAT = "prunus-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
META_FILE = "meta.json"

_TENSOR = "__tensor__"
_ITEMS = "__items__"  # a dict whose keys are not all strings (optimizer state uses ints)
_TUPLE = "__tuple__"


def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Return a JSON-able skeleton of ``obj``; its tensors go into ``tensors`` under ``prefix``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu").contiguous().clone()
        return {_TENSOR: prefix}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj):
            return {k: flatten_state(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        return {_ITEMS: [[k, flatten_state(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR}:
            return tensors[skeleton[_TENSOR]]
        if set(skeleton) == {_ITEMS}:
            return {k: unflatten_state(v, tensors) for k, v in skeleton[_ITEMS]}
        if set(skeleton) == {_TUPLE}:
            return tuple(unflatten_state(v, tensors) for v in skeleton[_TUPLE])
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def ensure_parent_dir(path: str | os.PathLike, what: str) -> None:
    """Create ``path``'s parent directories, or raise one :class:`~prunus.errors.ConfigError` line saying why not.

    ``what`` names the path for the user, e.g. ``"--out runs/x"``.  Called before long work so that a
    bad output path fails at once, not after the work is done.
    """

    parent = Path(path).absolute().parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} cannot be created: {existing} is a file, not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what} cannot be created ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{what} cannot be created: directory {parent} is not writable")


@contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on any error removed.

    Readers see the old file or the whole new one, never half a file, even after a SIGKILL (the
    leftover is a hidden ``.NAME.*`` file). ``suffix`` keeps the extension libraries key on (``.npz``).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to ``path`` through :func:`atomic_write`: readers never see half a file."""
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    path: str | os.PathLike,
    model_state: Mapping[str, torch.Tensor],
    states: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint directory at ``path`` (replacing an old one).

    ``states`` maps a section name (``"optimizer"``, ``"rng"``, ``"pruner"``...) to any
    nest of dicts/lists/tuples/tensors/scalars, such as an optimizer's ``state_dict()``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model_tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
    extra: dict[str, torch.Tensor] = {}
    skeletons = {name: flatten_state(s, name, extra) for name, s in (states or {}).items()}
    doc = {"format": FORMAT, "version": FORMAT_VERSION, **(meta or {}), "states": skeletons}

    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file(model_tensors, tmp / MODEL_FILE)
        save_file(extra, tmp / STATE_FILE)
        with open(tmp / META_FILE, "w") as f:
            json.dump(doc, f, indent=1)
        for name in (MODEL_FILE, STATE_FILE, META_FILE):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


class Checkpoint:
    """A loaded checkpoint: ``model_state``, ``meta`` and ``state(section)``."""

    def __init__(self, path: Path, model_state: dict[str, torch.Tensor], meta: dict, tensors: dict):
        self.path = path
        self.model_state = model_state
        self.meta = meta
        self._tensors = tensors

    def has_state(self, section: str) -> bool:
        return section in self.meta.get("states", {})

    def state(self, section: str) -> Any:
        if not self.has_state(section):
            raise CheckpointError(f"checkpoint {self.path} has no {section!r} state")
        return unflatten_state(self.meta["states"][section], self._tensors)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint directory; every problem becomes a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    for name in (MODEL_FILE, STATE_FILE, META_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
    try:
        with open(path / META_FILE) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint file {path / META_FILE} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / META_FILE} is not a prunus checkpoint (no format field)")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path / META_FILE} has checkpoint format version {meta.get('version')}; "
            f"this prunus reads version {FORMAT_VERSION}"
        )
    tensors = {}
    for name in (MODEL_FILE, STATE_FILE):
        try:
            tensors[name] = load_file(path / name)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint file {path / name} is corrupt ({e})") from None
    return Checkpoint(path, tensors[MODEL_FILE], meta, tensors[STATE_FILE])


def drop_checkpoint_state(path: str | os.PathLike, section: str) -> None:
    """Rewrite the checkpoint at ``path`` without its ``section`` state, atomically; the rest is kept unchanged.

    Why: a finished run kept to be read and never resumed does not need its optimizer buffers, which are as
    large as the model (momentum) or twice as large (Adam). ``model.safetensors`` comes out byte for byte the
    same, so a hash recorded of it still holds.
    """
    checkpoint = load_checkpoint(path)
    sections = [name for name in checkpoint.meta["states"] if name != section]
    meta = {k: v for k, v in checkpoint.meta.items() if k not in ("format", "version", "states")}
    save_checkpoint(path, checkpoint.model_state, {name: checkpoint.state(name) for name in sections}, meta)


# -- finding checkpoints in run directories ---------------------------------------------
CHECKPOINT_DIR = "checkpoints"


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run (incomplete ones never get their final name)."""
    ckdir = Path(run_dir) / CHECKPOINT_DIR
    found = sorted(p for p in ckdir.glob("epoch-*") if p.is_dir() and not p.name.startswith("."))
    return found[-1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run directory means its newest checkpoint; a checkpoint directory means itself."""
    path = Path(path)
    if (path / CHECKPOINT_DIR).is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"run directory {path} has no complete checkpoint yet")
        return found
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path
