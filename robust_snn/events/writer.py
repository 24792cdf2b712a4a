"""Write a synthetic N-MNIST split: MNIST digits through the event-camera simulator of
:mod:`robust_snn.events.synthetic`, as real N-MNIST ``.bin`` files in tonic's folder layout.

Kept apart from the simulator so that :mod:`robust_snn.data` can use the simulator (the
synthetic test split, the offline default for event checkpoints) without an import cycle.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple


from ..errors import RobustSNNError
from .synthetic import SPLIT_FOLDERS, SYNTHETIC_MARKER, SensorModel, digit_seed, encode_nmnist, simulate


def make_nmnist(out: str | os.PathLike, *, split: str = "test", limit: Optional[int] = None, seed: int = 0,
                data_dir: Optional[str] = None, sensor: SensorModel = SensorModel(), force: bool = False,
                progress: bool = False) -> Tuple[Path, int]:
    """Write synthetic N-MNIST ``.bin`` files for the MNIST ``split`` under ``out/NMNIST/<Train|Test>/<digit>/``.

    Args:
        out: the root folder (tonic's ``save_to``).
        split: ``train`` or ``test``.
        limit: only the first ``limit`` digits.
        seed: digit ``i`` uses seed ``seed * 1_000_003 + i``, so files are reproducible one by one.
        data_dir: MNIST location (the bundled test split when absent).
        force: overwrite existing files.

    Returns:
        ``(split folder, number of files written)``.
    """
    from ..data import load_split
    from ..utils import atomic_path, claim_outputs, progress_bar

    if split not in SPLIT_FOLDERS:
        raise RobustSNNError(f"unknown split {split!r}; use 'train' or 'test'")
    x, y = load_split("mnist", split, data_dir=data_dir, limit=limit)
    folder = Path(out) / "NMNIST" / SPLIT_FOLDERS[split]
    claim_outputs(folder, [f"{d}/*.bin" for d in range(10)], force=force)
    marker = Path(out) / "NMNIST" / SYNTHETIC_MARKER
    if not marker.exists():
        with atomic_path(marker) as tmp:
            tmp.write_text("synthetic N-MNIST written by `robust-snn make-nmnist` (not the real recordings)\n")
    written = 0
    for i in progress_bar(range(len(x)), enabled=progress, desc=f"synthetic N-MNIST {split}"):
        label = int(y[i])
        events = simulate(x[i, 0].numpy(), seed=digit_seed(seed, i), sensor=sensor)
        path = folder / str(label) / f"{i:05d}.bin"
        with atomic_path(path) as tmp:
            tmp.write_bytes(encode_nmnist(events))
        written += 1
    return folder, written
