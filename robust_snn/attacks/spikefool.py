"""SpikeFool: SparseFool's L1 steps towards a DeepFool boundary estimate, rounded to binary event frames."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torchattacks


class SpikeFool(torchattacks.attack.Attack):
    """Minimum-L0 attack on binary event frames (Büchel et al. 2022): DeepFool boundary, SparseFool steps, rounding.

    Each outer iteration, for the samples still classified correctly:

    1. **DeepFool, linearized on rounded frames**: from the current binary frames it takes
       DeepFool steps towards the closest linearized class boundary (all classes), with
       the gradient at the *rounded* iterate (the model only ever sees binary events),
       until the overshot iterate changes the prediction; this gives a boundary point
       ``x + lam * r`` and the boundary's normal (the gradient of the winning logit
       difference there).
    2. **SparseFool's linear solver, binary**: it flips entries towards the boundary's
       side, largest normal component first, each flip a full 0 <-> 1 step (the
       coordinate-wise L1 step of SparseFool, rounded to the raster), until the
       linearized boundary is crossed.

    It stops for a sample when the frames are misclassified or after ``steps`` outer
    iterations. Then (``prune``) the shortest prefix of the flips, in the order they were
    made, that still fools the model is found by bisection (what the reference's
    ``early_stopping`` means to do), so the attack looks for the fewest flips.

    A minimum-norm attack: a sample counts as broken only if its example needs at most
    ``budget`` flips; a sample whose example needs more is returned unchanged, so the
    output is binary and always within the budget (exact L0). :attr:`last_l0` holds, per
    sample of the last call, the flips the found example needs (also beyond the budget;
    0 for a sample misclassified already, which is returned unchanged; ``inf`` where no
    example was found, which includes every correctly classified sample when ``budget``
    is 0: no search runs): report its median over the broken samples. With ``add_only``
    entries may only go 0 -> 1 (events are injected, never erased).

    Reference code: https://github.com/jubueche/SPAA (``sparsefool.py``: ``deepfool``,
    ``sparsefool``, ``linear_solver``), one sample at a time. Differences, besides the
    batching: the DeepFool iterate is projected onto the box ``[0, 1]`` (``[x, 1]``
    add-only) after every step, and DeepFool stops once a step no longer moves it or the
    closest class is tied (spike-count logits tie often; the reference then takes 50
    steps of 1e-4). Surrogate input gradients of spiking models are tiny (1e-5 and below
    on saturated neurons), so an unprojected DeepFool step lands thousands of units
    outside the box, the linear solver then flips every entry it can, and the search
    degenerates into "flip by gradient rank until fooled"; the model also refuses the
    negative event counts such a step produces.

    Paper: Büchel et al., "Adversarial attacks on spiking convolutional neural networks for
    event-based vision" (2022), https://arxiv.org/abs/2110.02929.

    Args:
        model: classifier on event tensors ``[B, T, P, H, W]`` in {0, 1}.
        budget: the most entries flipped per sample (L0); examples needing more count as failures.
        steps: the most outer (DeepFool + linear solver) iterations (SPAA: ``max_iter = 20``).
        lam: how far past the DeepFool boundary estimate the boundary point lies (SPAA's
            ``lambda_``, 3 in the paper's N-MNIST runs); larger: more flips, fewer iterations.
        overshoot: DeepFool's overshoot when checking the boundary is crossed.
        deepfool_steps: the most DeepFool steps per outer iteration.
        prune: search the shortest fooling prefix of the flips afterwards.
        add_only: only inject events (0 -> 1), never erase one.

    Shape: ``[B, T, P, H, W]`` -> ``[B, T, P, H, W]``; :attr:`last_l0`: ``[B]`` (float, on the CPU).

    Example::

        atk = SpikeFool(model, budget=50)
        adv = atk(events, labels)  # (adv != events).flatten(1).sum(1) <= 50
        atk.last_l0  # flips each example needs (inf: none found)
    """

    def __init__(self, model: torch.nn.Module, *, budget: int, steps: int = 20, lam: float = 3.0, overshoot: float = 0.02,
                 deepfool_steps: int = 50, prune: bool = True, add_only: bool = False) -> None:
        super().__init__("SpikeFool", model)
        self.budget, self.steps, self.deepfool_steps = max(0, int(budget)), int(steps), int(deepfool_steps)
        self.lam, self.overshoot = float(lam), float(overshoot)
        self.prune, self.add_only = bool(prune), bool(add_only)
        self.last_l0 = torch.zeros(0)
        self.supported_mode = ["default"]

    @classmethod
    def from_params(cls, model: torch.nn.Module, eps: float, params: Dict[str, Any], n_classes: int,
                    eot_samples: int) -> "SpikeFool":
        """The registry's builder (:attr:`robust_snn.attacks.registry.AttackSpec.build`): one attack for budget ``eps``."""
        return cls(model, budget=int(eps), steps=int(params.get("steps", 20)), lam=float(params.get("lam", 3.0)),
                   overshoot=float(params.get("overshoot", 0.02)), deepfool_steps=int(params.get("deepfool_steps", 50)),
                   prune=bool(params.get("prune", True)), add_only=bool(params.get("add_only", False)))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = images.clone().detach().to(self.device).round()
        y = labels.clone().detach().to(self.device)
        shape = x.shape[1:]
        x0 = x.flatten(1)
        with torch.no_grad():
            correct = self.get_logits(x).argmax(1) == y
        l0 = torch.where(correct, float("inf"), 0.0).to(x.device)
        self.last_l0 = l0.cpu()
        if self.budget == 0 or not bool(correct.any()):  # no budget: nothing to find (and no search to pay for)
            return x
        lo = x0.clone() if self.add_only else torch.zeros_like(x0)  # the box: add-only keeps every event
        adv = x0.clone()
        never = torch.iinfo(torch.long).max
        when = torch.full(x0.shape, never, dtype=torch.long, device=x.device)  # when each entry was last flipped (iteration, rank)
        active = correct.clone()
        n = x0.shape[1]
        for it in range(self.steps):
            idx = torch.nonzero(active).squeeze(1)
            if len(idx) == 0:
                break
            normal, point = self._deepfool(adv[idx], y[idx], lo[idx], shape)
            flips, rank = self._linear_solver(adv[idx], normal, point, lo[idx])
            rows, cols = torch.nonzero(flips, as_tuple=True)
            adv[idx[rows], cols] = 1 - adv[idx[rows], cols]
            when[idx[rows], cols] = it * n + rank[rows, cols]
            with torch.no_grad():
                fooled = self.get_logits(adv[idx].view(-1, *shape)).argmax(1) != y[idx]
            active[idx[fooled | ~flips.any(1)]] = False  # done, or stuck (no entry can move)
        with torch.no_grad():
            fooled = correct & (self.get_logits(adv.view(-1, *shape)).argmax(1) != y)
        when = when.masked_fill(adv == x0, never)  # flipped back: not a flip
        if self.prune and bool(fooled.any()):
            adv = self._shortest_prefix(x0, adv, when, y, fooled, shape)
        found = (adv != x0).sum(1).to(l0.dtype)
        l0 = torch.where(fooled, found, l0)
        self.last_l0 = l0.cpu()
        keep = fooled & (found <= self.budget)
        return torch.where(keep[:, None], adv, x0).view_as(x).detach()

    def _grad(self, x: torch.Tensor, y: torch.Tensor, other: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Gradient of ``z_other - z_y`` per sample, ``[b, n]``."""
        x = x.view(-1, *shape).clone().requires_grad_(True)
        z = self.get_logits(x)
        (g,) = torch.autograd.grad((z.gather(1, other[:, None]) - z.gather(1, y[:, None])).sum(), x)
        return g.flatten(1)

    def _deepfool(self, xi: torch.Tensor, y: torch.Tensor, lo: torch.Tensor, shape: torch.Size) -> Tuple[torch.Tensor, torch.Tensor]:
        """DeepFool from binary ``xi`` (``[b, n]``) with gradients at the rounded iterate: (unit normal, boundary point)."""
        b = len(xi)
        r_tot = torch.zeros_like(xi)
        target = y.clone()  # the closest other class of the last step
        todo = torch.ones(b, dtype=torch.bool, device=xi.device)
        rows = torch.arange(b, device=xi.device)
        for _ in range(self.deepfool_steps):
            idx = torch.nonzero(todo).squeeze(1)
            if len(idx) == 0:
                break
            cur = torch.maximum(xi[idx] + r_tot[idx], lo[idx]).clamp(max=1).round().view(-1, *shape).requires_grad_(True)
            z = self.get_logits(cur)
            k = z.shape[1]
            grads = torch.stack([torch.autograd.grad(z[:, c].sum(), cur, retain_graph=c < k - 1)[0].flatten(1) for c in range(k)], 1)
            z = z.detach()
            yy = y[idx]
            w = grads - grads[rows[:len(idx)], yy][:, None]  # [b', K, n]
            f = z - z.gather(1, yy[:, None])
            wn = w.norm(dim=2)
            pert = (f.abs() / wn).masked_fill(wn == 0, float("inf"))
            pert[rows[:len(idx)], yy] = float("inf")
            best = pert.argmin(1)
            p = pert[rows[:len(idx)], best]
            stuck = ~p.isfinite()  # every other class has a zero gradient difference: no direction
            wb = w[rows[:len(idx)], best]
            step = (p.clamp(min=1e-4) / wn[rows[:len(idx)], best]).masked_fill(stuck, 0.0)[:, None] * wb
            before = r_tot[idx]
            r_tot[idx] = torch.maximum(xi[idx] + before + step, lo[idx]).clamp(max=1) - xi[idx]  # projected onto the box
            # stalled: the step left the box everywhere (a corner), or a tie (on the boundary already)
            stuck |= ((r_tot[idx] - before).abs().amax(1) <= 1e-6) | (p == 0)
            target[idx] = torch.where(p.isfinite(), best, target[idx])
            check = torch.maximum(xi[idx] + (1 + self.overshoot) * r_tot[idx], lo[idx]).clamp(max=1)
            with torch.no_grad():
                crossed = self.get_logits(check.view(-1, *shape)).argmax(1) != yy
            todo[idx[crossed | stuck]] = False
        at = torch.maximum(xi + r_tot, lo).clamp(max=1)
        normal = self._grad(at, y, target, shape)
        normal = normal / normal.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return normal, xi + self.lam * r_tot

    def _linear_solver(self, xi: torch.Tensor, normal: torch.Tensor, point: torch.Tensor,
                       lo: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """SparseFool's coordinate steps towards the hyperplane ``(normal, point)``, each a full flip.

        Returns the entries to flip ``[b, n]`` (largest ``|normal|`` first, up to and including
        the one that crosses the plane) and the rank of each entry in that order.
        """
        f = (normal * (xi - point)).sum(1)  # < 0 on the clean side
        goal = torch.where(normal > 0, torch.ones_like(xi), lo)
        movable = (goal != xi) & (normal != 0)
        gain = (normal.abs() * (goal - xi).abs()).masked_fill(~movable, 0.0)
        order = gain.argsort(dim=1, descending=True, stable=True)
        sorted_gain = gain.gather(1, order)
        before = sorted_gain.cumsum(1) - sorted_gain  # progress before each flip
        need = (-f).clamp(min=0)  # on the far side already (a degenerate estimate): one flip
        take_sorted = (sorted_gain > 0) & ((before < need[:, None]) | (torch.arange(xi.shape[1], device=xi.device)[None, :] == 0))
        take = torch.zeros_like(movable).scatter(1, order, take_sorted)
        rank = torch.empty_like(order).scatter(1, order, torch.arange(xi.shape[1], device=xi.device).expand_as(order))
        return take, rank

    @torch.no_grad()
    def _shortest_prefix(self, x0: torch.Tensor, adv: torch.Tensor, when: torch.Tensor, y: torch.Tensor, fooled: torch.Tensor,
                         shape: torch.Size) -> torch.Tensor:
        """The shortest prefix of each fooled sample's flips (by ``when``) that fools the model, by bisection."""
        idx = torch.nonzero(fooled).squeeze(1)
        order = when[idx].argsort(dim=1, stable=True)
        total = (adv[idx] != x0[idx]).sum(1)
        lo, hi = torch.zeros_like(total), total.clone()  # prefix lo does not fool (lo = 0: clean), hi does
        while bool((hi - lo > 1).any()):
            mid = (lo + hi) // 2
            first = torch.arange(x0.shape[1], device=x0.device)[None, :] < mid[:, None]
            cand = x0[idx].clone()
            pick = torch.zeros_like(first).scatter(1, order, first)
            cand[pick] = 1 - cand[pick]
            ok = self.get_logits(cand.view(-1, *shape)).argmax(1) != y[idx]
            search = hi - lo > 1
            hi = torch.where(search & ok, mid, hi)
            lo = torch.where(search & ~ok, mid, lo)
        first = torch.arange(x0.shape[1], device=x0.device)[None, :] < hi[:, None]
        pick = torch.zeros_like(first).scatter(1, order, first)
        out = adv.clone()
        best = x0[idx].clone()
        best[pick] = 1 - best[pick]
        out[idx] = best
        return out
