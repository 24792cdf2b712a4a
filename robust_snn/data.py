"""Datasets as in-memory tensors: images ``[N, C, H, W]`` float in [0, 1], labels ``[N]`` int64.

Lookup order for a split: the data directory (``--data-dir``, else the
``ROBUST_SNN_DATA`` environment variable, else ``~/.cache/robust-snn``) in
torchvision's layout (``MNIST/raw/...``); for the MNIST test split the copy
bundled with the package (MNIST, LeCun, Cortes and Burges, CC BY-SA 3.0);
finally torchvision's download, if allowed.

N-MNIST (event frames ``[N, T, 2, 34, 34]``): tonic's layout under the data directory
(``NMNIST/Train|Test/<digit>/*.bin``, real or written by ``robust-snn make-nmnist``); without
test files there, the test split is **synthetic N-MNIST** simulated from the bundled MNIST test
split (:func:`synthetic_event_frames`: deterministic, offline, cached under
:func:`cache_dir`), and a warning says so.
"""
from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .errors import RobustSNNError

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).resolve().parent / "data"
ENV_VAR = "ROBUST_SNN_DATA"
#: cache root for generated data (default ``$XDG_CACHE_HOME/robust-snn``, else ``~/.cache/robust-snn``)
CACHE_ENV_VAR = "ROBUST_SNN_CACHE"
#: simulator seed of the synthetic N-MNIST offline default (``make-nmnist --seed 0`` writes the same events)
SYNTHETIC_SEED = 0


def synthetic_note(split: str = "test") -> str:
    """How results name the synthetic N-MNIST split (results JSON ``"data"``, logs)."""
    return f"synthetic N-MNIST (generated from the MNIST {split} split; not the real recordings)"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str  # torchvision class name / folder
    in_channels: int
    image_size: Tuple[int, int]
    classes: Tuple[str, ...]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    input: str = "image"  # "events": [N, T, P, H, W] binary event frames (T = the model's num_steps)


DATASETS: Dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", "MNIST", 1, (28, 28), tuple(str(i) for i in range(10)), (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", "FashionMNIST", 1, (28, 28),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (0.2860,), (0.3530,),
    ),
    "cifar10": DatasetInfo(
        "cifar10", "CIFAR10", 3, (32, 32),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ),
    # N-MNIST events (tonic's layout NMNIST/Train|Test/<digit>/*.bin; `robust-snn make-nmnist` writes a synthetic one)
    "nmnist": DatasetInfo("nmnist", "NMNIST", 2, (34, 34), tuple(str(i) for i in range(10)), (0.0,), (1.0,), input="events"),
}

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def dataset_info(name: str) -> DatasetInfo:
    """Static facts (shape, classes, normalization) of a dataset by name."""
    if name not in DATASETS:
        raise RobustSNNError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def default_data_dir() -> Path:
    """``$ROBUST_SNN_DATA`` if set, else ``~/.cache/robust-snn``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robust-snn"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise RobustSNNError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise RobustSNNError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise RobustSNNError(f"{path} is truncated or corrupt ({arr.size} values, header says {dims})")
    return arr.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Optional[Path]:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _load_idx_split(folder: Path, split: str) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    img_stem, lbl_stem = _IDX_FILES[split]
    img, lbl = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
    if img is None or lbl is None:
        return None
    images = read_idx(img)
    labels = read_idx(lbl)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise RobustSNNError(f"IDX files in {folder} do not form an image/label pair")
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def bundled_test_split() -> Tuple[torch.Tensor, torch.Tensor]:
    """The 10k MNIST test images and labels shipped inside the package."""
    found = _load_idx_split(BUNDLED_DIR, "test")
    if found is None:
        raise RobustSNNError(f"the bundled MNIST test split is missing from {BUNDLED_DIR}; reinstall robust-snn")
    return found


def load_split(
    dataset: str = "mnist",
    split: str = "test",
    *,
    data_dir: Optional[str | os.PathLike] = None,
    download: bool = True,
    limit: Optional[int] = None,
    num_steps: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Load one split as tensors.

    Args:
        dataset: ``mnist``, ``fashion-mnist``, ``cifar10`` or ``nmnist`` (without N-MNIST test files under
            the data directory, its test split is synthetic: :func:`synthetic_event_frames`).
        split: ``train`` or ``test``.
        data_dir: torchvision-layout root; default :func:`default_data_dir`.
        download: allow torchvision to download when nothing local is found.
        limit: keep only the first ``limit`` examples.
        num_steps: time bins of event datasets (the model's T; default 8).

    Returns:
        ``(x, y)`` with ``x`` ``[N, C, H, W]`` float in [0, 1] (event datasets: ``[N, T, P, H, W]``
        binary event frames) and ``y`` ``[N]`` int64.
    """
    info = dataset_info(dataset)
    if split not in ("train", "test"):
        raise RobustSNNError(f"unknown split {split!r}; use 'train' or 'test'")
    if limit is not None and limit < 1:
        raise RobustSNNError(f"--limit must be >= 1 (a positive number; leave it out for the whole split), got {limit}")
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if info.input == "events":
        if split == "test" and not has_event_files(root, split):
            if data_dir and not root.is_dir():
                raise RobustSNNError(f"--data-dir {root} does not exist (leave --data-dir out to use the synthetic N-MNIST test split)")
            from .events.synthetic import SYNTHETIC_MARKER

            nm = root / "NMNIST"
            if nm.is_dir() and not (nm / SYNTHETIC_MARKER).exists():
                # real N-MNIST without its test split: never test a model of real data on synthetic digits
                raise RobustSNNError(f"{root / 'NMNIST'} has no Test files (tonic's layout NMNIST/Test/<digit>/*.bin); complete "
                                     "it with tonic.datasets.NMNIST(save_to=DIR, train=False), or point --data-dir elsewhere "
                                     "(a folder without NMNIST/, or one make-nmnist wrote, gives the synthetic test split)")
            log.warning("no N-MNIST test files under %s: using %s", root / "NMNIST", synthetic_note("test"))
            return synthetic_event_frames("test", num_steps=num_steps or 8, limit=limit)
        return load_event_frames(root, split, num_steps=num_steps or 8, limit=limit)
    found = None
    if info.folder in ("MNIST", "FashionMNIST"):
        found = _load_idx_split(root / info.folder / "raw", split)
        if found is None and dataset == "mnist" and split == "test":
            found = bundled_test_split()
            log.info("using the MNIST test split bundled with robust-snn")
    if found is None:
        found = _torchvision_split(info, root, split, download)
    x, y = found
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


def _event_folder(root: Path, split: str) -> Path:
    return Path(root) / "NMNIST" / ("Train" if split == "train" else "Test")


def has_event_files(root: str | os.PathLike, split: str) -> bool:
    """True if ``root`` holds N-MNIST ``split`` files in tonic's layout (``NMNIST/Train|Test/<digit>/*.bin``)."""
    folder = _event_folder(Path(root), split)
    return any(next((folder / str(d)).glob("*.bin"), None) is not None for d in range(10))


def data_source(dataset: str, split: str = "test", *, data_dir: Optional[str | os.PathLike] = None) -> str:
    """One line naming what :func:`load_split` reads for ``(dataset, split, data_dir)`` (for logs and results JSON)."""
    info = dataset_info(dataset)
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if info.input == "events":
        if has_event_files(root, split):
            return f"N-MNIST {split} files under {_event_folder(root, split)} (tonic's layout)"
        return synthetic_note(split) if split == "test" else f"no N-MNIST {split} files under {_event_folder(root, split)}"
    if info.folder in ("MNIST", "FashionMNIST") and _find_idx(root / info.folder / "raw", _IDX_FILES[split][0]):
        return f"{info.folder} {split} split under {root / info.folder / 'raw'}"
    if dataset == "mnist" and split == "test":
        return "MNIST test split bundled with robust-snn"
    return f"{info.folder} {split} split (torchvision, under {root})"


def cache_dir() -> Path:
    """``$ROBUST_SNN_CACHE`` if set, else ``$XDG_CACHE_HOME/robust-snn``, else ``~/.cache/robust-snn``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "robust-snn"


def _simulator_key() -> str:
    """Changes whenever the simulator, its defaults or tonic's binning could change the frames."""
    import hashlib

    import tonic

    from .events import synthetic

    h = hashlib.sha1(Path(synthetic.__file__).read_bytes())
    h.update(f"{tonic.__version__} {synthetic.SensorModel()!r}".encode())
    return h.hexdigest()[:12]


def synthetic_event_frames(split: str = "test", *, num_steps: int = 8, limit: Optional[int] = None, seed: int = SYNTHETIC_SEED,
                           data_dir: Optional[str | os.PathLike] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Synthetic N-MNIST frames ``[N, T, 2, 34, 34]`` simulated from the MNIST ``split``, in MNIST order.

    Sample ``i`` is MNIST image ``i`` through the event-camera simulator
    (:mod:`robust_snn.events.synthetic`, seed :func:`~robust_snn.events.synthetic.digit_seed`),
    binned as :func:`load_event_frames` bins files: exactly the frames of the file
    ``make-nmnist --seed SEED`` writes for that image; labels are the MNIST labels. Only the
    first ``limit`` samples are simulated (about 10 ms each on one core). They are cached as
    packed bits under ``cache_dir()/nmnist-synthetic`` (written atomically; a later, longer
    request simulates only the missing samples); an unwritable cache just means no cache. The
    test split comes from the bundled MNIST copy when ``data_dir`` has none: no network.
    """
    from .events.synthetic import digit_seed, simulate, to_frames

    images, labels = load_split("mnist", split, data_dir=data_dir, download=False)
    n = len(labels) if limit is None else min(int(limit), len(labels))
    T = int(num_steps)
    shape = (T, 2, 34, 34)
    path = cache_dir() / "nmnist-synthetic" / f"{split}-T{T}-seed{seed}-{_simulator_key()}.npz"
    packed = _read_frame_cache(path, labels, shape)
    have = len(packed)
    if have < n:
        log.info("simulating synthetic N-MNIST %s samples %d to %d (T=%d)", split, have, n - 1, T)
        new = [np.packbits(to_frames(simulate(images[i, 0].numpy(), seed=digit_seed(seed, i)), T).reshape(-1))
               for i in range(have, n)]
        packed = np.concatenate([packed, np.stack(new)]) if have else np.stack(new)
        _write_frame_cache(path, packed, labels[: len(packed)].numpy())
    bits = np.unpackbits(packed[:n], axis=1, count=int(np.prod(shape)))
    x = torch.from_numpy(bits.reshape(n, *shape)).float()
    return x, labels[:n].clone()


def _read_frame_cache(path: Path, labels: torch.Tensor, shape: Tuple[int, ...]) -> np.ndarray:
    """Cached packed frames ``[n, bytes]`` (``n = 0`` when there is no usable cache)."""
    nbytes = (int(np.prod(shape)) + 7) // 8
    empty = np.zeros((0, nbytes), dtype=np.uint8)
    if not path.is_file():
        return empty
    try:
        with np.load(path, allow_pickle=False) as z:
            packed, cached_labels = z["frames"], z["labels"]
    except Exception as e:  # a damaged cache is only a cache: simulate again
        log.warning("ignoring the damaged synthetic N-MNIST cache %s (%s: %s)", path, type(e).__name__, e)
        return empty
    n = len(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != nbytes or n > len(labels) or \
            not np.array_equal(cached_labels, labels[:n].numpy()):
        log.warning("ignoring the synthetic N-MNIST cache %s: it does not match this split", path)
        return empty
    return packed


def _write_frame_cache(path: Path, packed: np.ndarray, labels: np.ndarray) -> None:
    from .utils import atomic_path

    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, frames=packed, labels=labels)
    except OSError as e:
        log.info("not caching synthetic N-MNIST at %s (%s); set %s to a writable folder", path, e, CACHE_ENV_VAR)


def load_event_frames(root: Path, split: str, *, num_steps: int, limit: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """N-MNIST files under ``root/NMNIST/<Train|Test>/<digit>/*.bin`` as binary frames ``[N, T, 2, 34, 34]``.

    Read with tonic (``read_mnist_file``, ``ToFrame`` with ``num_steps`` time bins), a bin set
    where a pixel had at least one event of that polarity. Files are taken in (digit folder,
    file name) order, interleaved across digits so that ``limit`` keeps the classes balanced.
    No download is attempted (tonic's ``NMNIST(save_to=..., train=...)`` does that for real
    recordings; ``robust-snn make-nmnist`` writes a synthetic set).
    """
    import tonic

    from .events.synthetic import EVENT_DTYPE, to_frames

    folder = _event_folder(root, split)
    per_digit = [sorted((folder / str(d)).glob("*.bin")) for d in range(10)]
    if not any(per_digit):
        raise RobustSNNError(f"no N-MNIST {split} files under {folder}; get the real ones with tonic "
                             f"(tonic.datasets.NMNIST(save_to=DIR)) or write synthetic ones: robust-snn make-nmnist --out {root} "
                             f"--split {split}")
    order = [(d, f) for k in range(max(len(p) for p in per_digit)) for d, files in enumerate(per_digit) if k < len(files)
             for f in [files[k]]]
    if limit is not None:
        order = order[:limit]
    x = torch.zeros((len(order), int(num_steps), 2, 34, 34), dtype=torch.float32)
    for i, (_, f) in enumerate(order):
        x[i] = torch.from_numpy(to_frames(tonic.io.read_mnist_file(str(f), dtype=EVENT_DTYPE), int(num_steps)))
    y = torch.tensor([d for d, _ in order], dtype=torch.long)
    return x, y


def _torchvision_split(info: DatasetInfo, root: Path, split: str, download: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    import torchvision

    cls = getattr(torchvision.datasets, info.folder)
    hint = (
        f"no {info.name} {split} split under {root}; pass --data-dir (or set {ENV_VAR}) to a "
        f"torchvision-layout root containing {info.folder}/"
    )
    try:
        ds = cls(root=str(root), train=(split == "train"), download=download)
    except RuntimeError:  # torchvision: "Dataset not found. You can use download=True ..."
        raise RobustSNNError(hint + ("" if download else ", or allow downloading")) from None
    except Exception as e:  # network failures during download
        raise RobustSNNError(f"{hint} (download failed: {type(e).__name__}: {e})") from None
    data = ds.data
    data = torch.as_tensor(np.asarray(data))
    if data.dim() == 3:
        data = data.unsqueeze(1)
    else:  # CIFAR: N, H, W, C
        data = data.permute(0, 3, 1, 2)
    x = data.float().div_(255.0).contiguous()
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return x, y


def split_validation(
    x: torch.Tensor, y: torch.Tensor, fraction: float, *, seed: int = 0
) -> Tuple[Tuple[torch.Tensor, torch.Tensor], Optional[Tuple[torch.Tensor, torch.Tensor]]]:
    """Deterministically hold out ``fraction`` of (x, y) for validation."""
    if not 0.0 <= fraction < 1.0:
        raise RobustSNNError(f"validation fraction must be in [0, 1), got {fraction}")
    n_val = int(round(len(x) * fraction))
    if n_val == 0:
        return (x, y), None
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, tr = perm[:n_val], perm[n_val:]
    return (x[tr], y[tr]), (x[val], y[val])

