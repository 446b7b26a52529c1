"""One registry of pruning methods: each declares its options as a dataclass.

The CLI flags of ``prunus prune`` and the ``method:`` section of a YAML recipe are made
from these dataclasses (:func:`method_options`), so a new option is declared once, next to
its method, and is checked the same way wherever it comes from. The dataclass fields
mirror the method's keyword arguments (a test keeps them equal), so a library user can
call ``SLR(model, plan, rho=0.5)`` or ``build_method("slr", model, plan, SLROptions(rho=0.5))``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from prunus.errors import ConfigError
from prunus.methods.admm import ADMM
from prunus.methods.base import Closure, PruningMethod
from prunus.methods.magnitude import Magnitude
from prunus.methods.reweighted import Reweighted
from prunus.methods.slr import SLR
from prunus.plan.recipe import Plan


def _option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class RhoOptions:
    """The augmented-Lagrangian penalty of SLR and ADMM and how it grows."""

    rho: float = _option(0.1, "penalty weight rho (its start value under the budget schedule)")
    rho_factor: float = _option(1.0, "fixed schedule: rho *= this each round")
    rho_max: float | None = _option(None, "cap for rho (with SGD the budget schedule caps it at 1/lr)")
    tol: float = _option(1e-3, "budget schedule: distance ||W - Pi(W)|| / ||W|| to reach by the last round")
    max_growth: float = _option(10.0, "budget schedule: the most rho grows in one round")
    penalize: str = _option("removed", "'removed': the penalty acts on the entries the Z-step removed (kept weights "
                                       "train freely); 'all': the textbook W-step", choices=("removed", "all"))
    penalty_step: str = _option("loss", "'loss': the penalty is a loss term the optimizer steps on; 'proximal': its "
                                        "exact proximal map after each optimizer step (pulls at rate lr*rho even "
                                        "under Adam, which moves a penalised weight ~lr per step)",
                                choices=("loss", "proximal"))


@dataclass(frozen=True)
class SLROptions(RhoOptions):
    """Surrogate Lagrangian Relaxation (Gurevin et al. 2020): ADMM's penalty, multiplier steps from SLR's conditions."""

    s0: float = _option(0.01, "SLR initial multiplier step size")
    M: float = _option(300.0, "SLR step-size parameter M")
    r: float = _option(0.1, "SLR step-size parameter r")


@dataclass(frozen=True)
class ADMMOptions(RhoOptions):
    """ADMM pruning (Zhang et al. 2018): the baseline SLR is measured against."""


@dataclass(frozen=True)
class ReweightedOptions:
    """Reweighted group regularization (arXiv 2004.05531)."""

    lam: float = _option(1e-2, "penalty weight lambda (its start value under the budget schedule)")
    eps: float = _option(0.01, "eps of the reweighting, relative to the mean group energy")
    tol: float = _option(1e-3, "budget schedule: distance ||W - Pi(W)|| / ||W|| to reach by the last round")
    max_growth: float = _option(10.0, "budget schedule: the most rho (lambda) grows in one round")


@dataclass(frozen=True)
class MagnitudeOptions:
    """One-shot magnitude pruning at the start, then masked training."""

    norm: str = _option("l2", "rank groups by energy (l2) or L1 norm (l1, Li et al. 2017)", choices=("l1", "l2"))


@dataclass(frozen=True)
class GradualOptions(MagnitudeOptions):
    """Gradual magnitude pruning on a cubic ramp (Zhu & Gupta 2017); ranks by energy (l2) only."""


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its class, its options, and how often it rounds by default."""

    cls: type[PruningMethod]
    options: type
    #: batches between rounds unless the user says otherwise (None: once per epoch)
    update_every: int | None = None
    #: SLR/ADMM grow rho and reweighted lambda by the budget: they need to know how many rounds the run makes
    budget: bool = False
    #: its rounds may come every N batches (update_every); magnitude methods act once per epoch
    batch_rounds: bool = True
    fixed: dict[str, Any] = field(default_factory=dict)


#: SLR, ADMM and reweighted round every 100 batches: with a round per epoch a short budget gives the
#: penalty only a few steps to grow (benchmarks/slr_tuning.py found 100 batches best for SLR)
METHODS: dict[str, MethodSpec] = {
    "slr": MethodSpec(SLR, SLROptions, update_every=100, budget=True),
    "admm": MethodSpec(ADMM, ADMMOptions, update_every=100, budget=True),
    "reweighted": MethodSpec(Reweighted, ReweightedOptions, update_every=100, budget=True),
    "magnitude": MethodSpec(Magnitude, MagnitudeOptions, batch_rounds=False),
    "gradual": MethodSpec(Magnitude, GradualOptions, batch_rounds=False, fixed={"gradual": True}),
}


def method_options(name: str, given: dict[str, Any] | None = None, where: str = "--method") -> Any:
    """The options dataclass of method ``name`` filled from ``given``; an option of another method is an error."""
    if name not in METHODS:
        raise ConfigError(f"{where}: unknown method {name!r}; known: {', '.join(METHODS)}")
    cls = METHODS[name].options
    known = {f.name for f in dataclasses.fields(cls)}
    stray = sorted(set(given or {}) - known)
    if stray:
        allowed = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"{where} {name}: option(s) {', '.join(stray)} do not apply (its options: {allowed})")
    return cls(**(given or {}))


def all_option_fields() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Every option of every method once, with the methods that take it (for the CLI)."""
    out: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for name, spec in METHODS.items():
        for f in dataclasses.fields(spec.options):
            out.setdefault(f.name, (f, []))[1].append(name)
    return out


def method_from_recipe(section: Any, source: str) -> tuple[str, dict[str, Any]]:
    """A recipe's ``method:`` section (``{name: slr, rho: 0.5, ...}``) as a method name and its checked options."""
    if not isinstance(section, dict) or not isinstance(section.get("name"), str):
        raise ConfigError(f"{source}: 'method' must be a mapping with a 'name' ({', '.join(METHODS)}) and its options")
    options = {k: v for k, v in section.items() if k != "name"}
    checked = method_options(section["name"], options, f"{source}: method")
    for f in dataclasses.fields(checked):  # YAML gives numbers and strings: check their kinds, not their values
        value = getattr(checked, f.name)
        kind = float if str(f.type).startswith("float") else str
        if f.name in options and not (value is None or isinstance(value, kind)
                                      or kind is float and isinstance(value, int)
                                      and not isinstance(value, bool)):
            raise ConfigError(f"{source}: method option {f.name} must be a {kind.__name__}, got {value!r}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{source}: method option {f.name} must be one of {', '.join(choices)}, got {value!r}")
    return section["name"], options


def build_method(name: str, model: nn.Module, plan: Plan, options: Any = None, *, update_every: int | None = None,
                 rounds: int | None = None, closure: Closure | None = None) -> PruningMethod:
    """Method ``name`` on ``model`` by ``plan``; ``rounds`` is the budget of SLR/ADMM/reweighted (or gradual's ramp)."""
    spec = METHODS[name]
    if options is None or isinstance(options, dict):
        options = method_options(name, options)
    kwargs = {**dataclasses.asdict(options), **spec.fixed}
    if spec.budget or name == "gradual":
        kwargs["rounds"] = rounds
    if spec.batch_rounds:
        kwargs["update_every"] = update_every
    try:
        return spec.cls(model, plan, closure=closure, **kwargs)
    except (TypeError, ValueError) as e:  # a value of the wrong kind or out of range
        raise ConfigError(f"--method {name}: {e}") from None
