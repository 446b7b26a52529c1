"""Coupled channels: which output channels can only be pruned together, and a projection that respects it.

A residual addition makes the output channels of every convolution added into the
same stream one channel: channel ``c`` can leave the model only if it leaves all of
them (and the BatchNorms after them, and every layer that reads the stream).  The
same holds for a conv and its BatchNorm, a MobileNetV2 expansion and its depthwise
convolution, and a conv and the first Linear after a flatten (which reads ``H*W``
features per channel).  Per-tensor filter pruning ignores this, so a filter-pruned
ResNet often has zero filters that no tool can remove.

:func:`coupled_groups` finds the groups with Torch-Pruning's dependency graph
(traced on an example input); :func:`project_coupled` is the plan's filter
projection over whole groups, so everything it prunes is physically removable
(:mod:`prunus.deploy.surgery`).  Torch-Pruning is an optional dependency (the
``surgery`` extra).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from prunus._optional import require
from prunus.errors import ConfigError
from prunus.plan.projection import Masks, hard_prune
from prunus.plan.recipe import ChannelSet, Plan

__all__ = ["Consumer", "CoupledGroup", "coupled_groups", "couple_plan", "project_coupled"]

#: Torch-Pruning node types that only carry channels along (additions, activations, pooling, reshapes, concat/split).
_PASS_THROUGH = ("ELEMENTWISE", "RESHAPE", "CONCAT", "SPLIT", "UNBIND", "EXPAND", "SLICE")


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a group's channels: its input position ``index[k]`` (weight dim 1) is ``channel[k]``."""

    name: str
    index: tuple[int, ...] = field(repr=False)
    channel: tuple[int, ...] = field(repr=False)


@dataclass(frozen=True)
class CoupledGroup:
    """One set of channels that must be pruned together.

    ``producers``: Conv2d/Linear modules whose output channels (weight dim 0, bias) are the group's channels.
    ``depthwise``: depthwise convolutions on the channels (weight dim 0 is both input and output channel).
    ``norms``: BatchNorms on the channels.  ``consumers``: layers whose input channels are the group's.
    ``protected``: why the group cannot shrink (e.g. its channels are the model's output), else ``None``.
    ``root``: the module Torch-Pruning starts from when it removes the group's channels.
    """

    channels: int
    producers: tuple[str, ...]
    depthwise: tuple[str, ...]
    norms: tuple[str, ...]
    consumers: tuple[Consumer, ...]
    protected: str | None
    root: str

    @property
    def parameters(self) -> tuple[str, ...]:
        """Names of the parameters whose dim 0 is the group's channel axis (they are zeroed/removed together)."""
        names = []
        for module in self.producers + self.depthwise + self.norms:
            names += [f"{module}.weight", f"{module}.bias"]
        return tuple(names)


# -- building the groups -------------------------------------------------------------------------------------------


def _tp():
    return require("torch_pruning", "physical channel removal (prunus surgery)")


def dependency_graph(model: nn.Module, example_input: torch.Tensor):
    """Torch-Pruning's dependency graph of ``model``, traced on one input (it leaves ``model`` in eval mode)."""
    tp = _tp()
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input[:1], verbose=False)


def _unsupported_conv(module: nn.Module, name: str) -> str | None:
    """Why prunus leaves a group with this convolution alone (grouped or transposed), else None."""
    if not isinstance(module, nn.modules.conv._ConvNd):
        return None
    if module.transposed:
        return f"{name} is a transposed convolution, which prunus does not shrink"
    if module.groups > 1:
        return f"{name} is a grouped convolution (groups={module.groups}), which prunus does not shrink"
    return None


def groups_of_graph(dg, model: nn.Module) -> list[CoupledGroup]:
    """The coupled groups of a dependency graph built on ``model``, one per set of coupled output channels."""
    tp = _tp()
    fn = tp.pruner.function
    names = {m: n for n, m in model.named_modules()}
    groups = []
    for group in dg.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        producers, depthwise, norms, consumers = [], [], [], []
        protected = None
        root = group[0].dep.target.module
        for item in group.items:
            dep, node = item.dep, item.dep.target
            module, handler = node.module, dep.handler
            name = names.get(module)
            if handler in (fn.prune_conv_out_channels, fn.prune_linear_out_channels):
                protected = protected or _unsupported_conv(module, name)
                producers.append(name)
            elif handler == fn.prune_depthwise_conv_out_channels:
                depthwise.append(name)
            elif handler == fn.prune_batchnorm_out_channels:
                norms.append(name)
            elif handler in (fn.prune_conv_in_channels, fn.prune_linear_in_channels):
                protected = protected or _unsupported_conv(module, name)
                index, channel = tuple(int(i) for i in item.idxs), tuple(int(r) for r in item.root_idxs)
                consumers.append(Consumer(name, index, channel))
            elif node.type == tp.ops.OPTYPE.OUTPUT:
                protected = protected or "its channels are the model's output"
            elif node.type.name not in _PASS_THROUGH:
                what = name or type(module).__name__
                protected = protected or f"{what} ({node.type.name}) is a layer prunus does not shrink"
            # a node whose output nothing reads is the model's output: its channels cannot be removed
            if not node.outputs and handler not in (fn.prune_conv_in_channels, fn.prune_linear_in_channels):
                protected = protected or "its channels are the model's output"
        if not consumers and protected is None:
            protected = "no convolution or linear layer reads its channels"
        groups.append(
            CoupledGroup(
                channels=dg.get_out_channels(root),
                producers=tuple(dict.fromkeys(producers)),
                depthwise=tuple(dict.fromkeys(depthwise)),
                norms=tuple(dict.fromkeys(norms)),
                consumers=tuple(consumers),
                protected=protected,
                root=names[root],
            )
        )
    order = {n: i for i, n in enumerate(names.values())}
    return sorted(groups, key=lambda g: min(order[n] for n in g.producers + g.depthwise + (g.root,)))


def coupled_groups(model: nn.Module, example_input: torch.Tensor) -> list[CoupledGroup]:
    """The groups of output channels of ``model`` that must be pruned together (traced on ``example_input``).

    ``model`` is not modified (the graph is traced on a copy).
    """
    work = copy.deepcopy(model)
    for p in work.parameters():
        p.requires_grad_(True)
    return groups_of_graph(dependency_graph(work, example_input), work)


# -- the coupled plan ----------------------------------------------------------------------------------------------


def couple_plan(model: nn.Module, plan: Plan, example_input: torch.Tensor) -> Plan:
    """``plan`` with one :class:`~prunus.plan.recipe.ChannelSet` per coupled group that holds a planned filter tensor.

    The set holds every parameter on the group's channels: its producers' weights and biases
    (planned or not: a residual channel can only leave every conv added into it at once, so a
    ResNet stem that ``Plan.uniform`` skips is constrained with its stage), depthwise convs, and
    BatchNorms' gamma and beta. SLR/ADMM/reweighted then constrain all of them while training,
    and :func:`prunus.plan.projection.hard_prune` zeroes the same channels in all of them at the end, so
    the hard-prune removes what the method drove to zero and everything pruned is physically
    removable. Plans without filter targets come back unchanged. Every problem (a group that
    cannot shrink, two ratios on one group) is found here, before anything is modified.
    """
    targets = plan.resolve(model)
    filters = [t for t in targets if t.constraint.removes_filters]
    if not filters:
        return plan
    params = dict(model.named_parameters())
    groups = coupled_groups(model, example_input)
    owner = {f"{m}.weight": g for g in groups for m in g.producers + g.depthwise}
    ratio_of: dict[int, tuple[float, str]] = {}  # id(group) -> (ratio, first tensor that set it)
    for t in filters:
        g = owner.get(t.name)
        if g is None:
            raise ConfigError(f"{plan.source}: {t.name} is not an output-channel weight the example input reaches, "
                              "so its filters cannot be pruned as a coupled group")
        if g.protected:
            raise ConfigError(f"{plan.source}: filters of {t.name} cannot be removed ({g.protected}); "
                              "leave it out of the filter plan")
        seen = ratio_of.setdefault(id(g), (t.ratio, t.name))
        if abs(seen[0] - t.ratio) > 1e-12:
            raise ConfigError(f"{plan.source}: {seen[1]} (ratio {seen[0]}) and {t.name} (ratio {t.ratio}) share their "
                              "output channels (a residual add, BN or depthwise coupling); give them one ratio")
    claimed = {t.name for t in targets if not t.constraint.removes_filters}
    sets = []
    for g in groups:
        if id(g) in ratio_of:
            names = tuple(n for n in g.parameters if n in params and not _constant_kept(model, n))
            clash = sorted(claimed.intersection(names))
            if clash:
                raise ConfigError(f"{plan.source}: {clash[0]} has another structure in the plan, "
                                  "but its output channels "
                                  f"are pruned with {ratio_of[id(g)][1]}'s filters; leave it out or prune it by filter")
            sets.append(ChannelSet(names, ratio_of[id(g)][0]))
    return dataclasses.replace(plan, coupled=sets)


def _constant_kept(model: nn.Module, name: str) -> bool:
    """True for the bias of a norm whose pruned channel keeps emitting its bias (``keeps_pruned_constant``).

    In a binary network a pruned channel is a constant bit plane after ``sign`` that the BCNN
    engine folds into the next layer, so it costs nothing; its BatchNorm's beta then stays free
    (it sets which constant) and only gamma is driven to zero with the filter. Shrinking gamma
    and beta together would change nothing that ``sign`` sees until both reach exactly zero.
    """
    module, _, leaf = name.rpartition(".")
    return leaf == "bias" and getattr(model.get_submodule(module), "keeps_pruned_constant", False)


@torch.no_grad()
def project_coupled(model: nn.Module, plan: Plan, example_input: torch.Tensor) -> Masks:
    """Hard-prune ``model`` by ``plan`` in place, pruning filters per coupled group; return the masks.

    Every group that holds a planned ``filter`` tensor is pruned as a whole, at that ratio
    (:func:`couple_plan`): ``num_pruned(ratio, channels)`` channels are zeroed in all its
    producers (weights and biases), depthwise convolutions and BatchNorms (gamma and beta, so
    a pruned channel is exactly 0 after BN). Channels are ranked by their summed squared norm
    over all those parameters, the exact Euclidean projection of the stacked parameters onto
    "at most k channels alive" (ties as in :mod:`prunus.constraints.sparsity`). Other structures are
    projected per tensor. The masks cover every zeroed tensor, ready for
    :class:`prunus.harden.keepers.MaskKeeper`; a plan that cannot be applied changes nothing.
    """
    return hard_prune(model, couple_plan(model, plan, example_input).layout(model))
