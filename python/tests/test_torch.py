"""The PyTorch bridge against a real broker and real sealed data."""

import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import blindfold
from blindfold.torch import PlainDataset, SealedDataset, SealedIterableDataset, save_sealed

from conftest import CLASSES, RECORDS


def sealed(owner, conn, **kw):
    return SealedDataset(owner.dir / "sealed", "train", **conn, **kw)


def plain(owner, **kw):
    return PlainDataset(owner.dir / "x.npy", "train", labels=owner.dir / "y.npy", **kw)


# --- map-style --------------------------------------------------------------------


def test_records_equal_the_owners_originals_and_the_plaintext_twin(owner, conn):
    ds, pt = sealed(owner, conn), plain(owner)
    assert len(ds) == len(pt) == RECORDS
    assert ds.dataset_id == owner.dataset_id and ds.version == 1
    assert ds.schema == {"dtype": "u8", "shape": [1, 32, 32], "label": "u8"}
    for i in [0, 1, 1022, 1023, 2047, RECORDS - 1, -1]:
        (x, y), (px, py) = ds[i], pt[i]
        assert x.dtype == torch.uint8 and x.shape == (1, 32, 32)
        assert torch.equal(x, torch.from_numpy(owner.x[i])) and torch.equal(x, px)
        assert y == py == int(owner.y[i]) and isinstance(y, int)
    with pytest.raises(IndexError):
        ds[RECORDS]


def test_attesting_hardens_the_process(owner, conn):
    # No core dump and no same-user ptrace of a process that holds a key: RLIMIT_CORE
    # 0 and PR_GET_DUMPABLE (3) 0, set before the key is fetched.
    import ctypes
    import resource

    sealed(owner, conn)
    assert resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)
    assert ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 0


def test_items_are_views_of_one_buffer_that_close_wipes(owner, conn):
    ds = sealed(owner, conn)
    x0, _ = ds[0]
    x1, _ = ds[1]
    # Zero-copy: consecutive records are 1024 bytes apart in one allocation.
    assert x1.data_ptr() - x0.data_ptr() == 1024
    assert x0.any()
    ds.close()
    # The memory is wiped in place: a view kept past close() reads zeros.
    assert not x0.any() and not x1.any()
    with pytest.raises(blindfold.BadInput, match="closed"):
        ds[0]


def test_views_outlive_the_dataset_object_until_they_go_too(owner, conn):
    import gc

    ds = sealed(owner, conn)
    x, _ = ds[3]
    del ds
    gc.collect()
    # The buffer is freed (and wiped) only with its last view: this one still reads it.
    assert torch.equal(x, torch.from_numpy(owner.x[3]))


def test_a_pickled_dataset_carries_no_record_and_attests_again(owner, conn):
    ds = sealed(owner, conn)
    blob = pickle.dumps(ds)
    # No record, not even one row of one record, is in the pickle.
    for i in (0, 1, RECORDS - 1):
        assert owner.x[i].tobytes()[:32] not in blob
    assert len(blob) < 2000
    again = pickle.loads(blob)
    x, y = again[5]
    assert torch.equal(x, ds[5][0]) and y == ds[5][1]


@pytest.mark.parametrize("context", [None, "spawn"])
def test_dataloader_workers_give_the_same_batches(owner, conn, context):
    ds = sealed(owner, conn)
    ref = list(DataLoader(ds, batch_size=100))
    kw = {"multiprocessing_context": context} if context else {}
    got = list(DataLoader(ds, batch_size=100, num_workers=2, **kw))
    assert len(got) == len(ref) == RECORDS // 100
    for (a, b), (c, d) in zip(ref, got):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_distributed_sampler_splits_the_records(owner, conn):
    ds = sealed(owner, conn)
    seen = []
    for rank in (0, 1):
        s = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1)
        idx = list(s)
        seen += idx
        x, y = next(iter(DataLoader(ds, batch_size=4, sampler=s)))
        assert torch.equal(x[0], torch.from_numpy(owner.x[idx[0]]))
    assert sorted(seen) == list(range(RECORDS))


# --- streaming --------------------------------------------------------------------


def stream(owner, conn, **kw):
    kw.setdefault("batch_size", 16)
    kw.setdefault("seed", 3)
    return SealedIterableDataset(owner.dir / "sealed", "train", **conn, **kw)


def record_ids(owner, xs):
    """Which original record each feature tensor is (records are random: unique)."""
    index = {owner.x[i].tobytes(): i for i in range(RECORDS)}
    return [index[x.numpy().tobytes()] for x in xs]


def epoch(ds, workers=0, **kw):
    xs = []
    for x, _ in DataLoader(ds, batch_size=ds.batch_size, num_workers=workers, **kw):
        xs.extend(x)
    return xs


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_streaming_order_is_the_same_for_any_number_of_workers(owner, conn):
    ds = stream(owner, conn)
    one = record_ids(owner, epoch(ds))
    assert sorted(one) == list(range(RECORDS))  # every record once
    assert one != list(range(RECORDS))  # shuffled
    for workers in (1, 3):
        assert record_ids(owner, epoch(ds, workers)) == one
    assert record_ids(owner, epoch(ds, 2, multiprocessing_context="spawn")) == one
    ds.set_epoch(1)
    assert record_ids(owner, epoch(ds)) != one


def test_streaming_resumes_mid_epoch(owner, conn):
    ds = stream(owner, conn)
    ds.set_epoch(2)
    full = record_ids(owner, epoch(ds))
    state = ds.state_dict(samples_seen=5 * 16)
    for workers in (0, 2):
        later = stream(owner, conn)
        later.load_state_dict(state)
        assert later.epoch == 2
        assert record_ids(owner, epoch(later, workers)) == full[80:]
        # The resume is for that epoch only: the next one is whole, even though the
        # workers that skipped were copies of this dataset.
        later.set_epoch(3)
        assert len(record_ids(owner, epoch(later, workers))) == RECORDS
    with pytest.raises(blindfold.BadInput, match="seed"):
        stream(owner, conn, seed=4).load_state_dict(state)
    with pytest.raises(blindfold.BadInput, match="batch_size"):
        stream(owner, conn, batch_size=8).load_state_dict(state)


def test_streaming_ranks_partition_the_stream(owner, conn):
    full = record_ids(owner, epoch(stream(owner, conn)))
    parts = [record_ids(owner, epoch(stream(owner, conn, rank=r, world_size=2))) for r in (0, 1)]
    assert parts[0] == full[0::2] and parts[1] == full[1::2]


# --- sealed outputs ---------------------------------------------------------------


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n :]
    out = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        dt = {"F32": np.float32, "I64": np.int64}[t["dtype"]]
        out[name] = np.frombuffer(data[a:b], dtype=dt).reshape(t["shape"])
    return out, meta


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 5),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 28 * 28, CLASSES),
    )


def test_save_sealed_writes_what_model_open_opens(owner, conn):
    ds = sealed(owner, conn)
    model = small_model()
    out = owner.dir / "model-a"
    written = save_sealed(
        model.state_dict(),
        out=out,
        dataset=ds,
        metrics={"held_out_score": 0.5},
        hyperparameters={"lr": 0.01, "epochs": 1},
    )
    assert [Path(w).name for w in written] == [
        "model.sealed",
        "metrics.sealed",
        "train.json",
        "receipt.json",
    ]
    # The training receipt verifies with the broker's public key, names this release,
    # and covers the sealed outputs as written (docs/receipts.md).
    jwk = owner.run("broker", "public-key", "--dir", str(owner.dir / "broker")).stdout
    (owner.dir / "broker.jwk").write_text(jwk)
    checked = owner.run(
        "receipt", "verify", str(out / "receipt.json"), "--broker-key", str(owner.dir / "broker.jwk"),
        "--outputs", str(out), "--danger-accept-sample", "--json",
    )
    verified = json.loads(checked.stdout)
    assert verified["certified"]["dataset_id"] == owner.dataset_id
    assert verified["predicate"]["framework"] == "pytorch"
    assert verified["predicate"]["hyperparameters"] == {"lr": 0.01, "epochs": 1}
    assert verified["outputs_checked"] is True
    # Without --danger-accept-sample, the sample TEE's receipt is refused (exit 4).
    refused = owner.run(
        "receipt", "verify", str(out / "receipt.json"), "--broker-key", str(owner.dir / "broker.jwk"),
        check=False,
    )
    assert refused.returncode == 4 and "proves nothing" in refused.stderr
    clear = json.loads((out / "train.json").read_text())
    # The metrics travel sealed only. (A name with letters outside 0-9a-f: "acc" once
    # matched inside a random hex digest of train.json.)
    assert clear["data"]["dataset_id"] == owner.dataset_id
    assert "held_out_score" not in json.dumps(clear)
    printed = owner.open_model(str(out), str(owner.dir / "a.safetensors"), owner.dataset_id)
    metrics = json.loads(printed)
    assert metrics["metrics"] == {"held_out_score": 0.5} and metrics["framework"] == "pytorch"
    tensors, meta = read_safetensors(owner.dir / "a.safetensors")
    assert meta == {"framework": "pytorch"}
    sd = model.state_dict()
    assert set(tensors) == set(sd)
    for k, v in sd.items():
        assert np.array_equal(tensors[k], v.numpy()), k
    # A trained model is never overwritten.
    with pytest.raises(blindfold.BadInput, match="exists"):
        save_sealed(model.state_dict(), out=out, dataset=ds)
    # Saving after close() (the end of a `with` block) works: the key is still held.
    ds.close()
    save_sealed(model.state_dict(), out=owner.dir / "model-b", dataset=ds)
    # PyTorch weights have no Burnpack form.
    p = owner.run("model", "open", str(out), "--out", "b.bp", "--format", "burnpack",
                  "--dataset", owner.dataset_id, check=False)
    assert p.returncode == 3 and "PyTorch" in p.stderr


def test_the_plaintext_baseline_seals_to_the_owner_key_unauthenticated(owner):
    pt = plain(owner)
    with pytest.raises(blindfold.BadInput, match="owner_key"):
        save_sealed(small_model().state_dict(), out=owner.dir / "m-p0", dataset=pt)
    pt = plain(owner, owner_key=owner.public_key)
    save_sealed(small_model().state_dict(), out=owner.dir / "m-p", dataset=pt)
    p = owner.run("model", "open", "m-p", "--out", "p.safetensors",
                  "--dataset", owner.dataset_id, check=False)
    assert p.returncode != 0  # no dataset key authenticates it
    owner.open_model("m-p", "p.safetensors", None)
    assert set(read_safetensors(owner.dir / "p.safetensors")[0]) == set(small_model().state_dict())


def train_once(ds, seed=1):
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    model = small_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for x, y in DataLoader(ds, batch_size=64, shuffle=True, generator=g):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x.float() / 255), y)
        loss.backward()
        opt.step()
    return model.state_dict()


def test_sealed_and_plaintext_training_give_identical_weights(owner, conn):
    a, b = train_once(sealed(owner, conn)), train_once(plain(owner))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- errors, by fault -------------------------------------------------------------


def test_a_job_the_policy_does_not_name_is_denied(owner, conn):
    with pytest.raises(blindfold.PolicyDenied, match="job"):
        sealed(owner, dict(conn, job="someone-else"))


def test_a_malformed_shard_header_is_an_integrity_error_too(owner, conn, tmp_path):
    copy = tmp_path / "sealed"
    shutil.copytree(owner.dir / "sealed", copy)
    shard = sorted(p for p in copy.rglob("*.bfs"))[0]
    raw = bytearray(shard.read_bytes())
    raw[0] ^= 0xFF  # the magic: malformed before any tag is checked
    shard.write_bytes(bytes(raw))
    with pytest.raises(blindfold.IntegrityError):
        SealedDataset(copy, "train", **conn)


def test_a_tampered_shard_is_an_integrity_error(owner, conn, tmp_path):
    copy = tmp_path / "sealed"
    shutil.copytree(owner.dir / "sealed", copy)
    shard = sorted(p for p in copy.rglob("*") if p.is_file() and p.name != "manifest.bfm")[1]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(blindfold.IntegrityError):
        SealedDataset(copy, "train", **conn)
    assert issubclass(blindfold.IntegrityError, blindfold.BlindfoldError)


def test_an_unregistered_newer_version_is_refused(owner, conn, tmp_path):
    copy = tmp_path / "sealed"
    shutil.copytree(owner.dir / "sealed", copy)
    owner.run("seal", "x.npy", "--labels", "y.npy", "--split", "train", "--update",
              "--out", str(copy), "-q")
    with pytest.raises(blindfold.IntegrityError, match="version 2"):
        SealedDataset(copy, "train", **conn)


def test_bad_input_is_named(owner, conn, tmp_path):
    with pytest.raises(blindfold.BadInput, match="no split"):
        SealedDataset(owner.dir / "sealed", "test", **conn)
    with pytest.raises(blindfold.BadInput, match="tee"):
        sealed(owner, dict(conn, tee="bogus"))
    with pytest.raises(blindfold.BadInput, match="no sealed dataset"):
        SealedDataset(tmp_path, "train", **conn)
    with pytest.raises(blindfold.BadInput, match="cuda"):
        sealed(owner, conn, device="cuda")
    with pytest.raises(blindfold.BadInput, match="it has"):
        sealed(owner, conn)._sealed.read("train", start=0, count=2**40)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(blindfold.BadInput, match="bad.npy"):
        PlainDataset(tmp_path / "bad.npy", "train")
    with pytest.raises(blindfold.StorageError, match="absent.npy"):
        PlainDataset(tmp_path / "absent.npy", "train")


def test_an_unreachable_broker_is_a_storage_error(owner, conn):
    with pytest.raises(blindfold.StorageError):
        sealed(owner, dict(conn, broker="https://127.0.0.1:9"))


# --- the example ------------------------------------------------------------------

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def test_the_example_script_trains_from_sealed_fashion_mnist(owner, conn, tmp_path):
    """examples/pytorch/train_lenet.py, as a user runs it: one epoch of LeNet-5 from the
    sealed dataset, the model sealed to the owner, who opens it."""
    import subprocess
    import sys

    assert FASHION_MNIST.is_dir(), "scripts/test installs dataset-fashion-mnist"
    fm_id = owner.seal(FASHION_MNIST, "sealed-fm")
    owner.register("sealed-fm", 'tee = ["sample"]\njobs = ["example"]\n')
    script = Path(__file__).resolve().parents[2] / "examples" / "pytorch" / "train_lenet.py"
    p = subprocess.run(
        [sys.executable, str(script), "--dataset", str(owner.dir / "sealed-fm"),
         "--broker", owner.url, "--ca-cert", owner.ca_cert, "--tee", "sample",
         "--job", "example", "--out", str(tmp_path / "model")],
        capture_output=True, text=True,
    )
    assert p.returncode == 0, p.stderr
    acc = float(p.stdout.split("test accuracy ")[1])
    assert acc > 0.7, p.stdout  # one epoch of LeNet-5 on Fashion-MNIST: about 0.82
    metrics = json.loads(owner.open_model(str(tmp_path / "model"), "fm.safetensors", fm_id))
    assert abs(metrics["metrics"]["test_accuracy"] - acc) < 1e-4
    assert "0.weight" in read_safetensors(owner.dir / "fm.safetensors")[0]
