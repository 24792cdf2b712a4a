"""PGA: projected gradient ascent on a continuous relaxation of binary event frames, rounded within an exact L0 budget.

Also the pieces :mod:`~robust_snn.attacks.pga_prob` shares: the projection onto the relaxed
budget (:func:`project_capped`), the binary candidate from a score (:func:`flip_top`), the
per-sample record of the best binary example (:class:`BestFlips`) and the shortest-prefix
pruning of a success (:func:`shortest_prefix`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch
import torchattacks

from .losses import margins

PAPER = "https://arxiv.org/abs/2110.02929"


def project_capped(v: torch.Tensor, budget: int, allowed: torch.Tensor, iters: int = 40) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` onto ``{d in [0, 1]^n : sum(d) <= budget, d = 0 where not allowed}``.

    That set is the convex hull of the binary flip masks with at most ``budget`` ones (the
    L0 ball of the flips, relaxed): ``d = clamp(v - tau, 0, 1)`` with the smallest
    ``tau >= 0`` that meets the sum, found by bisection (the upper end, so the sum holds).

    Shape: ``v``, ``allowed``: ``[B, n]`` -> ``[B, n]``.
    """
    v = v.masked_fill(~allowed, 0.0)
    d = v.clamp(0, 1)
    over = d.sum(1) > budget
    if not bool(over.any()):
        return d
    vo = v[over]
    lo = torch.zeros(len(vo), 1, dtype=v.dtype, device=v.device)
    hi = vo.max(1, keepdim=True).values.clamp_min(0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        fits = (vo - mid).clamp(0, 1).sum(1, keepdim=True) <= budget
        hi = torch.where(fits, mid, hi)
        lo = torch.where(fits, lo, mid)
    d[over] = (vo - hi).clamp(0, 1)
    return d


def flip_top(x: torch.Tensor, score: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Flip, per sample, its ``k`` highest-scoring entries among those with a positive score.

    Shape: ``x`` ``[B, ...]`` binary; ``score`` ``[B, n]``; ``k`` ``[B]`` -> ``[B, ...]``.
    """
    flat = x.flatten(1)
    order = score.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=x.device).expand_as(order))
    flip = (rank < k[:, None]) & (score > 0)
    return torch.where(flip, 1 - flat, flat).view_as(x)


class BestFlips:
    """Per sample, the best binary example seen so far: misclassified with the fewest flips, else the smallest margin.

    It also keeps, for each success, the score whose top entries produced it, so that
    :func:`shortest_prefix` can prune it. Shape: ``x`` ``[B, ...]``; scores ``[B, n]``.
    """

    def __init__(self, x: torch.Tensor, clean_logits: torch.Tensor, y: torch.Tensor) -> None:
        self.x = x
        self.adv = x.clone()
        self.margin = margins(clean_logits, y)
        self.flips = torch.full((len(x),), x[0].numel() + 1, dtype=torch.long, device=x.device)
        self.fooled = clean_logits.argmax(1) != y  # already misclassified: left as they are
        self.score = torch.zeros(x.flatten(1).shape, dtype=x.dtype, device=x.device)

    def update(self, rows: torch.Tensor, cand: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, score: torch.Tensor) -> None:
        """Offer binary candidates ``cand`` (within the budget) for samples ``rows``, with their logits, labels and scores.

        A candidate fools the model when its prediction (``argmax``, as evaluation judges) is not ``y``.
        """
        flipped = (cand != self.x[rows]).flatten(1)
        flips, m, wrong = flipped.sum(1), margins(logits, y), logits.argmax(1) != y
        better = torch.where(self.fooled[rows], wrong & (flips < self.flips[rows]), wrong | (m < self.margin[rows]))
        sel = rows[better]
        self.adv[sel] = cand[better]
        self.margin[sel] = m[better]
        self.flips[sel] = torch.where(wrong[better], flips[better], self.flips[sel])
        self.fooled[sel] |= wrong[better]
        # the scores behind the candidate, on its flips only: their order prunes a success
        self.score[sel] = torch.where(flipped[better], score[better].clamp_min(1e-12), torch.zeros_like(score[better]))


def shortest_prefix(logits_fn: Callable[[torch.Tensor], torch.Tensor], best: BestFlips, y: torch.Tensor) -> None:
    """Prune every success in ``best`` to a short prefix of its flips, ordered by their scores (binary search, batched).

    SPAA's early stopping (flip the entries in the order of the attack's scores until the
    prediction changes), with ``log2(flips)`` forward passes instead of one per flip: keep
    ``hi`` flips (known to fool), test ``mid``, move ``hi`` or ``lo``. The prefix found fools
    the model but need not be the shortest one when success is not monotone in the prefix.
    """
    rows = torch.nonzero(best.fooled & (best.flips <= best.x[0].numel())).squeeze(1)
    if len(rows) == 0:
        return
    x, score = best.x[rows], best.score[rows]
    lo = torch.zeros(len(rows), dtype=torch.long, device=x.device)
    hi = best.flips[rows].clone()
    while True:
        todo = torch.nonzero(hi - lo > 1).squeeze(1)
        if len(todo) == 0:
            break
        mid = (lo[todo] + hi[todo]) // 2
        cand = flip_top(x[todo], score[todo], mid)
        with torch.no_grad():
            wrong = logits_fn(cand).argmax(1) != y[rows[todo]]
        hi[todo] = torch.where(wrong, mid, hi[todo])
        lo[todo] = torch.where(wrong, lo[todo], mid)
    shorter = hi < best.flips[rows]
    if bool(shorter.any()):
        r = rows[shorter]
        best.adv[r] = flip_top(x[shorter], score[shorter], hi[shorter])
        best.flips[r] = hi[shorter]


class PGA(torchattacks.attack.Attack):
    """Projected gradient ascent on relaxed event frames, rounded to binary frames within an exact L0 budget.

    The PGA baseline of Büchel et al. 2022, "Adversarial attacks on spiking convolutional
    neural networks for event-based vision" (https://arxiv.org/abs/2110.02929; code:
    https://github.com/jubueche/SPAA, ``non_prob_fool``): gradient steps on a continuous
    version of the frames, the gradient taken at its rounded binary version (what the spiking
    network can see), rounding by flipping the entries that moved most (SPAA's
    ``max_hamming_distance`` largest deviations). Here the relaxation is the budget's own
    convex hull: per-entry flip amounts ``d`` in [0, 1] with ``sum(d) <= budget`` (and
    ``d = 0`` where an event is, when ``add_only``), so the projection is exact, and every
    rounded iterate (the ``budget`` largest positive ``d`` flipped) is within the budget.
    Each step moves ``d`` by an L2 step of ``alpha * sqrt(budget)`` (the length of a
    ``budget``-flip perturbation) along the normalized gradient of the margin loss at the
    rounded iterate (straight-through; SPAA's N-MNIST setting takes L2 steps too), from a
    small random start (``d`` uniform in [0, 0.01], so the first iterate is ``budget`` random
    flips). Every rounded iterate is a candidate; a sample stops once one fools the model,
    and each success is then pruned to a short prefix of its flips (SPAA's early stopping,
    by bisection) in the order of ``d`` after the step taken at the successful frame (the
    flips its own gradient says matter most come first).

    Returns, per sample, the best binary example: misclassified with the fewest flips, else
    the one with the smallest margin. Exact budget (at most ``budget`` entries differ; with
    ``add_only`` only 0 -> 1 entries), binary output, deterministic given ``seed``.

    Args:
        model: classifier on event tensors ``[B, T, P, H, W]`` in {0, 1}.
        budget: the most entries flipped per sample (the L0 or add-only budget).
        steps: gradient steps.
        alpha: L2 step length in units of ``sqrt(budget)``.
        seed: the random start's generator seed.
        add_only: only add events (0 -> 1), never remove one (the ``add-only`` threat model).

    Shape: ``[B, T, P, H, W]`` -> ``[B, T, P, H, W]``.

    Example:
        >>> atk = PGA(model, budget=50, steps=50)
        >>> x_adv = atk(frames, labels)  # binary, (x_adv != frames).flatten(1).sum(1) <= 50
    """

    def __init__(self, model: torch.nn.Module, *, budget: int, steps: int = 50, alpha: float = 0.5, seed: int = 0,
                 add_only: bool = False) -> None:
        super().__init__("PGA", model)
        self.budget, self.steps, self.alpha, self.seed = int(budget), int(steps), float(alpha), int(seed)
        self.add_only = bool(add_only)
        self.supported_mode = ["default"]

    @classmethod
    def from_params(cls, model: torch.nn.Module, eps: float, params: Dict[str, Any], n_classes: int,
                    eot_samples: int) -> "PGA":
        """The registry's builder (:attr:`robust_snn.attacks.registry.AttackSpec.build`): one attack for budget ``eps``."""
        return cls(model, budget=int(eps), steps=int(params["steps"]), alpha=float(params["alpha"]), seed=int(params["seed"]),
                   add_only=bool(params.get("add_only", False)))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.budget == 0:
            return images.clone().detach().to(self.device).round()
        x, y, flat, allowed, gen, d, best, k_all = relaxed_start(self, images, labels, budget=self.budget,
                                                                 add_only=self.add_only, seed=self.seed)
        sign = 1 - 2 * flat  # a flip moves an entry by +1 (0 -> 1) or -1 (1 -> 0)
        step = self.alpha * self.budget ** 0.5
        for _ in range(self.steps):
            rows = torch.nonzero(~best.fooled).squeeze(1)
            if len(rows) == 0:
                break
            dr = d[rows]
            cand = flip_top(x[rows], dr, k_all[rows])  # rounded: the budget's largest flip amounts flipped
            with torch.enable_grad():
                cand.requires_grad_(True)
                logits = self.get_logits(cand)
                (g,) = torch.autograd.grad(margins(logits, y[rows]).sum(), cand)
            cand = cand.detach()
            # ascent on -margin: d grows where flipping lowers the margin (straight-through: gradient at the rounded frames)
            gd = (-g.flatten(1) * sign[rows]).masked_fill(~allowed[rows], 0.0)
            gd = gd / gd.norm(dim=1, keepdim=True).clamp_min(1e-12)
            moved = dr + step * gd
            best.update(rows, cand, logits.detach(), y[rows], moved)  # a success's flips are pruned in the order of `moved`
            d[rows] = project_capped(moved, self.budget, allowed[rows])
        return relaxed_finish(self, best, x, y, d, k_all)  # the last step's rounded iterate, then the fewest flips


def relaxed_start(atk: torchattacks.attack.Attack, images: torch.Tensor, labels: torch.Tensor, *, budget: int,
                  add_only: bool, seed: int) -> tuple:
    """The set-up PGA and probabilistic PGA share: ``(x, y, flat, allowed, gen, start, best, k)``.

    Binary frames ``x`` and labels on the attack's device, ``x`` flattened, the entries a flip may
    touch (add-only: the empty ones), the seeded CPU generator, a tiny random start projected into the
    budget, the best-so-far record of the clean frames, and the per-sample flip count ``k``.
    """
    x = images.clone().detach().to(atk.device).round()
    y = labels.clone().detach().to(atk.device)
    flat = x.flatten(1)
    allowed = (flat == 0) if add_only else torch.ones_like(flat, dtype=torch.bool)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    start = project_capped((0.01 * torch.rand(flat.shape, generator=gen)).to(x.device), budget, allowed)
    with torch.no_grad():
        best = BestFlips(x, atk.get_logits(x), y)
    k = torch.full((len(x),), budget, dtype=torch.long, device=x.device)
    return x, y, flat, allowed, gen, start, best, k


def relaxed_finish(atk: torchattacks.attack.Attack, best: "BestFlips", x: torch.Tensor, y: torch.Tensor,
                   scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Try the budget's top-scored flips on the samples still unbroken, then cut every success back to its fewest flips."""
    rows = torch.nonzero(~best.fooled).squeeze(1)
    if len(rows):
        cand = flip_top(x[rows], scores[rows], k[rows])
        with torch.no_grad():
            best.update(rows, cand, atk.get_logits(cand), y[rows], scores[rows])
    shortest_prefix(atk.get_logits, best, y)
    return best.adv.detach()
