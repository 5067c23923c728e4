"""Which units a pruned model keeps: the paper's rule, or the selection that meets a size budget (the default).

The paper's rule (``paper``): every gate keeps round(expected L0) units, those with the largest ``log_alpha``. The
pruned model then has the size the Step-1 Lagrangian reached in expectation, and after a short Step 1 that is not
the target: the multipliers wind up while the expected sparsity lags the target ramp and take many steps to
unwind (a 400-step run asked 0.72 and ended at 0.798).

``budget``: the largest model within the budget that stays closest to the paper's choice. The budget of each
constrained quantity (parameters; MACs for 10 s of audio; both) is ``floor((1 - target) * teacher's count)``.
Starting from the paper's choice, the kept units with the smallest ``log_alpha`` (the least likely to be non-zero)
are dropped while the model is over a budget; then the dropped units with the largest ``log_alpha`` are added back,
each one if it fits every budget. Each gate still keeps its units of largest ``log_alpha`` and CNN layers keep at
least one channel. The model lands at or below every target size, within the cost of the cheapest unit left out
(an FFN unit: 2 x dim + 1 parameters). The counts are those of ``Wav2Vec2Model.deterministic_num_params`` and
``deterministic_macs``, which ``prune()`` then realises exactly.

Usage::

    selection = select_units(gated, "budget", {"params": 0.75}, {"params": teacher_params, "macs": teacher_macs})
    apply_selection(gated, selection.kept)   # sets every gate's ``kept``; gated.prune() keeps those units
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, Mapping, Optional

SELECTIONS = ("budget", "paper")
MACS_SECONDS = 10.0
QUANTITIES = ("params", "macs")


class SelectionError(ValueError):
    """A budget that no selection can meet; the message gives the smallest reachable size."""


@dataclass
class Selection:
    rule: str                                   # "budget" or "paper"
    kept: Dict[str, int]                        # gate name -> units kept
    paper_kept: Dict[str, int]                  # what the paper's rule keeps
    sizes: Dict[str, int]                       # params, macs of the kept units
    paper_sizes: Dict[str, int]
    allowed: Dict[str, int] = field(default_factory=dict)  # the budget of each constrained quantity

    def changed_units(self) -> Dict[str, int]:
        """Units added to and removed from the paper's choice."""
        added = sum(max(0, self.kept[g] - self.paper_kept[g]) for g in self.kept)
        removed = sum(max(0, self.paper_kept[g] - self.kept[g]) for g in self.kept)
        return {"added": added, "removed": removed}


def paper_counts(model) -> Dict[str, int]:
    """Units each gate keeps under the paper's rule (the expected number of zeros, rounded)."""
    return {name: gate.n - gate.paper_num_zeros() for name, gate in model.gates().items()}


@contextlib.contextmanager
def applied(model, counts: Mapping[str, int]) -> Iterator[None]:
    """Every gate's ``kept`` set to ``counts`` for the duration, then restored."""
    gates = model.gates()
    before = {name: gate.kept for name, gate in gates.items()}
    try:
        apply_selection(model, counts)
        yield
    finally:
        for name, gate in gates.items():
            gate.kept = before[name]


def apply_selection(model, counts: Mapping[str, int]) -> None:
    """Make every gate keep ``counts[name]`` units (its units of largest ``log_alpha``)."""
    for name, gate in model.gates().items():
        kept = int(counts[name])
        if not 0 <= kept <= gate.n:
            raise ValueError(f"gate {name}: cannot keep {kept} of {gate.n} units")
        gate.kept = kept


def sizes_of(model, counts: Mapping[str, int], seconds: float = MACS_SECONDS) -> Dict[str, int]:
    """Parameters and MACs (``seconds`` of audio) of the pruned model that keeps ``counts``."""
    with applied(model, counts):
        return {"params": model.deterministic_num_params(), "macs": model.deterministic_macs(seconds)}


def _minimum_counts(model) -> Dict[str, int]:
    """The fewest units each gate can keep: one channel per CNN layer (a CNN layer cannot vanish), else none."""
    conv = {id(block.hard_concrete) for block in model.feature_extractor.conv_layers}
    return {name: 1 if id(gate) in conv else 0 for name, gate in model.gates().items()}


def allowances(targets: Mapping[str, float], teacher: Mapping[str, Optional[int]]) -> Dict[str, int]:
    """``{quantity: floor((1 - target) * teacher's count)}`` for each constrained quantity."""
    out = {}
    for quantity, target in targets.items():
        if teacher.get(quantity) is None:
            raise SelectionError(f"a {quantity} budget needs the teacher's {quantity} count")
        out[quantity] = math.floor((1.0 - float(target)) * int(teacher[quantity]))
    return out


def select_units(model, rule: str, targets: Mapping[str, float], teacher: Mapping[str, Optional[int]],
                 seconds: float = MACS_SECONDS) -> Selection:
    """The units to keep under ``rule`` (``budget``: meet ``targets``, e.g. ``{"params": 0.75}``; ``paper``)."""
    if rule not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {rule!r}")
    paper = paper_counts(model)
    paper_sizes = sizes_of(model, paper, seconds)
    if rule == "paper":
        return Selection(rule, dict(paper), paper, paper_sizes, paper_sizes)
    allowed = allowances(targets, teacher)
    kept = _fill_budget(model, paper, allowed, teacher, targets, seconds)
    return Selection(rule, kept, paper, sizes_of(model, kept, seconds), paper_sizes, allowed)


def _fill_budget(model, start: Dict[str, int], allowed: Dict[str, int], teacher, targets,
                 seconds: float) -> Dict[str, int]:
    gates = model.gates()
    minimum = _minimum_counts(model)
    smallest = sizes_of(model, minimum, seconds)
    for quantity, limit in allowed.items():
        if smallest[quantity] > limit:
            most = 1.0 - smallest[quantity] / teacher[quantity]
            raise SelectionError(
                f"{quantity} target sparsity {targets[quantity]:g} cannot be met: with every gated unit removed the "
                f"model keeps {smallest[quantity]:,} {quantity} of the teacher's {teacher[quantity]:,} (sparsity "
                f"at most {most:.4f}); lower the target")
    # Each gate's log_alpha in descending order: a gate keeping k units keeps its first k.
    order = {name: sorted(gate.log_alpha.detach().tolist(), reverse=True) for name, gate in gates.items()}
    counts = {name: max(start[name], minimum[name]) for name in gates}

    def fits(candidate: Dict[str, int]) -> bool:
        sizes = sizes_of(model, candidate, seconds)
        return all(sizes[q] <= limit for q, limit in allowed.items())

    def after(units, j: int, step: int) -> Dict[str, int]:
        moved = dict(counts)
        for _, gate in units[:j]:
            moved[gate] += step
        return moved

    # Over budget: drop the kept units least likely to be non-zero, as few as fit (sizes fall along this order, so a
    # bisection over its length finds them).
    removable = sorted((order[g][k], g) for g in gates for k in range(minimum[g], counts[g]))
    if not fits(counts):
        low, high = 0, len(removable)  # fits(after(high)): the minimal model fits (checked above)
        while high - low > 1:
            middle = (low + high) // 2
            if fits(after(removable, middle, -1)):
                high = middle
            else:
                low = middle
        counts = after(removable, high, -1)
    # Under budget: add back the dropped units most likely to be non-zero while they fit: the longest prefix of that
    # order by bisection, then unit by unit. A unit that does not fit closes its gate: the next units of that gate
    # cost at least as much (costs only grow as other gates grow).
    addable = sorted(((-order[g][k], g) for g in gates for k in range(counts[g], gates[g].n)))
    low, high = 0, len(addable) + 1  # fits(after(low)); not fits(after(high)) (high past the end: by convention)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(after(addable, middle, +1)):
            low = middle
        else:
            high = middle
    counts = after(addable, low, +1)
    _add_while_fits(counts, addable[low:], fits)
    for _ in range(EXCHANGE_ROUNDS if len(allowed) == 2 else 0):
        # An exchange for one quantity can leave room in the other: a few rounds, until neither moves.
        before = dict(counts)
        _exchange(model, counts, allowed, teacher, order, minimum, seconds, fits)
        if counts == before:
            break
    return counts


def _add_while_fits(counts: Dict[str, int], addable, fits) -> None:
    """Add ``addable``'s units in order, each if it fits; a unit that does not fit closes its gate."""
    closed = set()
    for _, gate in addable:
        if gate in closed:
            continue
        counts[gate] += 1
        if not fits(counts):
            counts[gate] -= 1
            closed.add(gate)


# With two budgets, exchanges stop once both are within this share of the teacher's count of their budget.
EXCHANGE_SLACK = 0.001
EXCHANGE_ROUNDS = 4


def _exchange(model, counts, allowed, teacher, order, minimum, seconds, fits) -> None:
    """Two budgets (params+macs): the fill stops at the first budget it meets, and the other one may keep much room.
    Exchange units until that one is close too: drop one unit of the gate lightest in the roomy quantity relative to
    the tight one (its least likely unit), then add units of the gates heavier in it, heaviest first, while they fit;
    an exchange is kept when the roomy quantity grew (so the loop ends). Then fill again in keep-probability order."""
    gates = model.gates()
    sizes = sizes_of(model, counts, seconds)
    slack = {q: (limit - sizes[q]) / teacher[q] for q, limit in allowed.items()}
    roomy = max(slack, key=slack.get)
    tight = next(q for q in allowed if q != roomy)

    def heaviness(gate: str, step: int) -> float:
        """Roomy per tight share of one unit added to (+1) or dropped from (-1) ``gate``."""
        moved = sizes_of(model, dict(counts, **{gate: counts[gate] + step}), seconds)
        cost = {q: abs(moved[q] - sizes[q]) / teacher[q] for q in allowed}
        return cost[roomy] / max(cost[tight], 1e-12)

    excluded = set()
    while (allowed[roomy] - sizes[roomy]) / teacher[roomy] > EXCHANGE_SLACK:
        droppable = {g: heaviness(g, -1) for g in gates if counts[g] > minimum[g] and g not in excluded}
        if not droppable:
            break
        donor = min(droppable, key=lambda g: (droppable[g], order[g][counts[g] - 1]))
        before = dict(counts)
        counts[donor] -= 1
        growable = {g: heaviness(g, +1) for g in gates if counts[g] < gates[g].n and g != donor}
        for gate in sorted((g for g in growable if growable[g] > droppable[donor]), key=growable.get, reverse=True):
            while counts[gate] < gates[gate].n:
                counts[gate] += 1
                if not fits(counts):
                    counts[gate] -= 1
                    break
        trial = sizes_of(model, counts, seconds)
        if fits(counts) and trial[roomy] > sizes[roomy]:
            sizes = trial
            excluded.clear()
        else:
            counts.clear()
            counts.update(before)
            excluded.add(donor)
    _add_while_fits(counts, sorted((-order[g][k], g) for g in gates for k in range(counts[g], gates[g].n)), fits)
