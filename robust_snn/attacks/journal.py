"""A journal of finished attack batches, so a long evaluation survives being stopped.

A full-split standard-suite run takes hours on a CPU. With a journal, every finished
chunk of every attack (the adversarial examples of the samples it attacked, their logits
and margins) is written to disk at once, and a rerun of the same evaluation loads it instead of attacking the
chunk again. Chunks are reseeded on their own (see :class:`~robust_snn.distributed.Chunks`),
so a resumed run gives exactly the numbers of an uninterrupted one, on any number of
processes; at most the chunk in flight is lost.

Entries are keyed by a fingerprint of everything that decides them (weights, seed, batch
size, the attack and its hyperparameters, the chunk, its images and which of them were
still robust, their clean logits), so an entry is never used for another evaluation: a
changed model, defense, seed, batch size, EOT or judging draws, robust_snn code or
torch/torchattacks version starts a new run folder beside the old one, changed attack
settings new entries. A run on the first N test images and a later one on all of them
share their first N // batch_size chunks.

(torch's own checkpointing stores models, not partial evaluations; torchattacks and
AutoAttack have nothing like it, hence this small module.)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .. import distributed
from ..errors import RobustSNNError
from ..utils import atomic_path, claim_outputs

log = logging.getLogger(__name__)

#: bump when the meaning of an entry changes: old journals are then ignored, not misread
FORMAT = 3


def _update(h: "hashlib._Hash", value: Any) -> None:
    """Feed ``value`` into ``h``: tensors by dtype, shape and bytes; everything else by its ``repr``."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, bytes):
        h.update(f"bytes:{len(value)}:".encode())
        h.update(value)
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            _update(h, k)
            _update(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}{len(value)}".encode())
        for v in value:
            _update(h, v)
    else:  # typed and length-prefixed: 1 then 16 never reads as 11 then 6
        r = repr(value)
        h.update(f"{type(value).__name__}:{len(r)}:{r};".encode())


_CODE: Optional[str] = None


def code_fingerprint() -> str:
    """The versions of torch (and its CUDA), torchattacks, snnTorch (spike-function gradients) and Triton (LIF kernels)
    and the bytes of every robust_snn source file: edited code or an upgrade starts a new run folder (run an
    evaluation that spans days from a fixed checkout)."""
    global _CODE
    if _CODE is None:
        import snntorch
        import torchattacks

        from ..neurons.triton_lif import triton

        root = Path(__file__).resolve().parent.parent
        files = sorted(root.rglob("*.py"))
        _CODE = fingerprint(torch.__version__, torch.version.cuda, torchattacks.__version__, snntorch.__version__,
                            getattr(triton, "__version__", None), [(str(f.relative_to(root)), f.read_bytes()) for f in files])
    return _CODE


def backend_fingerprint(*models: Optional[torch.nn.Module], device: torch.device, graphs: Optional[str]) -> str:
    """What computes the forward and backward passes without changing the weights: the devices (the GPU models of
    every rank, not only ``cuda``), CUDA-graph replay, the Triton switch, and the fast paths (fused LIF, channels-last)
    of every module of each of ``models`` (``None``: no such model), wrappers (defenses) included. Each can move a
    membrane potential sitting at the threshold, so a run resumed with another one starts afresh. A collective under
    torchrun: call it on every rank."""
    from ..neurons.base import SpikingNeuron

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    names = sorted(set(distributed.all_gather_object(name)))  # one key on every rank, whichever GPU each one has
    fast = [None if model is None else ([bool(m.channels_last) for m in model.modules() if hasattr(m, "channels_last")],
                                        [bool(m.fused) for m in model.modules() if isinstance(m, SpikingNeuron)])
            for model in models]
    return fingerprint(names, ("graphs", graphs), ("triton", os.environ.get("ROBUST_SNN_TRITON", "")), fast)


def fingerprint(*parts: Any) -> str:
    """A SHA-256 hex digest of ``parts`` (tensors by their exact bytes)."""
    h = hashlib.sha256()
    _update(h, parts)
    return h.hexdigest()


def model_fingerprint(model: Optional[torch.nn.Module]) -> str:
    """Weights, buffers and structure (``repr``: layers, surrogates, preprocessors) of ``model``."""
    if model is None:
        return "none"
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    return fingerprint(repr(model), state, getattr(model, "config", None), getattr(model, "num_steps", None))


class Journal:
    """Finished chunks of one evaluation, in ``root/<run fingerprint>/``.

    Args:
        root: the folder the user named (``attack --journal``); created if missing.
        run_key: the fingerprint of the evaluation (code, model, seed, batch size, ...; the data is in each chunk's key).
        describe: what to write to ``run.json`` for a human reading the folder.
    """

    def __init__(self, root: str | os.PathLike, run_key: str, *, describe: Optional[Dict[str, Any]] = None) -> None:
        # a writable folder (a file there refused), like every output folder; its own files are never claimed
        self.dir = claim_outputs(root, (), option="--journal") / run_key[:24]
        (self.dir / "chunks").mkdir(parents=True, exist_ok=True)
        manifest = self.dir / "run.json"
        if not manifest.exists() and distributed.info().is_main:  # for a human opening the folder; rank 0 alone writes it
            with atomic_path(manifest) as tmp:
                tmp.write_text(json.dumps({"format": FORMAT, "fingerprint": run_key, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                           **(describe or {})}, indent=2, default=str) + "\n")
        self.run_key = run_key
        self.reused = 0
        self.written = 0

    def _path(self, key: str) -> Path:
        return self.dir / "chunks" / f"{key[:32]}.pt"

    def load(self, key: str, like: Dict[str, torch.Tensor], *,
             same: Optional[Dict[str, torch.Tensor]] = None) -> Optional[Dict[str, torch.Tensor]]:
        """The entry ``key`` if it holds a tensor of the same shape and dtype for each of ``like``, and equal to each
        of ``same``; else ``None`` (never written, unreadable or damaged: then the chunk is attacked again)."""
        like = {**like, **(same or {})}
        p = self._path(key)
        if not p.is_file():
            return None
        try:
            entry = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file costs one chunk of work, not the run
            log.warning("journal entry %s is unreadable (%s); attacking that chunk again", p, e)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or not all(
                isinstance(entry.get(k), torch.Tensor) and entry[k].shape == v.shape and entry[k].dtype == v.dtype
                for k, v in like.items()) or not all(torch.equal(entry[k], v) for k, v in (same or {}).items()):
            log.warning("journal entry %s does not hold this chunk's results; attacking that chunk again", p)
            return None
        self.reused += 1
        return entry

    def save(self, key: str, **tensors: torch.Tensor) -> None:
        """Write the entry ``key`` atomically (a stopped write leaves no entry behind)."""
        entry = {"key": key, **{k: v.detach().cpu().clone() for k, v in tensors.items()}}
        try:
            with atomic_path(self._path(key)) as tmp:
                torch.save(entry, tmp)
        except (OSError, RuntimeError) as e:  # torch.save's C++ writer reports a full disk as a RuntimeError
            raise RobustSNNError(f"--journal {self.dir}: cannot record a finished batch "
                                 f"({getattr(e, 'strerror', None) or e}); what is "
                                 "recorded is kept: free space (or fix permissions) and run the same command again") from None
        self.written += 1

    def chunk_key(self, *parts: Any) -> str:
        """The key of one chunk of one attack: the run's fingerprint and what decides this chunk."""
        return fingerprint(FORMAT, self.run_key, *parts)
