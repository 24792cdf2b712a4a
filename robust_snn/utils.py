"""Small shared helpers: devices, seeding, atomic file writes, versions."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import random
import socket
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from .errors import RobustSNNError


def resolve_device(device: Optional[str] = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else must be available."""
    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RobustSNNError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RobustSNNError("device 'cuda' requested but CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RobustSNNError("device 'mps' requested but MPS is not available here; use --device cpu")
    return dev


def strict_fp32() -> None:
    """Full fp32 convolutions and matmuls on CUDA (TF32 off), so a GPU computes the CPU's spikes.

    A spike is a threshold on a sum: rounding moves membranes that sit at the threshold. Measured
    on an NVIDIA H100 with the shipped ``csnn-mnist.pt`` on the first 1,000 test images
    (``benchmarks/gpu_numerics.py``): PyTorch's default (TF32 convolutions) flips 0.05 % of the
    spikes and changes the logits of 29 images, and bf16 autocast flips 6.1 % and changes 5
    predictions; strict fp32 on the GPU gives exactly the CPU's spikes. A robustness number must
    not depend on the device it was measured on, so the CLI calls this at start-up; Python users
    who want the same call it themselves. No effect on CPU.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


_ALLOCATOR_TUNED = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    Simulating T steps at once allocates ``[T*B, ...]`` tensors of tens of MB. glibc
    serves those with ``mmap`` and unmaps them on free, so every PGD step page-faults
    the same memory in again (a third of CPU attack time here). Disabling ``mmap`` for
    allocations and heap trimming (``mallopt(M_MMAP_MAX, 0)``, ``M_TRIM_THRESHOLD``)
    removes that; the cost is that the process keeps its peak heap until it exits.
    Process-wide, idempotent; does nothing (returns False) off glibc. The CLI calls it;
    call it yourself in long-running Python attack jobs on CPU.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if platform.system() != "Linux":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**30) == 1
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = bool(ok)
    return _ALLOCATOR_TUNED


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch global RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it over ``path`` on success.

    An interrupted write (exception, Ctrl-C) leaves the old file untouched and
    no half-written file behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_writer_tag()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@functools.lru_cache(maxsize=None)
def _host_tag() -> str:
    """A short, dot-free tag of this machine's PID space: the host name and the PID namespace (containers that share
    a host name, e.g. with host networking, do not share PIDs). A folder on a shared filesystem may have writers in
    several."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]" (Linux)
    except OSError:
        pid_ns = ""
    return hashlib.sha256(f"{socket.gethostname()}|{pid_ns}".encode()).hexdigest()[:8]


def _writer_tag() -> str:
    """``PID@HOST``: the process that owns a temporary, and the machine it runs on."""
    return f"{os.getpid()}@{_host_tag()}"


def remove_stale_temporaries(target: str | os.PathLike) -> List[Path]:
    """Delete temporary files that a killed writer of ``target`` left behind.

    :func:`atomic_path` names its temporary ``.NAME.PID@HOST.XXXX.tmp``. A SIGKILL (or power
    loss) between creating and renaming it cannot be caught, so the next write of the
    same file removes every such temporary of this machine whose process no longer runs.
    Another machine's (a folder on a shared filesystem) is left alone: its process cannot
    be looked up from here. Returns the removed paths.
    """
    t = Path(target)
    removed = []
    for tmp in t.parent.glob(f".{t.name}.*.tmp"):
        pid, _, host = tmp.name[len(t.name) + 2:].split(".", 1)[0].partition("@")
        if host not in ("", _host_tag()):  # "": the PID-only names of earlier versions
            continue
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_figure_atomic(fig: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically (format from the suffix)."""
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=target.suffix.lstrip(".") or "png", **kwargs)


def versions() -> Dict[str, str]:
    """Library versions for provenance records."""
    from importlib import metadata

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "robust_snn": dist("robust-snn"),
        "torch": str(torch.__version__),
        "snntorch": dist("snntorch"),
        "torchattacks": dist("torchattacks"),
        "numpy": str(np.__version__),
        "click": dist("click"),
        "python": platform.python_version(),
    }




def progress_bar(iterable: Any, *, enabled: bool = True, **kwargs: Any) -> Any:
    """tqdm over ``iterable``; silent when disabled or when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if enabled else True, leave=False, **kwargs)


def ensure_writable_dir(path: str | os.PathLike, *, option: str = "--out") -> Path:
    """Create ``path`` if needed and prove it is writable, before any long work starts."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-"):
            pass
    except OSError as e:
        raise RobustSNNError(f"{option} {p}: cannot write there ({e.strerror or e}); choose a writable folder") from None
    return p


def claim_outputs(folder: str | os.PathLike, patterns: Sequence[str], *, force: bool = False, option: str = "--out") -> Path:
    """Before any long work starts: ``folder`` is writable and holds none of the files to be written.

    Args:
        folder: where the outputs go (created if missing).
        patterns: file names (or glob patterns) the command will write there.
        force: allow overwriting existing files (the ``--force`` flag).
        option: the option named in the error message.
    """
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise RobustSNNError(f"{option} {p} is a file, not a folder; choose a folder")
    ensure_writable_dir(p, option=option)
    if not force:
        existing = sorted({str(f.name) for pat in patterns for f in p.glob(pat) if f.is_file()})
        if existing:
            shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
            raise RobustSNNError(f"{option} {p} already holds {shown}; pass --force to overwrite, or choose another folder")
    return p
