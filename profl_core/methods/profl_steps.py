"""ProFL's steps and the sub-models they train: the plan of steps (shrink T..2, grow 1..T), and
the per-run structure that builds a step's sub-model from the server weights (the client half
of :class:`~profl_core.methods.profl.ProFL`).

Sub-model names: ``grow:t`` trains ``B_t`` and its output module ``OM_t`` on the frozen
``B_1 .. B_{t-1}``; ``shrink:t`` fits ``basic<t>`` (the first module of ``OM_{t-1}``) to
mimic ``B_t`` followed by ``OM_t`` (the teacher path). Server weights: ``block<i>.*``,
``head.*`` (the model) and ``om<t>.*`` for t = 1 .. T-1 (the output module of block t:
``basic<t+1> .. basic<T>`` then ``head``).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from profl_core.errors import ConfigError
from profl_core.fl.types import ServerState, SubModel
from profl_core.methods.module_cache import ModuleCache
from profl_core.models import BlockedModel


@dataclass(frozen=True)
class Phase:
    """One step of the plan: ``stage`` ("shrink"/"grow"), block ``step`` and the sub-model."""

    stage: str
    step: int
    submodel: str  # "grow:t" trains B_t + OM_t; "shrink:t" fits basic<t>

    @property
    def fitting(self) -> bool:
        """True for the basic-layer fit (distillation) half of a shrinking step."""
        return self.submodel.startswith("shrink:")


def plan(num_blocks: int, *, shrink: bool,
         fitted: Collection[int] | None = None) -> list[Phase]:
    """Shrink T..2 (train B_t, then fit basic<t> where ``fitted`` holds t; default: every t),
    then grow 1..T."""
    phases: list[Phase] = []
    if shrink:
        for t in range(num_blocks, 1, -1):
            phases.append(Phase("shrink", t, f"grow:{t}"))
            if fitted is None or t in fitted:
                phases.append(Phase("shrink", t, f"shrink:{t}"))
    phases += [Phase("grow", t, f"grow:{t}") for t in range(1, num_blocks + 1)]
    return phases


def parse_submodel(submodel: str) -> tuple[str, int]:
    """``"grow:2"`` -> ``("grow", 2)``."""
    kind, _, step = submodel.partition(":")
    if kind not in ("grow", "shrink") or not step.isdigit():
        raise ConfigError(f"profl: unknown sub-model {submodel!r}; use grow:t or shrink:t")
    return kind, int(step)


@dataclass(frozen=True)
class ProFLStructure:
    """A run's structure: the template modules (blocks, head, output modules ``om<t>``), the
    number of blocks T, the plan of steps, the parameter keys, what a basic-layer fit trains
    (:attr:`ProFLConfig.fit_scope`) and the clients' copies."""

    modules: nn.Module
    num_blocks: int
    phases: tuple[Phase, ...]
    param_keys: frozenset[str]
    fit_scope: str = "module"
    copies: ModuleCache = field(default_factory=ModuleCache)

    def om(self, t: int) -> list[str]:
        """Module names of the output module of block t (the real head for t = T)."""
        return output_module_names(self.modules, self.num_blocks, t)

    def paths(self, submodel: str) -> tuple[list[str], list[str], list[str], frozenset[str]]:
        """(prefix, student, teacher, trainable) of a sub-model."""
        kind, t = parse_submodel(submodel)
        if not 1 <= t <= self.num_blocks or (kind == "shrink" and t < 2):
            raise ConfigError(f"profl: sub-model {submodel!r} out of range")
        prefix = [f"block{i}" for i in range(1, t)]
        if kind == "grow":
            student = [f"block{t}", *self.om(t)]
            return prefix, student, [], frozenset(student)
        student = self.om(t - 1)
        teacher = [f"block{t}", *self.om(t)]
        fitted = {f"om{t - 1}.basic{t}"}
        if self.fit_scope == "module" or (self.fit_scope == "authors" and t == self.num_blocks):
            fitted = set(student)
        return prefix, student, teacher, frozenset(fitted)

    def build(self, weights: Mapping[str, Tensor], submodel: str, *, teacher: bool) -> SubModel:
        """The sub-model's modules (reused copies) loaded with ``weights``."""
        prefix, student, teach, trainable = self.paths(submodel)
        teach = teach if teacher else []
        modules = self.copies.load_named(self.modules, [*prefix, *student, *teach], weights)
        return SubModel(modules=modules, prefix=tuple(prefix), student=tuple(student),
                        teacher=tuple(teach), trainable=trainable)

    def active_vector(self, weights: Mapping[str, Tensor], phase: Phase) -> Tensor:
        """The parameters of the block whose effective movement ends ``phase`` (``B_t``, or
        ``basic<t>`` while fitting), flattened."""
        active = f"om{phase.step - 1}.basic{phase.step}" if phase.fitting else f"block{phase.step}"
        keys = sorted(k for k in self.param_keys if k.startswith(active + "."))
        return torch.cat([weights[k].detach().reshape(-1).float() for k in keys])


def output_module_names(modules: nn.Module, num_blocks: int, t: int) -> list[str]:
    """Module names, in ``modules``, of the output module ``om<t>`` of block t (its children:
    the stand-ins, then the head), or ``["head"]`` for the last block."""
    if t == num_blocks:
        return ["head"]
    return [f"om{t}.{child}" for child, _ in modules.get_submodule(f"om{t}").named_children()]


def blocked_copy(model: nn.Module, method: str) -> tuple[BlockedModel, nn.Module]:
    """A deep copy of ``model`` and a container of the copy's blocks ``block<i>`` and ``head``
    (named as in the server's state dict).

    Raises:
        ConfigError: ``model`` is not a BlockedModel.
    """
    if not isinstance(model, BlockedModel):
        raise ConfigError(f"{method} needs a BlockedModel")
    base = copy.deepcopy(model)
    container = nn.Module()
    for name in base.block_names():
        container.add_module(name, base.get_submodule(name))
    container.add_module("head", base.head)
    return base, container


def deepen_standins(output_module: nn.Module, depth: int) -> None:
    """Give every convolutional stand-in ``basic<k>`` of ``output_module`` ``depth - 1`` more
    3x3 conv + batch norm + ReLU layers at its output width (in place; others are left)."""
    for name, child in output_module.named_children():
        if not (name.startswith("basic") and isinstance(child, nn.Sequential)
                and len(child) and isinstance(child[0], nn.Conv2d)):
            continue
        width = child[0].out_channels
        for _ in range(depth - 1):
            child.extend([nn.Conv2d(width, width, 3, padding=1, bias=False),
                          nn.BatchNorm2d(width), nn.ReLU(inplace=True)])


def _first_conv_bn(module: nn.Module) -> tuple[str, nn.Conv2d, str, nn.BatchNorm2d] | None:
    """The first convolution of ``module`` and the batch norm right after it (names relative
    to ``module``), or None."""
    conv: tuple[str, nn.Conv2d] | None = None
    for name, child in module.named_modules():
        if conv is None and isinstance(child, nn.Conv2d):
            conv = (name, child)
        elif conv is not None:
            if isinstance(child, nn.BatchNorm2d) and child.num_features == conv[1].out_channels:
                return conv[0], conv[1], name, child
            if isinstance(child, nn.Conv2d):
                return None
    return None


def warm_start_keys(structure: ProFLStructure, t: int) -> dict[str, str]:
    """Stand-in key -> block key: where ``basic<t>`` can start as the first convolution and
    batch norm of ``B_t`` (same shapes, stride and padding); empty when they differ."""
    block = structure.modules.get_submodule(f"block{t}")
    basic_name = f"om{t - 1}.basic{t}"
    found = _first_conv_bn(block), _first_conv_bn(structure.modules.get_submodule(basic_name))
    if found[0] is None or found[1] is None:
        return {}
    (b_conv, b_c, b_bn, b_n), (s_conv, s_c, s_bn, s_n) = found
    same = (b_c.weight.shape == s_c.weight.shape and b_c.stride == s_c.stride
            and b_c.padding == s_c.padding and (b_c.bias is None) == (s_c.bias is None)
            and b_n.num_features == s_n.num_features)
    if not same:
        return {}
    pairs = ((b_conv, b_c.state_dict(), s_conv, s_c.state_dict()),
             (b_bn, b_n.state_dict(), s_bn, s_n.state_dict()))
    return {f"{basic_name}.{dst}.{key}": f"block{t}.{src}.{key}"
            for src, src_state, dst, dst_state in pairs for key in dst_state if key in src_state}


def structure_of(state: ServerState) -> ProFLStructure:
    """The :class:`ProFLStructure` of a ProFL state."""
    if not isinstance(state.structure, ProFLStructure):
        raise ConfigError("profl: this state has no ProFL structure; build it with init_state")
    return state.structure


def model_weights(state: ServerState) -> dict[str, Tensor]:
    """The trained model's own weights (``block<i>.*`` and ``head.*``), without output modules."""
    return {k: v for k, v in state.weights.items() if not k.startswith("om")}
