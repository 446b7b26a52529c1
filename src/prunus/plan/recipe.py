"""Which tensors to compress, with which structure, at which ratio.

A plan is a list of rules; each rule matches parameter names (a glob such as
``features.*.weight`` or a regular expression written ``re:...``) and gives a
structure (see :mod:`prunus.constraints.sparsity`) and a ratio (the fraction of entries that
become zero). A YAML recipe is the same thing in a file::

    # recipe.yaml
    global: false                      # true: all unstructured entries share one threshold
    prune:
      conv2.weight: {structure: filter, ratio: 0.5}
      "re:fc[12]\\.weight": {structure: unstructured, ratio: 0.95}

Resolving a plan against a model checks everything at once: every rule matches
at least one parameter, no parameter is matched twice, every ratio is in [0, 1),
and every structure fits its tensor. Each problem is one sentence naming the
recipe entry.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from prunus.constraints.sparsity import SparsitySet, group_scores
from prunus.constraints.structures import Structure, StructureError, num_pruned
from prunus.errors import ConfigError
from prunus.plan.layout import ChannelSet, Layout


@dataclass(frozen=True)
class Rule:
    """One recipe entry: a name pattern and what to do with the tensors it matches."""

    pattern: str
    structure: Structure
    ratio: float

    def matches(self, name: str) -> bool:
        if self.pattern.startswith("re:"):
            return re.fullmatch(self.pattern[3:], name) is not None
        return fnmatch.fnmatchcase(name, self.pattern)


@dataclass(frozen=True)
class Target:
    """A resolved rule: one parameter of one model."""

    name: str
    structure: Structure
    ratio: float

    @property
    def constraint(self) -> SparsitySet:
        return SparsitySet(self.structure, self.ratio)


@dataclass
class Plan:
    rules: list[Rule] = field(default_factory=list)
    global_unstructured: bool = False
    source: str = "plan"  # where the rules came from, for error messages
    #: the filter targets' channel sets: each is projected as one group, so the same channels go in all
    #: its parameters. Derived from the model by :func:`prunus.plan.coupling.couple_plan`, not written in recipes.
    coupled: list[ChannelSet] = field(default_factory=list)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "recipe") -> "Plan":
        if not isinstance(data, dict) or not isinstance(data.get("prune"), dict) or not data["prune"]:
            raise ConfigError(f"{source}: expected a mapping with a non-empty 'prune:' section "
                              f"of name: {{structure, ratio}}")
        unknown = sorted(set(data) - {"prune", "global", "method"})
        if unknown:
            raise ConfigError(f"{source}: unknown top-level field(s) {', '.join(unknown)} "
                              "(allowed: prune, global, method)")
        is_global = data.get("global", False)
        if not isinstance(is_global, bool):
            raise ConfigError(f"{source}: 'global' must be true or false, got {is_global!r}")
        rules = [_parse_rule(pattern, spec, source) for pattern, spec in data["prune"].items()]
        return cls(rules, is_global, source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "Plan":
        return cls.from_dict(read_recipe(path), source=str(path))

    @classmethod
    def uniform(
        cls,
        model: nn.Module,
        ratio: float,
        structure: str | Structure = "unstructured",
        *,
        skip_first: bool = True,
        skip_last: bool = True,
        global_unstructured: bool = False,
        round_to: int = 1,
    ) -> "Plan":
        """Every Conv2d/Linear weight the structure fits, at one ratio.

        The model's input layer and output layer are skipped by default: they hold few
        weights and cost the most accuracy per pruned weight, as is usual in the pruning
        literature. The *input layer* is the first Conv2d/Linear, unless the model embeds
        its input (its first Embedding/Conv2d/Linear module, in registration order, is an
        ``nn.Embedding``, as in transformers): the embedding is then the input
        layer, and it is never a pruning target here, so no Linear is skipped (BERT's first
        attention query is an ordinary layer). The *output layer* is the last Conv2d/Linear:
        a CNN's classifier, a transformer's classification or LM head. For speed, though,
        the first convolution matters: it runs at full resolution, so its output channels
        are the most expensive memory traffic of a CNN (``skip_first=False``).
        Filter-pruning the last layer would remove classes.

        ``round_to`` (filter and channel plans) rounds each layer's number of kept
        filters/channels to the nearest multiple (at least one multiple): vectorised
        convolution kernels work on blocks of channels, so round counts leave no
        partly filled blocks.
        """
        structure = _parse_structure(structure, "--structure")
        _check_ratio(ratio, "--ratio")
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
            raise ConfigError(f"--round-to must be a whole number of at least 1, got {round_to!r}")
        if round_to > 1 and structure.name not in ("filter", "channel"):
            raise ConfigError(f"--round-to applies to filter and channel pruning, not to {structure}")
        layers = prunable_weights(model)
        names_in_order = [name for name, _ in layers]
        first = next((m for m in model.modules() if isinstance(m, (nn.Embedding, nn.Conv2d, nn.Linear))), None)
        embeds_input = isinstance(first, nn.Embedding)  # registration order: a transformer's embeddings come first
        skipped = {names_in_order[0]} if skip_first and not embeds_input else set()
        skipped |= {names_in_order[-1]} if skip_last else set()
        shapes = dict(layers)
        layers = [(name, p) for name, p in layers if name not in skipped]
        names = []
        for name, p in layers:
            try:
                structure.check(p.shape)
                names.append(name)
            except StructureError:
                continue
        if not names:
            raise ConfigError(f"no layer of the model fits structure {structure} (the skipped first/last layers aside)")
        rules = [Rule(name, structure, _rounded_ratio(ratio, structure, shapes[name].shape, round_to))
                 for name in names]
        return cls(rules, global_unstructured, source=f"uniform {structure} {ratio}")

    # -- use ----------------------------------------------------------------------------
    def resolve(self, model: nn.Module) -> list[Target]:
        """The model's parameters this plan compresses, validated against their shapes."""
        params = dict(model.named_parameters())
        owner: dict[str, Rule] = {}
        targets: list[Target] = []
        for rule in self.rules:
            hits = [n for n in params if rule.matches(n)]
            if not hits:
                close = ", ".join(list(params)[:8])
                raise ConfigError(f"{self.source}: entry {rule.pattern!r} matches no parameter of the model "
                                  f"(some names: {close})")
            for name in hits:
                if name in owner:
                    raise ConfigError(f"{self.source}: parameter {name} is matched by both {owner[name].pattern!r} "
                                      f"and {rule.pattern!r}")
                owner[name] = rule
                try:
                    rule.structure.check(params[name].shape)
                    _check_feasible(rule.structure, rule.ratio, params[name].shape)
                except StructureError as e:
                    raise ConfigError(f"{self.source}: entry {rule.pattern!r} on {name} "
                                      f"{tuple(params[name].shape)}: {e}") from None
                targets.append(Target(name, rule.structure, rule.ratio))
        if self.global_unstructured:
            kinds = {(t.structure.name, t.ratio) for t in targets}
            if len(kinds) != 1 or next(iter(kinds))[0] != "unstructured":
                raise ConfigError(f"{self.source}: 'global: true' needs every entry to be unstructured "
                                  "with the same ratio")
        order = {n: i for i, n in enumerate(params)}
        return sorted(targets, key=lambda t: order[t.name])

    def layout(self, model: nn.Module) -> "Layout":
        """This plan resolved against ``model`` once: what every later stage takes."""
        targets = tuple(self.resolve(model))
        return Layout(targets, tuple(self.coupled), targets[0].ratio if self.global_unstructured else None, self.source)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "global": self.global_unstructured,
            "prune": {r.pattern: {"structure": str(r.structure), "ratio": r.ratio} for r in self.rules},
        }
        if self.coupled:
            out["coupled"] = [{"params": list(c.params), "ratio": c.ratio} for c in self.coupled]
        return out


def _rounded_ratio(ratio: float, structure: Structure, shape, round_to: int) -> float:
    """The ratio that keeps a multiple of ``round_to`` filters/channels, nearest to ``ratio``'s count."""
    if round_to == 1:
        return ratio
    groups = shape[0] if structure.name == "filter" else shape[1]
    kept = groups - num_pruned(ratio, groups)
    kept = min(max(round_to * math.floor(kept / round_to + 0.5), round_to), groups)
    return (groups - kept) / groups


def read_recipe(path: str | os.PathLike) -> Any:
    """A YAML recipe's content; an unreadable file or invalid YAML is one clear error.

    ``prune:`` and ``global:`` make the :class:`Plan`; ``method:`` (a name and its options) is read
    by ``prunus prune`` through :func:`prunus.methods.registry.method_from_recipe`.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"recipe {path} cannot be read ({e.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"recipe {path} is not valid YAML{where}") from None


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Weights of Conv2d and Linear layers, in model order: what pruning usually targets."""
    out = []
    for mod_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            out.append((f"{mod_name}.weight" if mod_name else "weight", module.weight))
    return out


def ratio_for_compression(compression: float) -> float:
    """A compression rate (dense weights / nonzero weights, e.g. 20) as a ratio of zeros (0.95)."""
    if not (math.isfinite(compression) and compression >= 1):
        raise ConfigError(f"--compression must be a number >= 1 (e.g. 20 for 20x), got {compression}")
    return 1.0 - 1.0 / compression


def _check_ratio(ratio: Any, where: str) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (0 <= ratio < 1):
        raise ConfigError(f"{where}: ratio must be a number in [0, 1) (the fraction of zeros), got {ratio!r}")
    return float(ratio)


def _parse_structure(spec: Any, where: str) -> Structure:
    if isinstance(spec, Structure):
        return spec
    try:
        return Structure.parse(spec)
    except StructureError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_feasible(structure: Structure, ratio: float, shape) -> None:
    """The ratio must leave something: a rule that zeroes a whole tensor is a mistake."""
    low = structure.min_ratio(shape)
    if ratio < low - 1e-9:
        raise StructureError(f"{structure} needs a ratio of at least {low:.3f}")
    groups = group_scores(torch.zeros(shape), structure).numel()
    if ratio > 0 and structure.name not in ("pattern", "nm") and num_pruned(ratio, groups) >= groups:
        raise StructureError(f"ratio {ratio} would remove all {groups} {structure} groups; use a smaller ratio")


def _parse_rule(pattern: Any, spec: Any, source: str) -> Rule:
    where = f"{source}: entry {pattern!r}"
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{source}: entry names must be non-empty strings, got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as e:
            raise ConfigError(f"{where} is not a valid regular expression ({e})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected {{structure: ..., ratio: ...}}, got {spec!r}")
    unknown = sorted(set(spec) - {"structure", "ratio"})
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: structure, ratio)")
    structure = _parse_structure(spec.get("structure", "unstructured"), where)
    fixed = structure.fixed_ratio()
    if "ratio" not in spec:
        if fixed is None:
            raise ConfigError(f"{where}: 'ratio' is missing")
        ratio = fixed
    else:
        ratio = _check_ratio(spec["ratio"], where)
        if fixed is not None and abs(ratio - fixed) > 1e-9:
            raise ConfigError(f"{where}: {structure} always prunes a ratio of {fixed:g}, got {ratio}")
    return Rule(pattern, structure, ratio)
