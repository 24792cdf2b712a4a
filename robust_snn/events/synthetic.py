"""Synthetic N-MNIST: an event-camera simulator replaying the N-MNIST recording protocol on MNIST digits.

**Synthetic, not the real recordings.** N-MNIST (Orchard et al. 2015,
https://doi.org/10.3389/fnins.2015.00437) was recorded by an ATIS camera on a pan-tilt unit
looking at MNIST digits on a monitor, moving in three saccades along a triangle (~100 ms
each, ~300 ms per digit), on a 34×34 pixel window. This module simulates that: the digit is
placed on a 34×34 sensor and moved along the same triangle, each pixel emits an ON (OFF)
event when its log intensity has risen (fallen) by more than a contrast threshold since its
last event, with a refractory period, optional background-activity noise and per-event
timestamp jitter. It differs from the real recordings in what no simulator here can know:
the monitor's refresh and blur, the ATIS's per-pixel threshold mismatch and latency, the
exact saccade speed profile and the real sensor noise. Deterministic given a seed.

Files are written in N-MNIST's binary format (5 bytes per event: x, y, polarity bit and a
23-bit µs timestamp), in tonic's folder layout (``NMNIST/Train/<digit>/<index>.bin``,
``NMNIST/Test/...``), so tonic's own reader (``tonic.io.read_mnist_file``) and dataset read
them like the real ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np

from ..errors import RobustSNNError

SENSOR = 34  # N-MNIST's sensor window (pixels)
#: saccade triangle: offsets of the digit's top-left corner on the sensor (x, y), visited in order and back to the start
TRIANGLE = ((0.0, 6.0), (3.0, 0.0), (6.0, 6.0))
SACCADE_MS = 100
SPLIT_FOLDERS = {"train": "Train", "test": "Test"}
#: file `make-nmnist` leaves in ``NMNIST/``: a synthetic training split may be tested on the synthetic test split
SYNTHETIC_MARKER = "SYNTHETIC"


@dataclass(frozen=True)
class SensorModel:
    """The simulated camera.

    Attributes:
        contrast: log-intensity change that triggers an event.
        refractory_ms: a pixel's dead time after an event.
        noise_hz: background-activity events per pixel per second (0: none).
        floor: added to intensities before the log (dark pixels are not infinitely sensitive).
        dt_ms: simulation step.
    """

    contrast: float = 0.5  # ~5,000 events per digit, the order of the real recordings
    refractory_ms: float = 1.0
    noise_hz: float = 0.0
    floor: float = 0.05
    dt_ms: float = 1.0


def saccade_path(num_steps: int) -> np.ndarray:
    """Digit offsets ``[num_steps, 2]`` (x, y) along the three saccades, piecewise linear."""
    per = num_steps // 3
    pts = list(TRIANGLE) + [TRIANGLE[0]]
    out = []
    for leg in range(3):
        (x0, y0), (x1, y1) = pts[leg], pts[leg + 1]
        n = per if leg < 2 else num_steps - 2 * per
        a = np.arange(n) / max(n, 1)
        out.append(np.stack([x0 + a * (x1 - x0), y0 + a * (y1 - y0)], 1))
    return np.concatenate(out)


def render(digit: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Frames ``[T, 34, 34]``: the digit ``[28, 28]`` (values in [0, 1]) at each sub-pixel offset (bilinear)."""
    h, w = digit.shape
    frames = np.zeros((len(path), SENSOR, SENSOR), dtype=np.float32)
    ix, iy = np.floor(path[:, 0]).astype(int), np.floor(path[:, 1]).astype(int)
    fx, fy = (path[:, 0] - ix).astype(np.float32), (path[:, 1] - iy).astype(np.float32)
    for t in range(len(path)):
        for dy, wy in ((0, 1 - fy[t]), (1, fy[t])):
            for dx, wx in ((0, 1 - fx[t]), (1, fx[t])):
                if wx * wy == 0:
                    continue
                y0, x0 = iy[t] + dy, ix[t] + dx
                frames[t, y0:y0 + h, x0:x0 + w] += wx * wy * digit[: SENSOR - y0, : SENSOR - x0]
    return frames


def simulate(digit: np.ndarray, *, seed: int, sensor: SensorModel = SensorModel()) -> Dict[str, np.ndarray]:
    """Events of one digit: a dict of equal-length arrays ``x``, ``y``, ``t`` (µs, sorted) and ``p`` (1 ON, 0 OFF)."""
    rng = np.random.default_rng(seed)
    num_steps = int(round(3 * SACCADE_MS / sensor.dt_ms))
    frames = render(np.asarray(digit, dtype=np.float32), saccade_path(num_steps))
    log_i = np.log(frames + sensor.floor)
    ref = log_i[0].copy()  # each pixel's log intensity at its last event
    last = np.full(ref.shape, -np.inf)  # time of each pixel's last event (ms)
    xs, ys, ts, ps = [], [], [], []
    for k in range(1, num_steps):
        now = k * sensor.dt_ms
        diff = log_i[k] - ref
        ready = (now - last) >= sensor.refractory_ms
        on = ready & (diff > sensor.contrast)
        off = ready & (diff < -sensor.contrast)
        for mask, pol in ((on, 1), (off, 0)):
            yy, xx = np.nonzero(mask)
            if len(yy):
                xs.append(xx)
                ys.append(yy)
                ts.append(np.full(len(yy), now))
                ps.append(np.full(len(yy), pol))
        fired = on | off
        ref[fired] += np.sign(diff[fired]) * sensor.contrast  # one event per step; a large change keeps firing
        last[fired] = now
    if sensor.noise_hz > 0:
        n = rng.poisson(sensor.noise_hz * SENSOR * SENSOR * num_steps * sensor.dt_ms / 1000)
        xs.append(rng.integers(0, SENSOR, n))
        ys.append(rng.integers(0, SENSOR, n))
        ts.append(rng.uniform(0, num_steps * sensor.dt_ms, n))
        ps.append(rng.integers(0, 2, n))
    if not xs:
        return {k: np.zeros(0, dtype=np.int64) for k in ("x", "y", "t", "p")}
    x, y, p = (np.concatenate(a).astype(np.int64) for a in (xs, ys, ps))
    t_ms = np.concatenate(ts).astype(np.float64)
    t = np.floor((t_ms + rng.uniform(0, sensor.dt_ms, len(t_ms))) * 1000).astype(np.int64)  # jitter inside the step
    order = np.lexsort((x, y, t))
    return {"x": x[order], "y": y[order], "t": t[order], "p": p[order]}


def encode_nmnist(events: Dict[str, np.ndarray]) -> bytes:
    """N-MNIST's binary format: 5 bytes per event (x, y, polarity << 7 | t[22:16], t[15:8], t[7:0])."""
    x, y, t, p = (np.asarray(events[k], dtype=np.int64) for k in ("x", "y", "t", "p"))
    if len(t) and (t.min() < 0 or t.max() >= 2**23):
        raise RobustSNNError("N-MNIST timestamps must fit in 23 bits (0 to 8.39 s)")
    if len(x) and (x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() >= 240):
        raise RobustSNNError("N-MNIST coordinates must be bytes, and y = 240 is reserved for overflow markers")
    raw = np.empty((len(t), 5), dtype=np.uint8)
    raw[:, 0], raw[:, 1] = x, y
    raw[:, 2] = (p.astype(np.uint8) << 7) | ((t >> 16) & 0x7F).astype(np.uint8)
    raw[:, 3] = (t >> 8) & 0xFF
    raw[:, 4] = t & 0xFF
    return raw.tobytes()


EVENT_DTYPE = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])


def to_frames(events: Dict[str, np.ndarray] | np.ndarray, num_steps: int) -> np.ndarray:
    """Binary frames ``[num_steps, 2, 34, 34]`` (bool): a bin is set where a pixel had an event of that polarity.

    tonic's ``ToFrame`` with ``num_steps`` time bins over the sample's own time span, on a dict
    from :func:`simulate` or a structured array from ``tonic.io.read_mnist_file``: the same
    frames for a simulated digit as for its ``.bin`` file read back (the format is lossless).
    """
    import tonic

    if isinstance(events, dict):
        arr = np.empty(len(events["t"]), dtype=EVENT_DTYPE)
        for k in ("x", "y", "t", "p"):
            arr[k] = events[k]
        events = arr
    if not len(events):
        return np.zeros((int(num_steps), 2, SENSOR, SENSOR), dtype=bool)
    return tonic.transforms.ToFrame(sensor_size=(SENSOR, SENSOR, 2), n_time_bins=int(num_steps))(events) > 0


def digit_seed(seed: int, index: int) -> int:
    """The simulator seed of digit ``index`` of a split (as :func:`make_nmnist` names its files)."""
    return seed * 1_000_003 + index
