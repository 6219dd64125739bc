"""One training configuration to measure (DESIGN §3 TrainingCase) and how one step of it runs.

A :class:`TrainingCase` names a model spec, a *kind* of sub-model and its step, a batch size,
the optimizer and the dtype. :func:`build_step` turns it into a :class:`PreparedStep` whose
:meth:`PreparedStep.run` executes exactly one training step. Memory is always measured on the
*second* step, after a warm-up step has created the optimizer state.

Semantics of one training step, by kind (T = number of blocks, steps are 1-based):

``full``
    Every block and the head are trainable. Forward, cross-entropy, backward,
    ``optimizer.step()``, ``optimizer.zero_grad(set_to_none=True)``.

``grow:t`` (t = 1..T, ProFL's growing step t)
    Blocks 1..t-1 are frozen (``requires_grad=False``; in eval mode when
    ``frozen_bn_eval``) and run under ``torch.no_grad()``, so they keep no activations and get
    no gradients. Block t and ``model.output_module(t)`` are trainable (for t == T the output
    module is the model's head). Cross-entropy loss. Blocks t+1..T do not exist on the client
    and are not built into the step.

``shrink:t`` (t = T..2, the distillation half of ProFL's shrinking step t)
    Blocks 1..t-1 are the frozen shared prefix, run under ``no_grad``. The teacher is the real
    block t followed by the output module of step t, frozen and run under ``no_grad``; it gives
    the teacher logits. The student is the basic layer ``basic<t>`` (taken from
    ``model.output_module(t-1)``) followed by the *same* frozen output module of step t (ProFL's
    output module of step t-1 is ``basic<t>`` plus the output module of step t, so the two
    share weights). Loss = soft-target distillation at temperature ``DISTILL_TEMPERATURE``
    (ProFL's default, :func:`~profl_core.models.exits.soft_target_loss`); only ``basic<t>`` is
    trainable.
    The other half of shrinking step t, training the real block t with the prefix frozen, has
    exactly the shape of ``grow:t`` and is measured as ``grow:t``.

The optimizer is SGD with momentum 0.9 and weight decay 5e-4 (the ProFL authors' setting, one
momentum buffer per trainable parameter) or Adam (two moments and a step count). Inputs are
synthetic random tensors of the case's shape: memory does not depend on their values.

``depth:k`` (k = 1..T, DepthFL's depth-k sub-model)
    Blocks 1..k, each followed by its exit (:mod:`profl_core.models.exits`: ProFL's output
    module of step i for i < T, the head for i == T), everything trainable; the loss is
    DepthFL's mutual self-distillation (:func:`~profl_core.models.exits.mutual_distillation_loss`,
    weight 1). Segments are ``block1, exit1, block2, ...``; the deepest exit is ``output``.

``trunc:k`` (k = 1..T, InclusiveFL's depth-k sub-model as DepthFL's authors re-implemented it)
    Blocks 1..k and only the exit after block k, everything trainable, cross-entropy.
    ``trunc:T`` trains the same modules as ``full``.

Width-scaled sub-models (HeteroFL, FedRolex, AllSmall) are ``full`` cases of a spec with
``ModelSpec.width < 1``. Further families plug in through :data:`KINDS`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from profl_core.errors import ConfigError, field_names, reject_unknown_keys
from profl_core.models import BlockedModel, ModelSpec, build_model, check_model_name, native_spec
from profl_core.models.exits import (
    DISTILL_TEMPERATURE,
    build_exit,
    exit_name,
    mutual_distillation_loss,
    soft_target_loss,
)

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
SGD_LR, SGD_MOMENTUM, SGD_WEIGHT_DECAY = 0.01, 0.9, 5e-4
ADAM_LR = 1e-3


@functools.lru_cache(maxsize=64)
def num_blocks(spec: ModelSpec) -> int:
    """T for a model spec, from a model built on the meta device (nothing is allocated)."""
    with unset_fake_temporarily(), torch.device("meta"):
        return build_model(spec).num_blocks


class StepObserver:
    """Callbacks a :class:`PreparedStep` makes while it runs; the base class does nothing.

    Probes subclass it to learn block boundaries. ``after_block`` gets the block's output so an
    observer can hook the start of that block's backward (only when the output requires grad).
    """

    def before_block(self, name: str) -> None:
        """A block's forward is about to run."""

    def after_block(self, name: str, output: Tensor) -> None:
        """A block's forward returned ``output``."""

    def before_loss(self) -> None:
        """The loss is about to be computed from the logits."""

    def before_backward(self) -> None:
        """``loss.backward()`` is about to run."""

    def before_optimizer(self) -> None:
        """``optimizer.step()`` is about to run (backward is done)."""

    def before_zero_grad(self) -> None:
        """``optimizer.zero_grad(set_to_none=True)`` is about to run."""

    def after_step(self) -> None:
        """The step is over."""


LOSS_SEGMENT, OPTIMIZER_SEGMENT = "loss", "optimizer"


class SegmentObserver(StepObserver):
    """Turns step callbacks into ``(block, phase)`` segments and named checkpoints.

    Forward segments start at ``before_block``; ops between the last block and backward belong
    to ``("loss", "forward")``. Backward starts in ``("loss", "backward")``; a block's backward
    segment starts when the gradient of its output is ready, through a tensor hook registered
    only on outputs that require grad (so blocks run under ``no_grad`` have no backward
    segment and no hook ever touches a ``requires_grad=False`` tensor). ``optimizer.step()``
    and ``zero_grad`` form ``("optimizer", "optimizer")``. Checkpoints are ``after_forward``,
    ``after_backward``, ``after_optimizer`` and ``after_step``.
    """

    def enter_segment(self, block: str, phase: str) -> None:
        """What follows belongs to ``(block, phase)``."""

    def checkpoint(self, name: str) -> None:
        """A named point of the step was reached."""

    def before_block(self, name: str) -> None:
        """Enter the block's forward segment."""
        self.enter_segment(name, "forward")

    def after_block(self, name: str, output: Tensor) -> None:
        """Hook the start of the block's backward when its output is in the graph."""
        if output.requires_grad and output.grad_fn is not None:

            def started(grad: Tensor) -> None:
                self.enter_segment(name, "backward")

            output.register_hook(started)

    def before_loss(self) -> None:
        """Enter the loss's forward segment."""
        self.enter_segment(LOSS_SEGMENT, "forward")

    def before_backward(self) -> None:
        """Checkpoint ``after_forward``; enter the loss's backward segment."""
        self.checkpoint("after_forward")
        self.enter_segment(LOSS_SEGMENT, "backward")

    def before_optimizer(self) -> None:
        """Checkpoint ``after_backward``; enter the optimizer segment."""
        self.checkpoint("after_backward")
        self.enter_segment(OPTIMIZER_SEGMENT, "optimizer")

    def before_zero_grad(self) -> None:
        """Checkpoint ``after_optimizer``."""
        self.checkpoint("after_optimizer")

    def after_step(self) -> None:
        """Checkpoint ``after_step``."""
        self.checkpoint("after_step")


@dataclass(frozen=True)
class Segment:
    """One module the step runs, under the name the probes attribute its memory to.

    Attributes:
        name: ``block<i>``, ``output``, ``teacher_output`` or ``basic<t>``.
        module: the module (two segments may share one, e.g. shrink's output module).
        trainable: whether its parameters are trained in this step.
        grad: whether it runs with autograd enabled (False: under ``torch.no_grad()``).
    """

    name: str
    module: nn.Module
    trainable: bool
    grad: bool


@dataclass(eq=False, kw_only=True)
class PreparedStep:
    """Everything one training step needs, built by :func:`build_step`.

    Attributes:
        case: the case this step trains.
        segments: the modules in forward order with their attribution names.
        optimizer: over the trainable parameters only.
        inputs: the input batch.
        labels: class labels (cross-entropy kinds) or ``None``.
        forward: runs the forward pass with an observer and returns the loss.
    """

    case: TrainingCase
    segments: tuple[Segment, ...]
    optimizer: torch.optim.Optimizer
    inputs: Tensor
    labels: Tensor | None
    forward: Callable[[PreparedStep, StepObserver], Tensor] = field(repr=False)

    @property
    def block_names(self) -> tuple[str, ...]:
        """Attribution names in forward order (``block1`` .. , ``output``)."""
        return tuple(s.name for s in self.segments)

    def modules(self) -> list[nn.Module]:
        """The distinct modules of the step, in forward order."""
        seen: dict[int, nn.Module] = {}
        for segment in self.segments:
            seen.setdefault(id(segment.module), segment.module)
        return list(seen.values())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates."""
        return [p for m in self.modules() for p in m.parameters() if p.requires_grad]

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Parameters that stay fixed in this step."""
        return [p for m in self.modules() for p in m.parameters() if not p.requires_grad]

    def run(self, observer: StepObserver | None = None) -> None:
        """Execute one training step: forward, loss, backward, optimizer step, zero_grad."""
        obs = observer if observer is not None else StepObserver()
        loss = self.forward(self, obs)
        obs.before_backward()
        loss.backward()
        obs.before_optimizer()
        self.optimizer.step()
        obs.before_zero_grad()
        self.optimizer.zero_grad(set_to_none=True)
        obs.after_step()


@dataclass(frozen=True)
class Kind:
    """A family of sub-models: how its steps are numbered and how a step is built.

    Attributes:
        name: the case text prefix (``full``, ``grow``, ``shrink``).
        steps: the valid steps for a model with T blocks (empty: the kind takes no step).
        prepare: builds the step's segments and forward function from a built model.
    """

    name: str
    steps: Callable[[int], range]
    prepare: Callable[[BlockedModel, TrainingCase], tuple[tuple[Segment, ...], ForwardFn]]


ForwardFn = Callable[[PreparedStep, StepObserver], Tensor]


@dataclass(frozen=True, kw_only=True)
class TrainingCase:
    """One training configuration to measure or run.

    Attributes:
        model: the model spec (width multiplier included).
        kind: a key of :data:`KINDS` (``full``, ``grow``, ``shrink``, ``depth``, ``trunc``).
        step: 1-based step (or depth) for every kind but ``full``; ``None`` for ``full``.
        batch_size: samples per step.
        optimizer: ``sgd`` (momentum 0.9, weight decay 5e-4) or ``adam``.
        dtype: parameter and input dtype name (``float32``, ``bfloat16``, ...).
        frozen_bn_eval: put frozen blocks in eval mode (batch-norm statistics stay fixed).
    """

    model: ModelSpec
    kind: str
    step: int | None = None
    batch_size: int
    optimizer: str = "sgd"
    dtype: str = "float32"
    frozen_bn_eval: bool = True

    def __post_init__(self) -> None:
        check_model_name(self.model.name)
        if self.kind not in KINDS:
            raise ConfigError(f"case kind={self.kind!r}; use one of {', '.join(KINDS)}")
        check_step(self.kind, self.step, num_blocks(self.model))
        if self.batch_size < 1:
            raise ConfigError(f"case batch_size={self.batch_size}; use 1 or more")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"case optimizer={self.optimizer!r}; use one of {OPTIMIZERS}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"case dtype={self.dtype!r}; use one of {', '.join(DTYPES)}")

    @property
    def label(self) -> str:
        """``full``, ``grow:2``, ``shrink:3``."""
        return self.kind if self.step is None else f"{self.kind}:{self.step}"

    @property
    def key(self) -> str:
        """A stable unique name, e.g. ``resnet18/grow:2/bs64`` or ``resnet18@w0.5/full/bs64``.

        Non-default spec fields and options are appended so distinct cases never collide.
        """
        spec, native = self.model, native_spec(self.model.name)
        model = spec.name
        if spec.width != 1.0:
            model += f"@w{spec.width:g}"
        if spec.num_classes != native.num_classes:
            model += f"@k{spec.num_classes}"
        if spec.input_shape != native.input_shape:
            model += "@in" + "x".join(map(str, spec.input_shape))
        parts = [model, self.label, f"bs{self.batch_size}"]
        if self.optimizer != "sgd":
            parts.append(self.optimizer)
        if self.dtype != "float32":
            parts.append(self.dtype)
        if not self.frozen_bn_eval:
            parts.append("bn-train")
        return "/".join(parts)

    def params(self) -> dict[str, Any]:
        """Every field as plain JSON-able values, for hashing and result records."""
        out = asdict(self)
        out["model"] = asdict(self.model)
        return out

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> TrainingCase:
        """Inverse of :meth:`params`; raises ConfigError on unknown keys."""
        reject_unknown_keys(data, field_names(cls), "training case")
        values = dict(data)
        if "model" not in values:
            raise ConfigError("training case: missing key 'model'; write it with params()")
        values["model"] = ModelSpec.from_dict(dict(values["model"]), where="training case model")
        return cls(**values)


def check_step(kind: str, step: int | None, blocks: int) -> None:
    """Raise a one-line ConfigError when ``step`` is invalid for ``kind`` and T = ``blocks``."""
    valid = KINDS[kind].steps(blocks)
    if len(valid) == 0:
        if step is not None:
            raise ConfigError(f"case {kind}: step={step}; {kind} takes no step, write {kind!r}")
        return
    if step is None or step not in valid:
        raise ConfigError(
            f"case {kind}: step={step}; use {kind}:T with T in {valid.start}..{valid.stop - 1}"
        )


_CASE_RE = re.compile(r"^([a-z]+)(?::(-?\d+))?$")


def parse_case(text: str, *, blocks: int | None = None) -> tuple[str, int | None]:
    """Parse ``full``, ``grow:T`` or ``shrink:T`` into ``(kind, step)``.

    Args:
        text: the case text.
        blocks: T of the model; when given, the step is checked against it.

    Raises:
        ConfigError: on unknown kinds, malformed text or a step out of range.
    """
    match = _CASE_RE.match(text.strip())
    if match is None or match.group(1) not in KINDS:
        raise ConfigError(f"case {text!r}: not a case; write full or KIND:T, KIND one of "
                          f"{', '.join(k for k in KINDS if k != 'full')}")
    kind, raw = match.group(1), match.group(2)
    step = None if raw is None else int(raw)
    if blocks is not None:
        check_step(kind, step, blocks)
    elif step is not None and step < 1:
        raise ConfigError(f"case {text!r}: step={step}; steps are 1-based")
    elif step is None and len(KINDS[kind].steps(2)) > 0:
        raise ConfigError(f"case {text!r}: {kind} needs a step; write {kind}:T")
    elif step is not None and len(KINDS[kind].steps(2)) == 0:
        raise ConfigError(f"case {text!r}: {kind} takes no step; write {kind}")
    return kind, step


def all_cases(spec: ModelSpec, *, batch_size: int, **options: Any) -> list[TrainingCase]:
    """``full`` then every ``grow`` and ``shrink`` step of a model, in ProFL's order."""
    blocks = num_blocks(spec)
    cases = [TrainingCase(model=spec, kind="full", batch_size=batch_size, **options)]
    for t in range(blocks, 1, -1):
        cases.append(TrainingCase(model=spec, kind="shrink", step=t, batch_size=batch_size,
                                  **options))
    for t in range(1, blocks + 1):
        cases.append(TrainingCase(model=spec, kind="grow", step=t, batch_size=batch_size,
                                  **options))
    return cases


# --- building steps ---------------------------------------------------------------------------


def _freeze(module: nn.Module, *, eval_mode: bool) -> nn.Module:
    module.requires_grad_(False)
    module.train(not eval_mode)
    return module


def _run_segments(
    segments: tuple[Segment, ...], h: Tensor, obs: StepObserver
) -> Tensor:
    for segment in segments:
        obs.before_block(segment.name)
        with torch.set_grad_enabled(segment.grad):
            h = segment.module(h)
        obs.after_block(segment.name, h)
    return h


def _cross_entropy_forward(prepared: PreparedStep, obs: StepObserver) -> Tensor:
    logits = _run_segments(prepared.segments, prepared.inputs, obs)
    obs.before_loss()
    assert prepared.labels is not None
    return F.cross_entropy(logits, prepared.labels)


def _prepare_full(
    model: BlockedModel, case: TrainingCase
) -> tuple[tuple[Segment, ...], ForwardFn]:
    segments = [Segment(n, model.block(i), True, True) for i, n in enumerate(model.block_names())]
    segments.append(Segment("output", model.head, True, True))
    return tuple(segments), _cross_entropy_forward


def _prefix(model: BlockedModel, case: TrainingCase, stop: int) -> list[Segment]:
    names = model.block_names()
    return [
        Segment(names[i], _freeze(model.block(i), eval_mode=case.frozen_bn_eval), False, False)
        for i in range(stop)
    ]


def _prepare_grow(
    model: BlockedModel, case: TrainingCase
) -> tuple[tuple[Segment, ...], ForwardFn]:
    t = case.step
    assert t is not None
    segments = _prefix(model, case, t - 1)
    segments.append(Segment(model.block_names()[t - 1], model.block(t - 1), True, True))
    output = model.head if t == model.num_blocks else model.output_module(t)
    segments.append(Segment("output", output, True, True))
    return tuple(segments), _cross_entropy_forward


def _prepare_shrink(
    model: BlockedModel, case: TrainingCase
) -> tuple[tuple[Segment, ...], ForwardFn]:
    t = case.step
    assert t is not None
    frozen = case.frozen_bn_eval
    segments = _prefix(model, case, t - 1)
    teacher_block = _freeze(model.block(t - 1), eval_mode=frozen)
    teacher_output = _freeze(
        model.head if t == model.num_blocks else model.output_module(t), eval_mode=frozen
    )
    student_layers = model.output_module(t - 1)
    basic = getattr(student_layers, f"basic{t}")
    segments += [
        Segment(model.block_names()[t - 1], teacher_block, False, False),
        Segment("teacher_output", teacher_output, False, False),
        Segment(f"basic{t}", basic, True, True),
        Segment("output", teacher_output, False, True),
    ]
    return tuple(segments), _distill_forward


def _distill_forward(prepared: PreparedStep, obs: StepObserver) -> Tensor:
    segs = prepared.segments
    prefix, teacher, student = segs[:-4], segs[-4:-2], segs[-2:]
    shared = _run_segments(prefix, prepared.inputs, obs)
    teacher_logits = _run_segments(teacher, shared, obs)
    student_logits = _run_segments(student, shared, obs)
    obs.before_loss()
    return soft_target_loss(student_logits, teacher_logits, temperature=DISTILL_TEMPERATURE)


def _prepare_depth(
    model: BlockedModel, case: TrainingCase
) -> tuple[tuple[Segment, ...], ForwardFn]:
    k = case.step
    assert k is not None
    segments: list[Segment] = []
    for i in range(1, k + 1):
        segments.append(Segment(model.block_names()[i - 1], model.block(i - 1), True, True))
        name = "output" if i == k else exit_name(i, model.num_blocks)
        segments.append(Segment(name, build_exit(model, i), True, True))
    return tuple(segments), _multi_exit_forward


def _multi_exit_forward(prepared: PreparedStep, obs: StepObserver) -> Tensor:
    """Blocks and exits interleaved (block1, exit1, block2, ...); DepthFL's loss with w = 1."""
    h = prepared.inputs
    logits = []
    for block, head in zip(prepared.segments[::2], prepared.segments[1::2], strict=True):
        h = _run_segments((block,), h, obs)
        logits.append(_run_segments((head,), h, obs))
    obs.before_loss()
    assert prepared.labels is not None
    return mutual_distillation_loss(logits, prepared.labels, kd_weight=1.0)


def _prepare_trunc(
    model: BlockedModel, case: TrainingCase
) -> tuple[tuple[Segment, ...], ForwardFn]:
    k = case.step
    assert k is not None
    names = model.block_names()
    segments = [Segment(names[i], model.block(i), True, True) for i in range(k)]
    segments.append(Segment("output", build_exit(model, k), True, True))
    return tuple(segments), _cross_entropy_forward


KINDS: dict[str, Kind] = {
    "full": Kind(name="full", steps=lambda blocks: range(0), prepare=_prepare_full),
    "grow": Kind(name="grow", steps=lambda blocks: range(1, blocks + 1), prepare=_prepare_grow),
    "shrink": Kind(
        name="shrink", steps=lambda blocks: range(2, blocks + 1), prepare=_prepare_shrink
    ),
    "depth": Kind(name="depth", steps=lambda blocks: range(1, blocks + 1),
                  prepare=_prepare_depth),
    "trunc": Kind(name="trunc", steps=lambda blocks: range(1, blocks + 1),
                  prepare=_prepare_trunc),
}


def _make_optimizer(case: TrainingCase, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if case.optimizer == "adam":
        return torch.optim.Adam(params, lr=ADAM_LR)
    return torch.optim.SGD(
        params, lr=SGD_LR, momentum=SGD_MOMENTUM, weight_decay=SGD_WEIGHT_DECAY
    )


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run module construction on a private copy of the CPU RNG seeded with ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def prepare_step(case: TrainingCase, model: BlockedModel, *, seed: int = 0) -> PreparedStep:
    """Turn an already built model into the step of ``case``.

    Parameters are frozen or left trainable as the case says; blocks the case does not use are
    not referenced by the step. New modules (output modules) and the synthetic batch are drawn
    from ``seed`` only; the global RNG is not touched.

    Args:
        case: what to train.
        model: a model built for ``case.model`` (tests may pass a modified one).
        seed: seeds new output modules and the batch.
    """
    with _seeded(seed):
        segments, forward = KINDS[case.kind].prepare(model, case)
    trainable: dict[int, nn.Module] = {}
    for segment in segments:
        if segment.trainable:
            segment.module.requires_grad_(True)
            segment.module.train(True)
            trainable.setdefault(id(segment.module), segment.module)
    params = [p for m in trainable.values() for p in m.parameters()]
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed + 1)
    shape = (case.batch_size, *case.model.input_shape)
    inputs = torch.randn(shape, generator=gen, dtype=DTYPES[case.dtype])
    labels = torch.randint(0, case.model.num_classes, (case.batch_size,), generator=gen)
    if device.type != "cpu":
        inputs, labels = inputs.to(device), labels.to(device)
    return PreparedStep(
        case=case,
        segments=segments,
        optimizer=_make_optimizer(case, params),
        inputs=inputs,
        labels=None if forward is _distill_forward else labels,
        forward=forward,
    )


def construct_model(case: TrainingCase, *, seed: int = 0) -> BlockedModel:
    """Build the case's model in its dtype from ``seed``, on the current default device.

    The default dtype is switched during construction and restored (``Module.to`` fails on
    fake parameters); the global RNG is not touched.
    """
    dtype = DTYPES[case.dtype]
    previous = torch.get_default_dtype()
    try:
        if dtype != previous:
            torch.set_default_dtype(dtype)
        with _seeded(seed):
            return build_model(case.model)
    finally:
        torch.set_default_dtype(previous)


def build_step(
    case: TrainingCase,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> PreparedStep:
    """Build the model of ``case`` on ``device`` and prepare one training step.

    The model is built on the CPU in the case's dtype and moved to ``device`` if that is not
    the CPU. For fake tensors see :mod:`profl_core.memory.predict`.

    Args:
        case: what to train.
        device: where the model, optimizer state and batch live.
        generator: seeds the initial weights, output modules and batch; ``None`` uses seed 0.
    """
    seed = 0 if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
    model = construct_model(case, seed=seed)
    target = torch.device(device)
    if target.type != "cpu":
        model = model.to(target)
    return prepare_step(case, model, seed=seed)


def build_fake_step(case: TrainingCase) -> PreparedStep:
    """The step of ``case`` on fake CPU tensors; call it inside an active ``FakeTensorMode``.

    The model is constructed on the ``meta`` device (no weights, no initialisation maths), then
    its parameters and buffers are replaced by empty fake tensors on the CPU (see
    :func:`profl_core.memory.predict.materialize`). Nothing is allocated.
    """
    from profl_core.memory.predict import materialize

    cpu = torch.device("cpu")
    with unset_fake_temporarily(), torch.device("meta"):
        model = construct_model(case)
    with cpu:
        materialize(model, cpu)
        return prepare_step(case, model)


def case_from_text(
    model: str | ModelSpec, text: str, *, batch_size: int, **options: Any
) -> TrainingCase:
    """Build a case from a model name (native input) or spec and ``full``/``grow:T``/... text."""
    spec = native_spec(model) if isinstance(model, str) else model
    kind, step = parse_case(text, blocks=num_blocks(spec))
    return TrainingCase(model=spec, kind=kind, step=step, batch_size=batch_size, **options)
