"""Reference banks: the shadow and LiRA reference models' outputs, trained once and shared across audits.

Shadow models and LiRA reference models depend only on the *membership split* and the
*undefended training recipe* (the attacker is non-adaptive: it trains them like the
undefended target), never on the weights of the checkpoint under audit.  Every defense
trained from one target (``prunus defend --init TARGET``) records the same split and the
same recipe, so the expensive part of their audits is identical: a :class:`ReferenceBank`
holds it once.

A bank stores *model outputs*, not attack results:

* :class:`ShadowOutputs`: the shadow models' logits on their own members and non-members
  (drawn from the attacker pool): what metric-attack thresholds and Shokri's attack learn from;
* :class:`LiraOutputs`: the LiRA reference models' logits on every audited example
  (the split's members, then its non-members) and which model trained on which example.

so every scoring option (per-class thresholds, global or per-example LiRA variance, ...)
stays free at audit time.  Logits are float32, exactly what the models output.

The :attr:`ReferenceBank.key` names what the outputs depend on (dataset, split digest,
architecture, training recipe, seed); :meth:`ReferenceBank.check` refuses a bank whose key or
model counts differ from what an audit needs, with one line naming each difference.

On disk a bank is a directory: ``bank.json`` (key, counts, timings), ``bank.npz`` (the arrays)
and the training runs of its models (``shadow/NN``, ``reference/NN``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunus.errors import ConfigError
from prunus.io import atomic_write, write_json_atomic
from prunus.privacy.attacks import ShadowAttack, lira_phi

BANK_FORMAT = 1
BANK_JSON = "bank.json"
BANK_NPZ = "bank.npz"
PART_DIRS = ("shadow", "reference")  # training runs of the bank's models, inside its directory


@dataclass
class ShadowOutputs:
    """Shadow models' outputs on their own members (``is_member``) and non-members, all models concatenated."""

    logits: np.ndarray  # (N, classes) float32
    labels: np.ndarray  # (N,) int64
    is_member: np.ndarray  # (N,) bool
    models: int
    train_size: int  # members per shadow model (as many non-members each)

    def __post_init__(self) -> None:
        self.logits = np.asarray(self.logits, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.is_member = np.asarray(self.is_member, dtype=bool)
        n = len(self.logits)
        if self.logits.ndim != 2 or self.labels.shape != (n,) or self.is_member.shape != (n,):
            raise ValueError(f"shadow outputs: logits {self.logits.shape}, labels {self.labels.shape} and "
                             f"is_member {self.is_member.shape} do not match")


@dataclass
class LiraOutputs:
    """LiRA reference models' logits on the audited examples and their inclusion matrix."""

    inclusion: np.ndarray  # (models, n) bool: model k trained on audited example i
    logits: np.ndarray  # (models, n, classes) float32
    indices: np.ndarray  # (n,) the audited examples: the split's members, then its non-members (train-split indices)

    def __post_init__(self) -> None:
        self.inclusion = np.asarray(self.inclusion, dtype=bool)
        self.logits = np.asarray(self.logits, dtype=np.float32)
        self.indices = np.asarray(self.indices, dtype=np.int64)
        if self.logits.ndim != 3 or self.logits.shape[:2] != self.inclusion.shape or \
                self.inclusion.shape[1:] != self.indices.shape:
            raise ValueError(f"LiRA outputs: inclusion {self.inclusion.shape}, logits {self.logits.shape} and "
                             f"indices {self.indices.shape} do not match")

    @property
    def models(self) -> int:
        return len(self.inclusion)

    def phi(self, labels) -> np.ndarray:
        """The reference models' logit-scaled confidences (models, n) for the audited examples' ``labels``."""

        return np.stack([lira_phi(lg.astype(np.float64), labels) for lg in self.logits])


@dataclass
class ReferenceBank:
    """Shadow and/or LiRA reference outputs for one split and recipe (see the module docstring)."""

    key: dict[str, Any]
    shadow: ShadowOutputs | None = None
    lira: LiraOutputs | None = None
    info: dict[str, Any] = field(default_factory=dict)  # per part: seconds, per-model test accuracy, environment
    path: Path | None = None  # the directory it was loaded from or saved to
    _attacks: dict[tuple, Any] = field(default_factory=dict, repr=False, compare=False)

    # -- compatibility ------------------------------------------------------------------------
    def check(self, key: dict[str, Any], *, shadow_models: int | None = None, reference_models: int | None = None,
              need_shadow: bool = False, need_lira: bool = False, where: str = "") -> None:
        """Raise one ConfigError line unless this bank was built for ``key`` with these model counts.

        ``need_*``: the part must be present (a bank held in memory cannot train what it lacks).
        """
        name = where or (f"reference bank {self.path}" if self.path else "the reference bank")
        diffs = _differences(self.key, key)
        if self.shadow is not None and shadow_models is not None and self.shadow.models != shadow_models:
            diffs.append(f"--shadow-models: bank {self.shadow.models} vs audit {shadow_models}")
        if self.lira is not None and reference_models is not None and self.lira.models != reference_models:
            diffs.append(f"--reference-models: bank {self.lira.models} vs audit {reference_models}")
        if diffs:
            raise ConfigError(f"{name} was built for another audit ({'; '.join(diffs)}); its models cannot stand in "
                              "for this target's, use another bank directory")
        parts = (("shadow models (metric and shadow attacks)", need_shadow, self.shadow),
                 ("LiRA reference models", need_lira, self.lira))
        missing = [what for what, need, part in parts if need and part is None]
        if missing:
            raise ConfigError(f"{name} holds no {' and no '.join(missing)}; build it with those attacks")

    def shadow_attack(self, *, per_class: bool, seed: int):
        """Shokri's attack classifier fitted on the shadow outputs; fitted once per (per_class, seed) and kept."""

        if self.shadow is None:
            raise ConfigError("the reference bank holds no shadow models")
        k = (per_class, seed)
        if k not in self._attacks:
            s = self.shadow
            self._attacks[k] = ShadowAttack(per_class=per_class, seed=seed).fit(s.logits.astype(np.float64), s.labels,
                                                                              s.is_member)
        return self._attacks[k]

    # -- disk ---------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``bank.npz`` then ``bank.json`` (atomically; the JSON is what marks a complete bank)."""

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"format": BANK_FORMAT, "key": self.key, "info": self.info}
        if self.shadow is not None:
            s = self.shadow
            arrays.update(shadow_logits=s.logits, shadow_labels=s.labels, shadow_is_member=s.is_member)
            meta["shadow"] = {"models": s.models, "train_size": s.train_size, "outputs": len(s.labels)}
        if self.lira is not None:
            r = self.lira
            arrays.update(lira_inclusion=r.inclusion, lira_logits=r.logits, lira_indices=r.indices)
            meta["lira"] = {"models": r.models, "examples": int(r.inclusion.shape[1])}
        with atomic_write(directory / BANK_NPZ, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)
        write_json_atomic(directory / BANK_JSON, meta)
        self.path = directory
        return directory

    @staticmethod
    def exists(directory: str | Path) -> bool:
        return (Path(directory) / BANK_JSON).is_file()

    @classmethod
    def load(cls, directory: str | Path) -> "ReferenceBank":
        """The bank saved in ``directory``; a one-line ConfigError when it is missing, corrupt or of another format."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / BANK_JSON).read_text())
            if meta.get("format") != BANK_FORMAT:
                raise ConfigError(f"reference bank {directory} has format {meta.get('format')!r}; this prunus reads "
                                  f"format {BANK_FORMAT}, rebuild it")
            with np.load(directory / BANK_NPZ, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            shadow = lira = None
            if "shadow" in meta:
                shadow = ShadowOutputs(arrays["shadow_logits"], arrays["shadow_labels"], arrays["shadow_is_member"],
                                       int(meta["shadow"]["models"]), int(meta["shadow"]["train_size"]))
            if "lira" in meta:
                lira = LiraOutputs(arrays["lira_inclusion"], arrays["lira_logits"], arrays["lira_indices"])
        except FileNotFoundError as e:
            missing = Path(e.filename).name
            raise ConfigError(f"{directory} is not a complete reference bank ({missing} is missing)") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"reference bank {directory} cannot be read ({type(e).__name__}: {e})") from None
        return cls(meta["key"], shadow, lira, dict(meta.get("info") or {}), directory)


def check_bank_dir(directory: str | Path, flag: str = "--reference-bank") -> None:
    """``directory`` must be a bank, not exist, be empty, or hold only a crashed build's part directories."""
    directory = Path(directory)
    if not directory.exists() or ReferenceBank.exists(directory):
        return
    if not directory.is_dir():
        raise ConfigError(f"{flag} {directory} is a file, not a reference bank directory")
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in PART_DIRS)
    if foreign:
        raise ConfigError(f"{flag} {directory} is neither a reference bank nor empty "
                          f"(it holds {', '.join(foreign[:3])}); choose a new directory")


def _differences(bank: Any, audit: Any, prefix: str = "") -> list[str]:
    """``name: bank X vs audit Y`` for every leaf where two JSON-like keys differ."""
    if isinstance(bank, dict) and isinstance(audit, dict):
        out: list[str] = []
        for k in sorted(set(bank) | set(audit), key=str):
            out += _differences(bank.get(k), audit.get(k), f"{prefix}{k}.")
        return out
    if bank == audit:
        return []
    return [f"{prefix.rstrip('.')}: bank {_short(bank)} vs audit {_short(audit)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
