"""What an audit runs: the attacks by name and the reference/shadow model counts (``prunus audit``)."""

from __future__ import annotations

from dataclasses import dataclass

from prunus.errors import ConfigError
from prunus.privacy.attacks import METRIC_ATTACKS

ATTACKS = (*METRIC_ATTACKS, "shadow", "lira", "rmia")


ATTACK_GROUPS = {"metric": tuple(METRIC_ATTACKS), "all": ATTACKS}


def parse_attacks(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Expand ``metric``/``all`` and comma lists; unknown names are one ConfigError line."""
    out: list[str] = []
    for item in names:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            expanded = ATTACK_GROUPS.get(name, (name,))
            for n in expanded:
                if n not in ATTACKS:
                    raise ConfigError(f"--attack {name!r} is not an attack; choose from "
                                      f"{', '.join(ATTACKS)}, metric or all")
                if n not in out:
                    out.append(n)
    if not out:
        raise ConfigError("--attack needs at least one attack name")
    return tuple(out)


@dataclass
class AuditConfig:
    attacks: tuple[str, ...] = ("lira",)
    reference_models: int = 16
    shadow_models: int = 4
    per_class_thresholds: bool = False
    shadow_per_class: bool = False
    global_variance: bool | None = None  # None: global below 64 models per side (Carlini et al.)
    #: LiRA/RMIA reference models trained with the target's own defense (prunus.privacy.adaptive)
    adaptive: bool = False
    epochs: int | None = None  # reference/shadow training epochs (default: the target's recipe)
    seed: int = 0
    eval_batch_size: int = 1000

    def validate(self) -> "AuditConfig":
        self.attacks = parse_attacks(self.attacks)
        if self.needs_references and self.reference_models < 2:
            raise ConfigError(f"--reference-models must be at least 2 for LiRA and RMIA (IN and OUT models for every "
                              f"example), got {self.reference_models}")
        if self.reference_models < 1:
            raise ConfigError(f"--reference-models must be at least 1, got {self.reference_models}")
        if self.needs_shadows and self.shadow_models < 1:
            raise ConfigError(f"--shadow-models must be at least 1 for the metric and shadow attacks, "
                              f"got {self.shadow_models}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        return self

    @property
    def needs_references(self) -> bool:
        """LiRA and RMIA share the reference models (trained on random halves of the audited examples)."""
        return "lira" in self.attacks or "rmia" in self.attacks

    @property
    def needs_shadows(self) -> bool:
        return any(a in METRIC_ATTACKS or a == "shadow" for a in self.attacks)
