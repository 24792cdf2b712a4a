"""Fused multi-step LIF in Triton: all ``T`` steps of a layer in one kernel launch, forward and backward.

The CPU path of :class:`~robust_snn.neurons.lif.LIF` (``_FusedLIF``) already runs the whole
recurrence without an autograd graph, but it launches a few element-wise kernels per time
step; on a GPU those launches, not the arithmetic, set the pace (issue 19: PGD-10 on an H200
was launch-bound at 3.1x the snnTorch loop). Here one program keeps a block of neurons'
membrane potentials in registers and walks over time, so a layer costs one launch forward
and one backward, and the only ``[T, B, ...]`` tensors are the spikes and the membrane trace
BPTT needs. No library offers this for snnTorch's neuron: SpikingJelly's Triton/CuPy kernels
are written for its own neuron classes, surrogates and reset conventions, so we write our own.

Semantics are exactly those of ``_fast_lif_forward`` / ``snn.Leaky`` (``reset_delay=True``):
the same operations in the same order, with floating-point contraction switched off
(``enable_fp_fusion=False``), so spikes and membranes are bit-identical to the CPU path; the
backward is the same exact BPTT with the surrogate derivative computed in the kernel for
``fast_sigmoid``, ``atan``, ``sigmoid``, ``triangular`` and ``straight_through``. The
input-dependent surrogates (``pdsg``, ``assg``: per-sample membrane statistics) get their
derivative computed in torch first and read by the kernel. Only float32 runs here (Triton
passes scalars as float32, so float64 would round ``beta`` differently); other dtypes, ALIF
and Synaptic neurons and learnable ``beta``/threshold take the existing paths.

Used automatically for CUDA tensors when Triton is installed (``ROBUST_SNN_TRITON=0``
switches it off). On CPU it runs under Triton's interpreter (``TRITON_INTERPRET=1``, set
before Triton is imported) when ``ROBUST_SNN_TRITON=1``: that is how CI tests it.

Shape: input currents ``[T, B, ...]`` (or ``[B, ...]`` for a static input) -> spikes and
membranes ``[T, B, ...]``.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Callable, Optional, Tuple

import torch

from .buffers import _empty_seq, _like

try:  # torch's Linux wheels bring Triton; elsewhere the torch paths run
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the platform
    triton = None
    tl = None

#: in-kernel surrogate derivatives; anything else is precomputed in torch (``PRECOMPUTED``)
SURROGATE_CODES = {"fast_sigmoid": 0, "atan": 1, "sigmoid": 2, "triangular": 3, "straight_through": 4}
PRECOMPUTED = 5
_PARAM = {"fast_sigmoid": "slope", "atan": "alpha", "sigmoid": "slope", "triangular": "width"}
BLOCK = 1024


def interpreting() -> bool:
    """Whether Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


#: the kernels address ``[T, N]`` tensors with 32-bit offsets: larger sequences take the torch path
MAX_ELEMENTS = 2**31 - 1


def enabled_for(x: torch.Tensor, *, elements: Optional[int] = None) -> bool:
    """Whether the Triton kernels run for ``x``: float32 on CUDA by default, on CPU only under the interpreter.

    ``elements``: the size of the ``[T, B, ...]`` sequence (default ``x.numel()``; a static input's
    is T times larger). ``ROBUST_SNN_TRITON=0`` switches the kernels off everywhere, ``=1`` on under
    the interpreter for CPU tensors.
    """
    if triton is None or x.dtype != torch.float32 or (elements if elements is not None else x.numel()) > MAX_ELEMENTS:
        return False
    flag = os.environ.get("ROBUST_SNN_TRITON", "")
    if flag == "0":
        return False
    if x.is_cuda:
        return True
    return flag == "1" and interpreting() and x.device.type == "cpu"


def surrogate_code(spike_fn: Callable) -> Tuple[int, float]:
    """``(code, parameter)`` of a spike function built by :func:`robust_snn.surrogates.make_spike_fn`."""
    name = getattr(spike_fn, "surrogate_name", None)
    params = getattr(spike_fn, "surrogate_params", {}) or {}
    if name in SURROGATE_CODES:
        key = _PARAM.get(name)
        return SURROGATE_CODES[name], float(params[key]) if key else 0.0
    return PRECOMPUTED, 0.0


if triton is not None:

    def _lif_fwd_kernel(cur_ptr, spk_ptr, mem_ptr, N, T: tl.constexpr, beta, thr,
                        STATIC: tl.constexpr, RESET: tl.constexpr, KEEP_MEM: tl.constexpr, BLOCK: tl.constexpr):
        # one program: BLOCK neurons over all T steps; step t of a [T, N] tensor starts at t * N
        # (T is a constexpr, one compile per number of steps: as a runtime scalar it reaches `range` as a
        # one-element array under Triton < 3.8's interpreter, which NumPy >= 2.4 refuses to turn into an int)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        c = tl.load(cur_ptr + offs, mask=mask, other=0.0)
        mem = c  # step 0 from zero state: beta * 0 + cur - 0 * thr == cur
        spk = (mem > thr).to(c.dtype)
        tl.store(spk_ptr + offs, spk, mask=mask)
        if KEEP_MEM:
            tl.store(mem_ptr + offs, mem, mask=mask)
        for t in range(1, T):
            if not STATIC:
                c = tl.load(cur_ptr + t * N + offs, mask=mask, other=0.0)
            if RESET == 1:  # zero: beta * ((1 - s) * mem) + cur, as prev - s * prev (exact for s in {0, 1})
                mem = (mem - spk * mem) * beta
            else:
                mem = mem * beta
            mem = mem + c
            if RESET == 0:  # subtract
                mem = mem - spk * thr
            spk = (mem > thr).to(c.dtype)
            tl.store(spk_ptr + t * N + offs, spk, mask=mask)
            if KEEP_MEM:
                tl.store(mem_ptr + t * N + offs, mem, mask=mask)

    def _lif_bwd_kernel(mem_ptr, spk_ptr, gspk_ptr, gmem_ptr, d_ptr, gcur_ptr, N, T: tl.constexpr, beta, thr, p,
                        HAS_GSPK: tl.constexpr, HAS_GMEM: tl.constexpr, STATIC: tl.constexpr, RESET: tl.constexpr,
                        SURR: tl.constexpr, BLOCK: tl.constexpr):
        # g_mem[t] = g_spk[t] * s'(mem[t] - thr) + g_mem_out[t] + g_mem[t+1] * dmem[t+1]/dmem[t]
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        zero = tl.full([BLOCK], 0.0, tl.float32)  # (not mem * 0: NaN where a membrane is infinite)
        carry = zero
        g_sum = zero
        for i in range(T):
            t = T - 1 - i
            gm = zero
            if HAS_GSPK:
                if SURR == 5:
                    d = tl.load(d_ptr + t * N + offs, mask=mask, other=0.0)
                else:
                    u = tl.load(mem_ptr + t * N + offs, mask=mask, other=0.0) - thr
                    if SURR == 0:  # fast sigmoid: 1 / (k|u| + 1)^2
                        d = tl.abs(u) * p + 1.0
                        d = 1.0 / (d * d)
                    elif SURR == 1:  # atan: (a/2) / (1 + (pi/2 a u)^2)
                        d = u * (1.5707963267948966 * p)
                        d = (p / 2) / (d * d + 1.0)
                    elif SURR == 2:  # sigmoid: k s(ku) (1 - s(ku))
                        # stable logistic (tl.sigmoid is a jitted helper the interpreter cannot call)
                        e = tl.exp(-tl.abs(u * p))
                        s = tl.where(u * p >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
                        d = s * (1.0 - s) * p
                    elif SURR == 3:  # triangular: max(0, 1 - |u|/w) / w
                        d = tl.maximum(1.0 - tl.abs(u) / p, 0.0) / p
                    else:  # straight-through
                        d = zero + 1.0
                gm = tl.load(gspk_ptr + t * N + offs, mask=mask, other=0.0) * d
            if HAS_GMEM:
                gm = gm + tl.load(gmem_ptr + t * N + offs, mask=mask, other=0.0)
            gm = gm + carry
            if STATIC:
                g_sum = g_sum + gm
            else:
                tl.store(gcur_ptr + t * N + offs, gm, mask=mask)
            carry = gm * beta
            if RESET == 1:  # zero reset: dmem[t]/dmem[t-1] = beta * (1 - spk[t-1])
                s_prev = tl.load(spk_ptr + (t - 1) * N + offs, mask=mask & (t > 0), other=0.0)
                carry = carry - s_prev * gm * beta
        if STATIC:
            tl.store(gcur_ptr + offs, g_sum, mask=mask)


_KERNELS: dict = {}


def _kernels() -> Tuple[Callable, Callable]:
    """The jitted forward and backward kernels, built on first use (and again if ``TRITON_INTERPRET`` changed:
    Triton decides between compiling and interpreting when a function is jitted)."""
    key = interpreting()
    if key not in _KERNELS:
        _KERNELS[key] = (triton.jit(_lif_fwd_kernel), triton.jit(_lif_bwd_kernel))
    return _KERNELS[key]


def _dense_step(x: torch.Tensor) -> bool:
    """One time step (or a static input) laid out densely: contiguous or channels-last."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def _on(x: torch.Tensor):
    """Launch on ``x``'s GPU (Triton launches on the current device), or nothing for CPU tensors."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _grid(n: int) -> Tuple[int]:
    return (max(1, math.ceil(n / BLOCK)),)


class TritonLIF(torch.autograd.Function):
    """Whole-sequence LIF, forward and exact BPTT backward, one Triton launch each.

    Same arguments and results as ``robust_snn.neurons.lif._FusedLIF``: ``(cur, beta, thr,
    reset, spike_fn, num_steps, static, keep_mem) -> (spk_seq, mem_seq)``, reset codes 0
    subtract, 1 zero, 2 none. A static ``cur`` is ``[B, ...]`` and its gradient the sum over time.
    """

    @staticmethod
    def forward(ctx, cur, beta, thr, reset, spike_fn, num_steps, static, keep_mem):  # type: ignore[override]
        T = int(num_steps)
        step = cur if static else cur[0]
        if not _dense_step(step) or (not static and cur.stride(0) != step.numel()):
            cur = cur.contiguous()
            step = cur if static else cur[0]
        n = step.numel()
        spk_seq = _empty_seq(T, step)
        mem_seq = _empty_seq(T, step) if keep_mem else spk_seq.new_empty(0)
        if n:
            with _on(cur):
                _kernels()[0][_grid(n)](cur, spk_seq, mem_seq if keep_mem else spk_seq, n, T, float(beta), float(thr),
                                        STATIC=bool(static), RESET=int(reset), KEEP_MEM=bool(keep_mem), BLOCK=BLOCK,
                                        enable_fp_fusion=False)
        ctx.save_for_backward(mem_seq, spk_seq if reset == 1 else None)
        ctx.set_materialize_grads(False)
        ctx.reset, ctx.spike_fn, ctx.beta, ctx.thr, ctx.static = int(reset), spike_fn, float(beta), float(thr), bool(static)
        return spk_seq, mem_seq

    @staticmethod
    def backward(ctx, g_spk, g_mem):  # type: ignore[override]
        mem_seq, spk_seq = ctx.saved_tensors
        none = (None,) * 7
        if g_spk is None and g_mem is None:
            return (None, *none)
        T, n = mem_seq.shape[0], mem_seq[0].numel()
        g_spk, g_mem = _like(g_spk, mem_seq), _like(g_mem, mem_seq)
        code, p = surrogate_code(ctx.spike_fn)
        d_seq: Optional[torch.Tensor] = None
        if g_spk is not None and code == PRECOMPUTED:  # input-dependent (or unknown) surrogate: torch computes s'(u)
            d_seq = _derivative_seq(ctx.spike_fn, mem_seq, ctx.thr)
        g_cur = torch.empty_like(mem_seq[0]) if ctx.static else _empty_seq(T, mem_seq[0])
        if n:
            dummy = mem_seq
            with _on(mem_seq):
                _kernels()[1][_grid(n)](mem_seq, spk_seq if spk_seq is not None else dummy,
                                        g_spk if g_spk is not None else dummy, g_mem if g_mem is not None else dummy,
                                        d_seq if d_seq is not None else dummy, g_cur, n, T, ctx.beta, ctx.thr, p,
                                        HAS_GSPK=g_spk is not None, HAS_GMEM=g_mem is not None, STATIC=ctx.static,
                                        RESET=ctx.reset, SURR=code, BLOCK=BLOCK, enable_fp_fusion=False)
        return (g_cur, *none)


def _derivative_seq(spike_fn: Callable, mem_seq: torch.Tensor, thr: float) -> torch.Tensor:
    """``s'(mem - thr)`` for every step, from the spike function's in-place derivative (per step) or its autograd backward."""
    derivative = getattr(spike_fn, "derivative_", None)
    u = mem_seq - thr
    if derivative is not None:
        for t in range(u.shape[0]):  # per step: PDSG/ASSG take their statistics per sample and step
            derivative(u[t])
        return u
    with torch.enable_grad():
        u = u.requires_grad_(True)
        (d,) = torch.autograd.grad(spike_fn(u), u, grad_outputs=torch.ones_like(u))
    return d
