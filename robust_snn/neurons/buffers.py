"""Time-major buffers ``[T, B, ...]`` whose time slices keep a layer's memory layout (shared by the fused LIF paths)."""
from __future__ import annotations

from typing import Optional

import torch


def _empty_seq(num_steps: int, like: torch.Tensor) -> torch.Tensor:
    """Uninitialized ``[T, *like.shape]`` buffer whose time slices have ``like``'s layout (channels-last kept)."""
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        flat = torch.empty((num_steps * like.shape[0], *like.shape[1:]), dtype=like.dtype, device=like.device,
                           memory_format=torch.channels_last)
        return flat.view(num_steps, *like.shape)
    return torch.empty((num_steps, *like.shape), dtype=like.dtype, device=like.device)


def _like(g: Optional[torch.Tensor], seq: torch.Tensor) -> Optional[torch.Tensor]:
    """``g`` with the memory layout of ``seq`` (``[T, B, ...]``), copied only if it differs."""
    if g is None or g.stride() == seq.stride():
        return g
    return _empty_seq(seq.shape[0], seq[0]).copy_(g)
