"""A hand-made training step with the interface the probes use, and an op of known scratch.

``profl_test::scratchy`` returns a copy of its input and, while it runs, holds a private
buffer of exactly :data:`SCRATCH_BYTES` (no tensor owns it once the op returns), like a oneDNN
kernel's scratchpad. Its kernel counts its calls in :data:`CALLS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from profl_core.memory import StepObserver

SCRATCH_FLOATS = 1 << 16
SCRATCH_BYTES = SCRATCH_FLOATS * 4  # float32
CALLS = {"scratchy": 0}


@torch.library.custom_op("profl_test::scratchy", mutates_args=())
def scratchy(x: Tensor) -> Tensor:
    """``x.clone()``, holding a SCRATCH_BYTES buffer while the copy is made."""
    CALLS["scratchy"] += 1
    buffer = torch.empty(SCRATCH_FLOATS, dtype=torch.float32)  # held until the copy is made
    out = x.clone()
    del buffer
    return out


@scratchy.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


SCRATCHY = torch.ops.profl_test.scratchy


class Scratchy(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return SCRATCHY(x)


class ToyStep:
    """Blocks run in order on ``inputs``, cross-entropy, SGD with momentum, zero_grad.

    Records ``torch.get_num_threads()`` at every run in :attr:`threads_seen`.
    """

    def __init__(self, blocks: dict[str, nn.Module], inputs: Tensor, labels: Tensor) -> None:
        self.blocks = blocks
        self.inputs = inputs
        self.labels = labels
        self.key = "toy"
        params = [p for m in blocks.values() for p in m.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        self.threads_seen: list[int] = []

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(self.blocks)

    def modules(self) -> list[nn.Module]:
        return list(self.blocks.values())

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules() for p in m.parameters() if p.requires_grad]

    def frozen_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules() for p in m.parameters() if not p.requires_grad]

    def run(self, observer: StepObserver | None = None) -> None:
        obs = observer if observer is not None else StepObserver()
        self.threads_seen.append(torch.get_num_threads())
        h = self.inputs
        for name, module in self.blocks.items():
            obs.before_block(name)
            h = module(h)
            obs.after_block(name, h)
        obs.before_loss()
        loss = F.cross_entropy(h, self.labels)
        obs.before_backward()
        loss.backward()
        obs.before_optimizer()
        self.optimizer.step()
        obs.before_zero_grad()
        self.optimizer.zero_grad(set_to_none=True)
        obs.after_step()


def linear_step(*, scratch: bool = False, batch: int = 64, width: int = 256) -> ToyStep:
    """An MLP step (Linear-ReLU-Linear); with ``scratch`` a Scratchy block runs first."""
    gen = torch.Generator().manual_seed(0)
    blocks: dict[str, nn.Module] = {}
    if scratch:
        blocks["scratch"] = Scratchy()
    blocks["hidden"] = nn.Sequential(nn.Linear(width, width), nn.ReLU())
    blocks["head"] = nn.Linear(width, 10)
    inputs = torch.randn(batch, width, generator=gen)
    labels = torch.randint(0, 10, (batch,), generator=gen)
    return ToyStep(blocks, inputs, labels)
