"""Sealed datasets in a stock PyTorch training script.

Inside the trusted zone, a training script swaps its dataset lines and its save line::

    from blindfold.torch import SealedDataset, save_sealed

    train = SealedDataset("s3://bucket/fashion", "train", broker="https://owner:8443",
                          ca_cert="broker.pem", tee="tsm", job="lenet5")
    loader = DataLoader(train, batch_size=64, shuffle=True, num_workers=2)
    ...                                    # the usual PyTorch training loop
    save_sealed(model.state_dict(), out="s3://bucket/model", dataset=train)

What happens underneath (docs/threat-model.md, "The PyTorch bridge"):

- ``SealedDataset(...)`` attests to the owner's broker, receives the dataset key, and
  checks the sealed manifest against the version the owner registered (an older one is
  a rollback, another one a fork: :class:`~blindfold.IntegrityError`).
- Records are authenticated chunk by chunk and decrypted into memory that Rust owns.
  ``ds[i]`` returns ``(features, label)``: the features are a zero-copy view of that
  memory, the label a Python number. ``close()`` wipes it at once; otherwise it is wiped
  when the dataset and the last view of it are garbage-collected.
- Pickling a dataset (a ``spawn`` DataLoader worker, ``pickle.dumps``) carries only its
  sealed reference (location, broker, split), never a record: the worker attests again.
- ``save_sealed`` seals the ``state_dict`` to the data owner, in the same sealed-output
  format as ``blindfold train``; ``blindfold model open`` opens it.

Only the record buffers are wiped. What PyTorch derives from them (a collated batch, a
``.float()`` copy, activations, gradients) is ordinary PyTorch memory inside the zone.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from . import _native
from ._native import BadInput

__all__ = [
    "PlainDataset",
    "SealedDataset",
    "SealedIterableDataset",
    "save_sealed",
]

_TORCH_DTYPES = {
    "u8": torch.uint8,
    "i8": torch.int8,
    "i16": torch.int16,
    "i32": torch.int32,
    "i64": torch.int64,
    "f32": torch.float32,
    "f64": torch.float64,
}
_NUMPY_DTYPES = {
    "u8": "u1", "i8": "i1", "u16": "<u2", "i16": "<i2", "u32": "<u4",
    "i32": "<i4", "u64": "<u8", "i64": "<i8", "f32": "<f4", "f64": "<f8",
}


class _Views:
    """Typed views over one split's wiped buffers: features as a ``[N, *shape]`` tensor,
    labels as a numpy vector. Neither copies a byte."""

    def __init__(self, schema: dict, features, labels) -> None:
        dtype = schema["dtype"]
        if dtype not in _TORCH_DTYPES:
            features.close()
            if labels is not None:
                labels.close()
            raise BadInput(f"features of type {dtype} have no PyTorch dtype")
        self.schema = schema
        self._buffers = [b for b in (features, labels) if b is not None]
        shape = [int(d) for d in schema["shape"]]
        per = int(np.prod(shape)) if shape else 1
        if len(features) == 0:
            self.features = torch.empty([0, *shape], dtype=_TORCH_DTYPES[dtype])
        else:
            flat = torch.frombuffer(features, dtype=_TORCH_DTYPES[dtype])
            self.features = flat.view(len(flat) // max(per, 1), *shape)
        self.labels = None
        if labels is not None and len(labels) > 0:
            self.labels = np.frombuffer(labels, dtype=_NUMPY_DTYPES[schema["label"]])
        self.count = self.features.shape[0]

    def item(self, i: int, copy: bool = False):
        x = self.features[i].clone() if copy else self.features[i]
        if self.labels is None:
            return x
        y = self.labels[i]
        return x, (float(y) if self.labels.dtype.kind == "f" else int(y))

    def close(self) -> None:
        self.features = None
        self.labels = None
        for b in self._buffers:
            b.close()
        self._buffers = []


def _transformed(ds, item):
    """Applies a dataset's ``transform`` and ``target_transform`` to an item."""
    if not isinstance(item, tuple):
        return ds.transform(item) if ds.transform else item
    x, y = item
    if ds.transform:
        x = ds.transform(x)
    if ds.target_transform:
        y = ds.target_transform(y)
    return x, y


def _check_device(device: str) -> None:
    if device != "cpu":
        raise BadInput(
            f"device={device!r}: the bridge decrypts into the zone's CPU memory only. "
            "On-GPU decryption into a CUDA tensor is not built yet (see python/README.md); "
            "move batches to the GPU in the training loop."
        )


class _Reference:
    """What a sealed dataset is, without any of its records: where it is and how to
    reach the broker. The only thing pickled."""

    def __init__(self, dest, broker, ca_cert, tee, job, measurement, insecure_http):
        if not broker:
            raise BadInput("broker: the key broker's URL is required")
        self.dest = str(dest)
        self.broker = broker
        self.ca_cert = None if ca_cert is None else os.fspath(ca_cert)
        self.tee = tee
        self.job = job
        self.measurement = measurement
        self.insecure_http = insecure_http

    def attest(self):
        return _native.attest(
            self.dest,
            self.broker,
            job=self.job,
            tee=self.tee,
            ca_cert=self.ca_cert,
            measurement=self.measurement,
            insecure_http=self.insecure_http,
        )


class SealedDataset(Dataset):
    """A map-style dataset over one split of a sealed dataset.

    Args:
        dest: the sealed dataset: a folder, ``file:///path`` or ``s3://bucket/prefix``.
        split: which split (``train``, ``test``, ...).
        broker: the owner's key broker, ``https://host:port``.
        ca_cert: the broker's TLS certificate (PEM file) to trust.
        tee: ``"tsm"`` (SEV-SNP or TDX evidence via configfs-tsm) or ``"sample"`` (no
            hardware root of trust: only a policy that names it releases a key).
        job: the job name the dataset's policy checks (chosen by the job, not attested).
        measurement: with ``tee="sample"``, the measurement to declare.
        insecure_http: accept an ``http://`` broker on loopback (tests only).
        transform, target_transform: applied to the features view and the label, as in
            torchvision. The view shares the decrypted memory: an in-place transform
            (``x.div_()``) changes the record for good; return a new tensor.
        device: ``"cpu"`` (the only one built).

    Raises:
        PolicyDenied, IntegrityError, BadInput, StorageError: see :mod:`blindfold`.
    """

    def __init__(
        self,
        dest,
        split: str = "train",
        *,
        broker: str,
        ca_cert=None,
        tee: str = "tsm",
        job: Optional[str] = None,
        measurement: Optional[str] = None,
        insecure_http: bool = False,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        device: str = "cpu",
    ) -> None:
        _check_device(device)
        self._ref = _Reference(dest, broker, ca_cert, tee, job, measurement, insecure_http)
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        self._sealed = None
        self._views: Optional[_Views] = None
        self._open()

    def _open(self) -> None:
        t0 = time.perf_counter()
        sealed = self._ref.attest()
        t1 = time.perf_counter()
        features, labels = sealed.read(self.split)
        self._views = _Views(sealed.schema(), features, labels)
        self._sealed = sealed
        #: Seconds to attest and receive the key, and to read and decrypt the split.
        self.key_s, self.decrypt_s = t1 - t0, time.perf_counter() - t1

    def _loaded(self) -> _Views:
        if self._views is None:
            if getattr(self, "_closed", False):
                raise BadInput("the dataset is closed")
            self._open()
        return self._views

    @property
    def dataset_id(self) -> str:
        self._loaded()
        return self._sealed.dataset_id

    @property
    def version(self) -> int:
        self._loaded()
        return self._sealed.version

    @property
    def schema(self) -> dict:
        return self._loaded().schema

    def __len__(self) -> int:
        return self._loaded().count

    def __getitem__(self, i: int):
        v = self._loaded()
        if not -v.count <= i < v.count:
            raise IndexError(f"record {i} of {v.count}")
        return _transformed(self, v.item(i))

    def close(self) -> None:
        """Wipes the decrypted records now. Tensors still viewing them read zeros.
        Without it, the records are wiped when the dataset and every view of them are
        garbage-collected."""
        if self._views is not None:
            self._views.close()
        self._views = None
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # The sealed reference only: a pickled dataset never carries a record or a key.
        return {
            "_ref": self._ref,
            "split": self.split,
            "transform": self.transform,
            "target_transform": self.target_transform,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._sealed = None
        self._views = None  # attests again on first use

    def __repr__(self) -> str:
        return f"SealedDataset({self._ref.dest!r}, split={self.split!r})"


class PlainDataset(Dataset):
    """The baseline: the owner's plaintext files (IDX folder or file, CSV, .npy), read by
    the same importers as ``blindfold seal``, so ``PlainDataset(input)[i]`` equals
    ``SealedDataset(sealed)[i]`` byte for byte, in the same order.

    Args:
        input: the original files.
        split: which split; a single file (CSV, .npy, IDX images) is one split and
            takes this name, as ``blindfold seal --split`` names it.
        labels: a labels file for a single IDX images file or .npy.
        label_column: the CSV label column (default ``label``).
        owner_key: the owner's X25519 public key (hex, ``blindfold keys show``), for
            :func:`save_sealed`.
    """

    def __init__(
        self,
        input,
        split: str = "train",
        *,
        labels=None,
        label_column: Optional[str] = None,
        owner_key: Optional[str] = None,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
    ) -> None:
        self.input = os.fspath(input)
        self.split = split
        self.owner_key = owner_key
        self.transform = transform
        self.target_transform = target_transform
        schema, features, label_buf = _native.read_plain(
            self.input,
            split,
            labels=None if labels is None else os.fspath(labels),
            label_column=label_column,
        )
        self._views = _Views(schema, features, label_buf)

    @property
    def schema(self) -> dict:
        return self._views.schema

    def __len__(self) -> int:
        return self._views.count

    __getitem__ = SealedDataset.__getitem__

    def _loaded(self) -> _Views:
        if self._views is None:
            raise BadInput("the dataset is closed")
        return self._views

    def close(self) -> None:
        if self._views is not None:
            self._views.close()
        self._views = None


def _rank_world(rank: Optional[int], world_size: Optional[int]) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class SealedIterableDataset(IterableDataset):
    """A streaming dataset for data larger than memory: one shard decrypted at a time.

    The order is fixed by ``seed`` and the epoch: shards in a shuffled order, records
    shuffled within each shard. It is the same whatever the number of DataLoader
    workers, provided ``batch_size`` is the DataLoader's: worker ``w`` of ``k`` yields
    batches ``w, w + k, ...`` of the stream, and the DataLoader interleaves them in that
    order. With several processes (``torch.distributed`` initialised before the
    dataset is made, or ``rank``/``world_size``), process ``r`` of ``n`` takes records
    ``r, r + n, ...`` of the stream. Unlike ``DistributedSampler`` it does not pad: the
    ranks' lengths can differ by one, so use ``drop_last=True`` with DDP.

    Resume mid-epoch: ``state = ds.state_dict(samples_seen)``, saved with the
    checkpoint; later ``ds.load_state_dict(state)`` and iteration starts at the next
    sample of that epoch; the epochs after it are whole. Call ``set_epoch(e)`` before
    each epoch, and do not use ``persistent_workers`` (workers keep the epoch they
    started with).

    Each worker decrypts every shard that holds one of its samples, so memory holds
    one shard per worker; a shard's buffer is wiped when the worker moves to the next.
    Items are therefore copies (ordinary PyTorch memory, not wiped), not views.
    """

    def __init__(
        self,
        dest,
        split: str = "train",
        *,
        broker: str,
        batch_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        ca_cert=None,
        tee: str = "tsm",
        job: Optional[str] = None,
        measurement: Optional[str] = None,
        insecure_http: bool = False,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        device: str = "cpu",
    ) -> None:
        _check_device(device)
        if batch_size < 1:
            raise BadInput("batch_size must be at least 1")
        self._ref = _Reference(dest, broker, ca_cert, tee, job, measurement, insecure_http)
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = _rank_world(rank, world_size)
        self.transform = transform
        self.target_transform = target_transform
        self.epoch = 0
        # (epoch, samples) to skip in that epoch only: set by load_state_dict. Workers
        # get copies of this object, so it is never cleared by iterating; set_epoch
        # clears it in the process that owns the dataset.
        self._resume: Optional[tuple[int, int]] = None
        self._sealed = self._ref.attest()
        self._shards = self._sealed.shards(split)

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (with ``persistent_workers=True`` it does not reach
        the workers: use fresh workers per epoch)."""
        self.epoch = epoch
        if self._resume is not None and self._resume[0] != epoch:
            self._resume = None

    def _setup(self) -> dict:
        return {
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def state_dict(self, samples_seen: int) -> dict:
        """Where an interrupted epoch stands: ``samples_seen`` is how many samples this
        process's DataLoader has yielded in the current epoch."""
        return {"epoch": self.epoch, "samples_seen": int(samples_seen), **self._setup()}

    def load_state_dict(self, state: dict) -> None:
        """Resumes at ``state``'s epoch, after its ``samples_seen`` samples; later
        epochs (after ``set_epoch``) are whole. Refuses a state saved with another seed,
        shuffle, batch size, rank or world size: the stream would not line up."""
        for k, v in self._setup().items():
            if state.get(k) != v:
                raise BadInput(f"the state was saved with {k}={state.get(k)!r}, this dataset has {v!r}")
        self.epoch = int(state["epoch"])
        self._resume = (self.epoch, int(state["samples_seen"]))

    def _stream(self) -> list[tuple[int, np.ndarray]]:
        """This process's stream: (shard, local record indices in order) per shard."""
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
        order = rng.permutation(len(self._shards)) if self.shuffle else range(len(self._shards))
        plan = []
        pos = 0  # position in the global stream
        for s in order:
            _, n = self._shards[s]
            local = rng.permutation(n) if self.shuffle else np.arange(n)
            # Global positions pos..pos+n-1; this process takes those ≡ rank (mod world).
            first = (self.rank - pos) % self.world_size
            plan.append((int(s), local[first :: self.world_size]))
            pos += n
        return plan

    def __len__(self) -> int:
        total = sum(n for _, n in self._shards)
        return len(range(self.rank, total, self.world_size))

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if self._sealed is None:
            self._sealed = self._ref.attest()
        skip = self._resume[1] if self._resume and self._resume[0] == self.epoch else 0
        p = 0  # position in this process's stream
        for s, local in self._stream():
            first, _ = self._shards[s]
            lo, hi = p, p + len(local)
            p = hi
            # Positions of this shard that this worker yields, after the resume point.
            mine = [
                q for q in range(max(lo, skip), hi)
                if ((q - skip) // self.batch_size) % workers == worker
            ]
            if not mine:
                continue
            features, labels = self._sealed.read(
                self.split, start=first, count=self._shards[s][1]
            )
            views = _Views(self._sealed.schema(), features, labels)
            try:
                for q in mine:
                    # A copy: the shard's buffer is wiped when the stream moves on, and
                    # a DataLoader batch may still hold records of this shard then.
                    yield _transformed(self, views.item(int(local[q - lo]), copy=True))
            finally:
                views.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_sealed"] = None  # the key stays here; a spawned worker attests again
        return state


def _tensors(state_dict) -> list:
    out = []
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise BadInput(f"state_dict entry {name!r} is not a tensor")
        t = t.detach().cpu().contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        out.append((name, dtype, list(t.shape), raw.numpy()))
    return out


def save_sealed(
    state_dict,
    out,
    dataset,
    metrics: Optional[dict] = None,
    hyperparameters: Optional[dict] = None,
) -> list[str]:
    """Seals a trained model's ``state_dict`` (as safetensors) and ``metrics`` to the
    data owner and writes them to ``out`` (a folder or ``s3://``), with the job's clear
    ``train.json``. Refuses an ``out`` that already holds a model.

    With a sealed dataset whose broker certified this process's receipt key, also
    writes ``receipt.json``, the training receipt (``docs/receipts.md``): the sealed
    outputs' digests, ``hyperparameters`` (clear: no secret belongs there), the
    metrics' digest, and the broker's release certificate, signed with a key made in
    this process. Anyone checks it with ``blindfold receipt verify``.

    With a :class:`SealedDataset` or :class:`SealedIterableDataset`, the outputs are
    authenticated by the dataset key and name its id, version and manifest; the owner
    opens them with ``blindfold model open OUT --dataset ID``. With a
    :class:`PlainDataset` (the baseline), they are sealed to its ``owner_key`` and
    authenticated by nothing. Returns the locations written.
    """
    tensors = _tensors(state_dict)
    metrics_json = json.dumps(metrics or {})
    hyperparameters_json = json.dumps(hyperparameters or {})
    out = os.fspath(out)
    if isinstance(dataset, PlainDataset):
        if not dataset.owner_key:
            raise BadInput("a PlainDataset needs owner_key= to seal outputs to its owner")
        return _native.seal_plain_outputs(
            dataset.owner_key, out, tensors, metrics_json, dataset.input
        )
    if isinstance(dataset, (SealedDataset, SealedIterableDataset)):
        # The released key, still held after close(); an unpickled dataset attests
        # again (without decrypting anything).
        if dataset._sealed is None:
            dataset._sealed = dataset._ref.attest()
        return dataset._sealed.seal_outputs(out, tensors, metrics_json, hyperparameters_json)
    raise BadInput("dataset: a SealedDataset, SealedIterableDataset or PlainDataset")
