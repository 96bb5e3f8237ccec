"""A model spec trained in blindfold gives the same predictions in PyTorch
(blindfold.spec.torch_module) as in blindfold's own `eval`: every layer type, batch
norm's running statistics and the standardization step included."""

import csv
import struct

import numpy as np
import pytest
import torch

from blindfold.local import LocalOwner
from blindfold.spec import build, read_safetensors, torch_module

SPEC = """
name = "every-layer"
standardize = true

[[layer]]
type = "conv2d"
out = 4
kernel = 3
padding = 1

[[layer]]
type = "batch_norm"

[[layer]]
type = "relu"

[[layer]]
type = "residual"

  [[layer.layer]]
  type = "conv2d"
  out = 4
  kernel = 3
  padding = 1

  [[layer.layer]]
  type = "gelu"

[[layer]]
type = "avg_pool"
kernel = 2

[[layer]]
type = "max_pool"
kernel = 2
stride = 1

[[layer]]
type = "flatten"

[[layer]]
type = "dropout"
p = 0.2

[[layer]]
type = "linear"
out = 16

[[layer]]
type = "batch_norm"

[[layer]]
type = "tanh"

[[layer]]
type = "linear"
out = 8

[[layer]]
type = "sigmoid"

[optimizer]
type = "adamw"

[schedule]
type = "step"
every = 1
gamma = 0.5
"""


def idx(path, array):
    """Writes an IDX file of unsigned bytes (the format Fashion-MNIST uses)."""
    head = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    path.write_bytes(head + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("spec")
    rng = np.random.default_rng(3)
    data = d / "data"
    data.mkdir()
    sets = {}
    for prefix, n in (("train", 240), ("t10k", 60)):
        y = rng.integers(0, 3, size=n)
        x = rng.integers(0, 90, size=(n, 8, 8))
        for i, c in enumerate(y):  # a bright stripe whose row gives the class
            x[i, 2 + 2 * c] += 150
        idx(data / f"{prefix}-images-idx3-ubyte", x)
        idx(data / f"{prefix}-labels-idx1-ubyte", y)
        sets[prefix] = (x, y)
    (d / "every.toml").write_text(SPEC)
    with LocalOwner(d) as o:
        o.run(
            "train", "--plaintext", "data", "--owner-key", o.public_key, "--out", "model",
            "--model", "every.toml", "--epochs", "3", "--batch-size", "16", "--lr", "0.01",
            "-q",
        )
        o.run(
            "model", "open", "model", "--out", "weights.safetensors",
            "--format", "safetensors", "--danger-unauthenticated",
        )
        o.run(
            "eval", "--model", "weights.safetensors", "--test", "data", "--split", "test",
            "--predictions", "predictions.csv",
        )
        with open(d / "predictions.csv") as f:
            rows = list(csv.DictReader(f))
        yield d, sets["t10k"], rows


def sets_train(d):
    """The training images as the trainer sees them: [records, 64] floats in [0, 1]."""
    raw = (d / "data" / "train-images-idx3-ubyte").read_bytes()[16:]
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, 64).astype(np.float64) / 255.0


def test_pytorch_gives_blindfolds_logits(trained):
    d, (x, y), rows = trained
    model = torch_module(d / "weights.safetensors")
    assert not model.training
    with torch.no_grad():
        logits = model(torch.from_numpy(x.astype(np.float32) / 255.0).reshape(-1, 1, 8, 8))
    assert len(rows) == len(y) == logits.shape[0]
    want = torch.tensor([[float(r[f"logit_{j}"]) for j in range(3)] for r in rows])
    assert [int(r["label"]) for r in rows] == list(y)
    assert torch.allclose(logits, want, atol=1e-4), (logits - want).abs().max()
    assert [int(r["predicted"]) for r in rows] == logits.argmax(1).tolist()
    # Not a constant model: it learned the stripes.
    assert (logits.argmax(1).numpy() == y).mean() > 0.6


def test_the_export_carries_the_spec_and_every_tensor(trained):
    d, _, _ = trained
    tensors, meta = read_safetensors(d / "weights.safetensors")
    assert meta["blindfold.spec"] == SPEC
    assert meta["blindfold.input"] == "1,8,8"
    # Standardization statistics are the training split's: per-pixel mean and
    # 1 / (population) standard deviation of the training images, scaled to [0, 1].
    x = sets_train(d)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    assert np.allclose(tensors["standardize.mean"].numpy(), mean, atol=1e-5)
    assert np.allclose(tensors["standardize.scale"].numpy(), 1 / std, rtol=1e-4)
    net = build(SPEC, (1, 8, 8), 3)
    names = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    assert names == set(tensors)


def test_a_file_without_a_spec_is_refused(trained, tmp_path):
    d, _, _ = trained
    raw = (d / "weights.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    import json

    head = json.loads(raw[8 : 8 + n])
    del head["__metadata__"]["blindfold.spec"]
    h = json.dumps(head).encode()
    h += b" " * (-len(h) % 8)
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n :])
    with pytest.raises(ValueError, match="blindfold.spec"):
        torch_module(tmp_path / "x.safetensors")


def test_a_regression_model_predicts_the_same_in_pytorch(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.uniform(-3, 3, size=(200, 4)).astype(np.float32)
    x[:, 2] *= 1000  # a feature on another scale: standardization matters
    y = 2 * x[:, 0] - x[:, 1] + 0.001 * x[:, 2] + 0.5
    rows = ["a,b,c,d,label"] + [
        ",".join(repr(float(v)) for v in (*r, t)) for r, t in zip(x, y.astype(np.float32))
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "reg.toml").write_text(
        'name = "reg"\nstandardize = true\n[[layer]]\ntype = "linear"\nout = 8\n'
        '[[layer]]\ntype = "tanh"\n[head]\ntype = "regression"\n'
    )
    with LocalOwner(tmp_path) as o:
        o.run(
            "train", "--plaintext", "t.csv", "--train-split", "data", "--owner-key",
            o.public_key, "--out", "m", "--model", "reg.toml", "--epochs", "5", "-q",
        )
        o.run("model", "open", "m", "--out", "w.safetensors", "--danger-unauthenticated")
        o.run(
            "eval", "--model", "w.safetensors", "--test", "t.csv", "--split", "data",
            "--predictions", "p.csv",
        )
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    model = torch_module(tmp_path / "w.safetensors")
    with torch.no_grad():
        out = model(torch.from_numpy(x)).reshape(-1)
    want = torch.tensor([float(r["predicted"]) for r in rows])
    assert out.shape == want.shape == (200,)
    assert torch.allclose(out, want, atol=1e-4), (out - want).abs().max()
    labels = np.array([float(r["label"]) for r in rows], dtype=np.float32)
    assert np.array_equal(labels, y.astype(np.float32)), "labels as f32, exactly"
