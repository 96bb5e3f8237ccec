"""A blindfold model spec as a PyTorch module (docs/model-spec.md).

``torch_module(path)`` reads the safetensors file that ``blindfold model open --format
safetensors`` writes, builds the ``torch.nn.Module`` its spec declares (the spec travels
in the file's metadata) and loads the weights: the same predictions as blindfold's own
``eval``, in PyTorch. ``build(spec_text, input, classes)`` builds the module alone.

Tensor names match blindfold's: ``standardize.mean`` / ``standardize.scale`` (buffers),
``layers.N.*`` (an ``nn.Sequential``; ``layers.N.layers.M.*`` in a residual block) and
``head.*``.
"""

from __future__ import annotations

import json
import struct
import tomllib
from pathlib import Path
from typing import Union

import torch
from torch import nn

__all__ = ["build", "read_safetensors", "torch_module"]

_DTYPES = {
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
}


def read_safetensors(path: Union[str, Path]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a safetensors file (little-endian, as the format
    defines it)."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not safetensors (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: not safetensors (truncated header)")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    body = data[8 + n :]
    tensors = {}
    for name, t in header.items():
        dtype = _DTYPES.get(t["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name}: dtype {t['dtype']} is not supported here")
        start, end = t["data_offsets"]
        if not 0 <= start <= end <= len(body):
            raise ValueError(f"{path}: tensor {name}: offsets outside the file")
        raw = bytearray(body[start:end])
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(t["shape"]).clone()
    return tensors, meta


class Standardize(nn.Module):
    """``(x - mean) * scale`` per input feature, with the training split's statistics."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return ((x.reshape(shape[0], -1) - self.mean) * self.scale).reshape(shape)


class Residual(nn.Module):
    """``x + layers(x)``."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


def _layer(spec: dict, shape: tuple) -> tuple[nn.Module, tuple]:
    """One plain layer over ``shape`` (``("image", c, h, w)`` or ``("flat", n)``)."""
    kind = spec["type"]
    if kind == "conv2d":
        _, c, h, w = shape
        k, s, p = spec["kernel"], spec.get("stride", 1), spec.get("padding", 0)
        side = lambda n: (n + 2 * p - k) // s + 1  # noqa: E731
        return nn.Conv2d(c, spec["out"], k, stride=s, padding=p), ("image", spec["out"], side(h), side(w))
    if kind in ("max_pool", "avg_pool"):
        _, c, h, w = shape
        k = spec["kernel"]
        s = spec.get("stride") or k
        m = nn.MaxPool2d(k, stride=s) if kind == "max_pool" else nn.AvgPool2d(k, stride=s)
        return m, ("image", c, (h - k) // s + 1, (w - k) // s + 1)
    if kind == "batch_norm":
        if shape[0] == "image":
            return nn.BatchNorm2d(shape[1], eps=1e-5, momentum=0.1), shape
        return nn.BatchNorm1d(shape[1], eps=1e-5, momentum=0.1), shape
    if kind == "dropout":
        return nn.Dropout(spec["p"]), shape
    if kind == "linear":
        if shape[0] != "flat":
            raise ValueError("linear needs flat features: put a flatten layer before it")
        return nn.Linear(shape[1], spec["out"]), ("flat", spec["out"])
    if kind == "flatten":
        n = shape[1] if shape[0] == "flat" else shape[1] * shape[2] * shape[3]
        return nn.Flatten(), ("flat", n)
    simple = {"relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
    if kind in simple:
        return simple[kind](), shape
    raise ValueError(f"layer type {kind!r} is not one blindfold builds")


class Net(nn.Module):
    """A spec'd network: optional standardization, the layers, the classification head."""

    def __init__(self, spec: dict, input: tuple[int, int, int], classes: int) -> None:
        super().__init__()
        c, h, w = input
        self.flat_input = c == 1 and h == 1
        shape = ("flat", w) if self.flat_input else ("image", c, h, w)
        if spec.get("standardize", False):
            self.standardize = Standardize(c * h * w)
        else:
            self.standardize = None
        layers = []
        for s in spec.get("layer", []):
            if s["type"] == "residual":
                body, inner = [], shape
                for b in s["layer"]:
                    m, inner = _layer(b, inner)
                    body.append(m)
                layers.append(Residual(body))
            else:
                m, shape = _layer(s, shape)
                layers.append(m)
        self.layers = nn.Sequential(*layers)
        features = shape[1] if shape[0] == "flat" else shape[1] * shape[2] * shape[3]
        self.head = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, classes]`` for records ``[n, c, h, w]`` (or ``[n, features]``)."""
        if self.standardize is not None:
            x = self.standardize(x)
        if self.flat_input:
            x = x.reshape(x.shape[0], -1)
        return self.head(self.layers(x).flatten(1))


def build(spec_text: str, input: tuple[int, int, int], classes: int) -> Net:
    """The module a spec's TOML declares, for records of shape ``input`` (c, h, w),
    with fresh PyTorch weights."""
    return Net(tomllib.loads(spec_text), input, classes)


def torch_module(path: Union[str, Path]) -> Net:
    """The model in a safetensors file from ``blindfold model open --format
    safetensors``, with its weights, in eval mode. Every tensor of the file must fit the
    module and every parameter of the module must be in the file (PyTorch's batch-norm
    step counters, which blindfold does not keep, excepted)."""
    tensors, meta = read_safetensors(path)
    for k in ("blindfold.spec", "blindfold.input", "blindfold.classes"):
        if k not in meta:
            raise ValueError(f"{path}: no {k} in its metadata: not a blindfold model export")
    input = tuple(int(v) for v in meta["blindfold.input"].split(","))
    net = build(meta["blindfold.spec"], input, int(meta["blindfold.classes"]))
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the spec: missing {missing}, unexpected {unexpected}")
    return net.eval()
