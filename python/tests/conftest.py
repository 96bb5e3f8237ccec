"""Fixtures: an owner with a key store, a sealed dataset and a broker on loopback, made
with the real `blindfold` binary (blindfold.local.LocalOwner)."""

import numpy as np
import pytest

from blindfold.local import LocalOwner

RECORDS = 3000  # 1 KiB each: three 1-MiB shards
CLASSES = 10
POLICY = 'tee = ["sample"]\njobs = ["pytest"]\n'


@pytest.fixture(scope="session")
def owner(tmp_path_factory):
    d = tmp_path_factory.mktemp("owner")
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, size=(RECORDS, 1, 32, 32), dtype=np.uint8)
    y = rng.integers(0, CLASSES, size=RECORDS, dtype=np.uint8)
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    with LocalOwner(d) as o:
        o.start_broker()
        o.dataset_id = o.seal(
            "x.npy", "sealed", "--labels", "y.npy", "--split", "train", "--shard-size", "1"
        )
        o.register("sealed", POLICY)
        o.x, o.y = x, y
        yield o


@pytest.fixture
def conn(owner):
    """Keyword arguments that reach the owner's broker as the `pytest` job."""
    return dict(broker=owner.url, ca_cert=owner.ca_cert, tee="sample", job="pytest")
