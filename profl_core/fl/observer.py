"""What a training step tells an observer while it runs (DESIGN §3).

Local training (:class:`profl_core.fl.local.LocalStep`) calls a :class:`StepObserver` at block
boundaries and phase changes; memory probes subclass :class:`SegmentObserver` to attribute
their bytes to ``(block, phase)`` segments. A block is a module of the client's
:class:`~profl_core.fl.types.SubModel`, named as in the server's state dict (``block2``,
``om2.basic3``, ``head``).
"""

from __future__ import annotations

from torch import Tensor


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
