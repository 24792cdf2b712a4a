"""Running under ``torchrun``: process-group setup, sharding and result gathering.

robust-snn has one code path. Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the
environment), :func:`init` joins the process group (``gloo`` on CPU, ``nccl`` on CUDA,
chosen automatically) and every other function here becomes collective; in a plain
process they are no-ops. Training wraps the model in ``DistributedDataParallel``;
evaluation shards fixed chunks of the test set across ranks and sums per-sample
results back, so every rank ends with the same full result and rank 0 writes it.

    torchrun --nproc_per_node=4 -m robust_snn attack --eps 0.1

See the README section "Scaling out".
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch

from .errors import RobustSNNError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` processes (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and prints results."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    """Whether the environment describes a multi-process job (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise RobustSNNError(f"WORLD_SIZE must be an integer, got {os.environ.get('WORLD_SIZE')!r}") from None


def init(device: str = "auto", *, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment; a no-op in a plain process.

    Picks ``nccl`` when the job runs on CUDA (each process takes GPU ``LOCAL_RANK``) and
    ``gloo`` otherwise. Idempotent. Returns this process's :class:`DistInfo`.

    Args:
        device: the command's ``--device``; ``auto`` means CUDA when available.
        timeout_s: how long collectives wait for the slowest rank.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return info()
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_available():
        raise RobustSNNError("this PyTorch build has no torch.distributed; run without torchrun")
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RobustSNNError(f"WORLD_SIZE is set but {key} is not: launch with torchrun (see README, 'Scaling out')")
    local_rank = int(os.environ["LOCAL_RANK"])
    if (device or "").lower().startswith("cuda:"):
        raise RobustSNNError(f"--device {device} under torchrun: use --device cuda (or auto); each process takes "
                             "GPU LOCAL_RANK (restrict the GPUs with CUDA_VISIBLE_DEVICES)")
    use_cuda = torch.cuda.is_available() and (device or "auto").lower() in ("auto", "cuda") or (device or "").startswith("cuda")
    if use_cuda:
        if not torch.cuda.is_available():
            raise RobustSNNError("--device cuda under torchrun, but CUDA is not available here")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    d = info()
    if not d.is_main:  # one voice: other ranks only report problems
        logging.getLogger("robust_snn").setLevel(logging.WARNING)
    log.info("joined process group: rank %d of %d (%s)", d.rank, d.world, backend)
    return d


def info() -> DistInfo:
    """This process's rank and world size (world 1 when no process group is initialized)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())), backend=dist.get_backend())


def device_for(device: str) -> str:
    """The device string for this process: under torchrun with CUDA, ``cuda:LOCAL_RANK``."""
    d = info()
    name = (device or "auto").lower()
    if d.enabled and d.backend == "nccl" and name in ("auto", "cuda"):
        return f"cuda:{torch.cuda.current_device()}"
    return device


def shutdown() -> None:
    """Leave the process group (after a final barrier); a no-op in a plain process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        import gc

        gc.collect()  # objects holding the group (a DDP reducer) go while it is alive, not at interpreter exit
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if info().enabled:
        dist.barrier()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if info().backend == "nccl" else torch.device("cpu")


def sum_rows(t: torch.Tensor, owned: torch.Tensor) -> torch.Tensor:
    """Every rank's own rows of ``t`` (``owned`` is a bool mask over dim 0), summed into one full tensor.

    Each row is owned by exactly one rank and the others contribute zeros, so the
    result is exact (adding zeros is exact in floating point). Returns ``t`` unchanged
    in a plain process.
    """
    import torch.distributed as dist

    if not info().enabled:
        return t
    part = torch.zeros_like(t)
    part[owned] = t[owned]
    buf = part.to(_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def max_float(value: float) -> float:
    """The largest ``value`` over ranks (e.g. wall time: the slowest rank)."""
    import torch.distributed as dist

    if not info().enabled:
        return value
    buf = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return float(buf.item())


def sum_floats(values: List[float]) -> List[float]:
    """Element-wise sum of a list of numbers over ranks."""
    import torch.distributed as dist

    if not info().enabled:
        return list(values)
    buf = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return [float(v) for v in buf.tolist()]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. a resume plan only rank 0 can read from disk)."""
    import torch.distributed as dist

    if not info().enabled:
        return obj
    box = [obj if info().is_main else None]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process; a collective)."""
    import torch.distributed as dist

    if not info().enabled:
        return [obj]
    out: List[Any] = [None] * info().world
    dist.all_gather_object(out, obj)
    return out


def all_agree(flag: bool) -> bool:
    """True only if ``flag`` is true on every rank (a collective: call it on all ranks)."""
    import torch.distributed as dist

    if not info().enabled:
        return flag
    buf = torch.tensor([0 if flag else 1], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return int(buf.item()) == 0


class Chunks:
    """Fixed chunks ``[a, b)`` of ``batch_size`` consecutive samples; chunk ``c`` belongs to rank ``c % world``.

    The unit of work and of randomness: each chunk is computed on its own, with the
    RNGs reseeded for it, so a result does not depend on how chunks are spread over
    processes. :meth:`gather` sums every rank's own rows into the full tensor.
    """

    def __init__(self, n: int, batch_size: int, *, rank: int = 0, world: int = 1) -> None:
        self.n, self.rank, self.world = n, rank, world
        self.all = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
        self.owned = torch.zeros(n, dtype=torch.bool)
        for _, (a, b) in self.mine():
            self.owned[a:b] = True

    def mine(self) -> List[tuple]:
        """``(chunk index, (a, b))`` for this rank's chunks."""
        return [(c, ab) for c, ab in enumerate(self.all) if c % self.world == self.rank]

    def map(self, fn, reseed) -> torch.Tensor:
        """``fn(a, b)`` on this rank's chunks (reseeded per chunk), as a full-length tensor (zeros elsewhere)."""
        out: Optional[torch.Tensor] = None
        for c, (a, b) in self.mine():
            reseed(c)
            part = fn(a, b)
            if out is None:
                out = torch.zeros((self.n, *part.shape[1:]), dtype=part.dtype)
            out[a:b] = part
        if out is None:  # a rank without chunks (fewer chunks than ranks) still takes part in gather
            part = fn(0, min(self.n, 1))
            out = torch.zeros((self.n, *part.shape[1:]), dtype=part.dtype)
        return out

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """The full tensor from every rank's own rows (unchanged when not sharded)."""
        return sum_rows(t, self.owned) if self.world > 1 else t

    def wall(self, seconds: float) -> float:
        """Wall time of a sharded step: the slowest rank's."""
        return max_float(seconds) if self.world > 1 else seconds
