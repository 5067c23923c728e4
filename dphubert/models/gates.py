"""HardConcrete gates (Louizos et al., 2018, "Learning Sparse Neural Networks through L0 Regularization").

One gate owns a vector ``log_alpha`` of ``n`` units. In training mode every forward draws one sample (shared by
the whole batch and all frames); in eval mode it returns the deterministic mask that physical pruning uses:
the expected number of zeros is rounded (the paper's rule), those units get 0 and the survivors keep a soft value
in (0, 1). A selection that meets a size budget (``dphubert.models.selection``) sets ``kept`` instead: the
number of units to keep, the ones with the largest ``log_alpha``.
"""

import math
from typing import Optional

import torch
from torch import nn

TEMPERATURE = 2.0 / 3.0
STRETCH_LOW = -0.1
STRETCH_HIGH = 1.1
# Constant of the reference implementation for the deterministic soft value.
EVAL_SOFTNESS = 0.8


class HardConcrete(nn.Module):
    """A HardConcrete distribution over ``n`` gates.

    Args:
        n: number of gated units.
        init_mean: initial probability-like mean ``m``; ``log_alpha ~ N(log(1 - m) - log(m), 0.01)``.
        eps: keeps the uniform noise away from 0 and 1.
    """

    def __init__(self, n: int, init_mean: float = 0.5, eps: float = 1e-6):
        super().__init__()
        if n <= 0:
            raise ValueError(f"HardConcrete needs at least one unit, got n={n}")
        self.n = n
        self.init_mean = init_mean
        self.eps = eps
        self.log_alpha = nn.Parameter(torch.empty(n))
        # beta * log(-l / r): shifts log_alpha to the probability that a gate is non-zero.
        self._l0_shift = TEMPERATURE * math.log(-STRETCH_LOW / STRETCH_HIGH)
        # Units the deterministic mask keeps, set by a selection; None: the paper's rounding of the expected L0.
        self.kept: Optional[int] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        mean = math.log(1 - self.init_mean) - math.log(self.init_mean)
        with torch.no_grad():
            self.log_alpha.normal_(mean, 0.01)

    def extra_repr(self) -> str:
        return f"n={self.n}, init_mean={self.init_mean}"

    def l0_norm(self) -> torch.Tensor:
        """Expected number of non-zero gates (differentiable in ``log_alpha``)."""
        return torch.sigmoid(self.log_alpha - self._l0_shift).sum()

    def forward(self) -> torch.Tensor:
        if self.training:
            return self.sample()
        return self.deterministic_mask()

    def sample(self) -> torch.Tensor:
        u = torch.rand_like(self.log_alpha).clamp(self.eps, 1 - self.eps)
        s = torch.sigmoid((torch.log(u / (1 - u)) + self.log_alpha) / TEMPERATURE)
        return (s * (STRETCH_HIGH - STRETCH_LOW) + STRETCH_LOW).clamp(0.0, 1.0)

    @torch.no_grad()
    def num_zeros(self) -> int:
        """How many units the deterministic mask sets to zero (``n - kept`` when a selection set ``kept``)."""
        if self.kept is not None:
            return self.n - self.kept
        return self.paper_num_zeros()

    @torch.no_grad()
    def paper_num_zeros(self) -> int:
        """The paper's rule: the expected number of zeros, rounded."""
        return int(round(self.n - self.l0_norm().item()))

    def deterministic_mask(self) -> torch.Tensor:
        soft = torch.sigmoid(self.log_alpha / TEMPERATURE * EVAL_SOFTNESS)
        k = self.num_zeros()
        if self.kept is not None:
            # A selection may keep a unit whose soft value underflowed to 0 (log_alpha below about -70): it stays
            # kept (pruning keeps the non-zero entries), with a negligible scale.
            soft = soft.clamp_min(torch.finfo(soft.dtype).tiny)
        if k > 0:
            # The k smallest soft values; ranked by log_alpha (the same order) so that values tied in float32
            # (saturated at 0 or 1) are still told apart.
            _, smallest = torch.topk(self.log_alpha.detach(), k, largest=False)
            soft = soft.clone()
            soft[smallest] = 0.0
        return soft


def gate_units(gate, full: int, mode: str):
    """How many units a gated structure has: its ``full`` size without a gate, else its expected L0 (a tensor,
    ``mode="expected"``) or its deterministic survivors (an int, ``mode="deterministic"``)."""
    if gate is None:
        return full
    if mode == "expected":
        return gate.l0_norm()
    return gate.n - gate.num_zeros()
