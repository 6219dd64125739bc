"""The one list of methods: name, config, builder, family and the memory kinds of their
sub-models.

Everything that enumerates methods derives from :data:`METHODS`: the ``profl train
--method`` choices and option flags, a suite's method validation and report order, the memory
section's sub-model cases (``[memory] methods``) and the memory kinds a case text may name
(:func:`memory_kinds`). A new method is one file and one :func:`register` call
(``docs/methods.md``).

Methods of other packages register through the entry-point group ``profl.methods`` (each
entry point names a :class:`MethodInfo`): :func:`load_plugins` registers them. The ``profl``
command calls it first, and so do its spawned suite and memory workers and the probes' child
processes (importing a plugin while this module is being imported could close an import
cycle, so it is never called at import).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

from profl_core.errors import ConfigError
from profl_core.fl.backend import FederatedData
from profl_core.fl.method import LocalTraining, Method
from profl_core.methods.allsmall import AllSmall, AllSmallConfig
from profl_core.methods.depthfl import DepthFL, DepthFLConfig
from profl_core.methods.exclusivefl import ExclusiveFL
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.fedavg_fit import FedAvgFit, FedAvgFitConfig
from profl_core.methods.fedepth import FeDepth, FeDepthConfig, group_steps
from profl_core.methods.fedrolex import FedRolex
from profl_core.methods.heterofl import HeteroFL, HeteroFLConfig
from profl_core.methods.inclusivefl import InclusiveFL
from profl_core.methods.neulite import NeuLite, NeuLiteConfig
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.methods.slt import SLT, SLTConfig

Family = Literal["progressive", "full", "width", "depth", "alternatives", "other"]


@dataclass(frozen=True)
class MemoryKind:
    """A kind of sub-model, the base of a memory case's text (``full``, ``grow:2``).

    Attributes:
        name: The case text's base (and the memory-plan key prefix of its sub-models).
        first_step: The kind's steps of a T-block model are ``first_step .. T``; None: the
            kind takes no step (``full``).
        step_set: T -> the kind's steps when they are not ``first_step .. T`` (FeDepth's
            block groups ``100 * a + b``).
    """

    name: str
    first_step: int | None = None
    step_set: Callable[[int], Sequence[int]] | None = None

    def steps(self, blocks: int) -> Sequence[int]:
        """The valid steps of a model with ``blocks`` blocks (empty: none is taken)."""
        if self.step_set is not None:
            return self.step_set(blocks)
        return range(0) if self.first_step is None else range(self.first_step, blocks + 1)


@dataclass(frozen=True)
class MethodInfo:
    """One registered method.

    Attributes:
        name: The name users write (``--method``, a suite's ``methods``).
        family: What it changes to fit a device: ``progressive`` (trains a part at a time),
            ``full`` (the whole model), ``width``, ``depth``, ``alternatives`` (the
            single-device tricks), or ``other``.
        config_class: Its config, a :class:`LocalTraining` dataclass.
        build: ``(config, data) -> Method``; ``data`` is the run's federated data, or None
            when only the method's memory plan is needed.
        kinds: The memory kinds of its sub-models (the memory section measures every step of
            each); the first method to declare a kind owns it (its default instance measures
            a case of that kind).
        widths: Its sub-models are the full model at width levels below 1 (the memory section
            measures those).
        fixed: Config values the name fixes (``profl-accum``'s ``accumulate``).
        renamed: Config keys taken from run settings of another name (config key -> setting).
    """

    name: str
    family: Family
    config_class: type[LocalTraining]
    build: Callable[[Any, FederatedData | None], Method]
    kinds: tuple[MemoryKind, ...] = ()
    widths: bool = False
    fixed: Mapping[str, Any] = field(default_factory=dict)
    renamed: Mapping[str, str] = field(default_factory=dict)

    def default(self, **settings: Any) -> Method:
        """The method with default settings (``rounds`` 1) and ``settings``, without data."""
        return self.build(self.config_class.from_dict(
            {"rounds": 1, **settings, **self.fixed}), None)


FULL = MemoryKind("full")
GROW, SHRINK = MemoryKind("grow", 1), MemoryKind("shrink", 2)
DEPTH, TRUNC = MemoryKind("depth", 1), MemoryKind("trunc", 1)
SLT_STAGE = MemoryKind("slt", 1)
FEDEPTH_GROUP = MemoryKind("fedepth", 1, step_set=group_steps)
NEULITE_STAGE = MemoryKind("neulite", 1)


def _width(cls: type[HeteroFL]) -> Callable[[Any, FederatedData | None], Method]:
    return lambda cfg, data: cls(cfg, client_data=None if data is None else data.clients)


def _depth(cls: type[DepthFL]) -> Callable[[Any, FederatedData | None], Method]:
    return lambda cfg, data: cls(cfg, test_data=None if data is None else data.test)


#: Method name -> its entry, in report order.
METHODS: dict[str, MethodInfo] = {}


def register(info: MethodInfo) -> MethodInfo:
    """Add a method to :data:`METHODS` (a ConfigError when the name is taken)."""
    if info.name in METHODS:
        raise ConfigError(f"method {info.name!r} is registered already; choose another name")
    METHODS[info.name] = info
    return info


def unregister(name: str) -> None:
    """Remove a method registered by :func:`register` (tests, plugins)."""
    METHODS.pop(name, None)


for _info in (
    MethodInfo("profl", "progressive", ProFLConfig, lambda cfg, data: ProFL(cfg),
               kinds=(GROW, SHRINK)),
    MethodInfo("profl-accum", "alternatives", ProFLConfig, lambda cfg, data: ProFL(cfg),
               kinds=(GROW, SHRINK), fixed={"accumulate": True}),
    MethodInfo("fedavg", "full", FedAvgConfig, lambda cfg, data: FedAvg(cfg), kinds=(FULL,)),
    MethodInfo("alllarge", "full", FedAvgConfig, lambda cfg, data: FedAvg(cfg),
               kinds=(FULL,)),
    MethodInfo("exclusivefl", "full", FedAvgConfig, lambda cfg, data: ExclusiveFL(cfg),
               kinds=(FULL,)),
    MethodInfo("allsmall", "width", AllSmallConfig, lambda cfg, data: AllSmall(cfg),
               kinds=(FULL,), widths=True),
    MethodInfo("fedavg-fit", "alternatives", FedAvgFitConfig,
               lambda cfg, data: FedAvgFit(cfg), kinds=(FULL,)),
    MethodInfo("heterofl", "width", HeteroFLConfig, _width(HeteroFL), kinds=(FULL,),
               widths=True),
    MethodInfo("fedrolex", "width", HeteroFLConfig, _width(FedRolex), kinds=(FULL,),
               widths=True),
    MethodInfo("depthfl", "depth", DepthFLConfig, _depth(DepthFL), kinds=(DEPTH,),
               renamed={"metrics_every": "eval_every"}),
    MethodInfo("inclusivefl", "depth", DepthFLConfig, _depth(InclusiveFL), kinds=(TRUNC,),
               renamed={"metrics_every": "eval_every"}),
    MethodInfo("slt", "progressive", SLTConfig, lambda cfg, data: SLT(cfg),
               kinds=(SLT_STAGE,)),
    MethodInfo("fedepth", "progressive", FeDepthConfig, lambda cfg, data: FeDepth(cfg),
               kinds=(FEDEPTH_GROUP,)),
    MethodInfo("neulite", "progressive", NeuLiteConfig, lambda cfg, data: NeuLite(cfg),
               kinds=(NEULITE_STAGE,)),
):
    register(_info)


#: The entry-point group of method plugins.
PLUGIN_GROUP = "profl.methods"


def load_plugins() -> None:
    """Register every method that installed packages declare in the entry-point group
    :data:`PLUGIN_GROUP` (``name = "module:ATTRIBUTE"``, a :class:`MethodInfo` of that name);
    those already registered are skipped.

    Raises:
        ConfigError: A plugin that cannot be imported, is not a MethodInfo, or whose name
            differs from its entry point's (one line naming it and the fix).
    """
    for point in entry_points(group=PLUGIN_GROUP):
        fix = f"fix or uninstall the package that declares {PLUGIN_GROUP} {point.name!r}"
        try:
            info = point.load()
        except Exception as err:
            raise ConfigError(f"method plugin {point.name} = {point.value!r}: cannot load it "
                              f"({type(err).__name__}: {err}); {fix}") from None
        if METHODS.get(point.name) is info:
            continue
        if not isinstance(info, MethodInfo) or info.name != point.name:
            raise ConfigError(f"method plugin {point.name} = {point.value!r}: not a MethodInfo "
                              f"named {point.name!r}; {fix}")
        register(info)


def method_info(name: str) -> MethodInfo:
    """The entry of ``name``, or a one-line ConfigError listing the registered ones."""
    if name not in METHODS:
        raise ConfigError(f"method={name!r}; use one of {', '.join(METHODS)}")
    return METHODS[name]


def memory_kinds() -> dict[str, MemoryKind]:
    """Every memory kind of the registered methods, in registry order."""
    out: dict[str, MemoryKind] = {}
    for info in METHODS.values():
        for kind in info.kinds:
            out.setdefault(kind.name, kind)
    return out


def kind_owner(kind: str) -> MethodInfo:
    """The method that owns memory kind ``kind``: the first registered to declare it (its
    default instance's memory plan holds the kind's sub-models)."""
    for info in METHODS.values():
        if any(k.name == kind for k in info.kinds):
            return info
    raise ConfigError(f"memory kind {kind!r}; use one of {', '.join(memory_kinds())}")


def check_methods(names: Sequence[str], where: str) -> tuple[str, ...]:
    """``names`` when each is registered, else a one-line ConfigError naming ``where``."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError(f"{where}: unknown method {unknown[0]!r}; use some of "
                          f"{', '.join(METHODS)}")
    return tuple(names)

