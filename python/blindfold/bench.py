"""``python -m blindfold.bench torch``: the same PyTorch training job on sealed and on
plaintext Fashion-MNIST, alternating in one run, and optionally blindfold's own Burn
trainer on the same model, side by side. Prints one JSON line:

    {model, epochs, sealed_s, plaintext_s, overhead, identical_weights, sealed_acc,
     plaintext_acc, key_s, decrypt_s, ..., burn: [{device, sealed_s, plaintext_s,
     overhead, identical_weights, acc, vs_torch_plaintext, vs_torch_sealed}]}

``--burn cpu --burn torch-cpu`` adds blindfold's own jobs (``blindfold bench train``) on
each CPU backend; ``vs_torch_plaintext`` (``vs_torch_sealed``) is blindfold's sealed job
time over PyTorch's plaintext (sealed) one.

A job is: open the dataset (sealed: attest, receive the key, decrypt; plaintext: read
the owner's files through the same importers), train, evaluate, seal the weights to the
owner. Times are medians over ``--rounds``; the key broker runs on loopback with the
``sample`` TEE (no hardware: the attestation itself is not what is measured).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from .local import LocalOwner
from .torch import PlainDataset, SealedDataset, save_sealed

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def model(name: str, classes: int = 10) -> nn.Module:
    """The built-in models of ``blindfold train``, layer for layer, in PyTorch."""
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
            nn.Linear(128, classes),
        )
    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, classes),
        )
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, classes),
        )
    raise SystemExit(f"unknown model {name!r}: mlp, lenet5 or cnn")


def as_float(x):
    """u8 records to floats in [0, 1], with a channel axis for IDX's [28, 28] images (as
    the Burn trainer does)."""
    x = x.float() / 255.0
    return x.unsqueeze(1) if x.dim() == 3 else x


def train_job(train, test, args) -> dict:
    """One job on opened datasets: train, evaluate, return weights and accuracy."""
    torch.manual_seed(args.seed)
    net = model(args.model)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=g)
    for _ in range(args.epochs):
        net.train()
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(net(as_float(x)), y).backward()
            opt.step()
    net.eval()
    right = 0
    with torch.no_grad():
        for x, y in DataLoader(test, batch_size=1000):
            right += (net(as_float(x)).argmax(1) == y).sum().item()
    return {"weights": net.state_dict(), "acc": right / len(test)}


def run_sealed(owner: LocalOwner, args, i: int) -> dict:
    t = time.perf_counter()
    conn = dict(broker=owner.url, ca_cert=owner.ca_cert, tee="sample", job="bench")
    train = SealedDataset(owner.dir / "sealed", "train", **conn)
    test = SealedDataset(owner.dir / "sealed", "test", **conn)
    r = train_job(train, test, args)
    save_sealed(r["weights"], out=owner.dir / f"sealed-model-{i}", dataset=train,
                metrics={"test_accuracy": r["acc"]})
    r["s"] = time.perf_counter() - t
    r["key_s"] = train.key_s + test.key_s
    r["decrypt_s"] = train.decrypt_s + test.decrypt_s
    train.close()
    test.close()
    return r


def run_plain(owner: LocalOwner, args, i: int, key: str) -> dict:
    t = time.perf_counter()
    train = PlainDataset(args.data, "train", owner_key=key)
    test = PlainDataset(args.data, "test")
    r = train_job(train, test, args)
    save_sealed(r["weights"], out=owner.dir / f"plain-model-{i}", dataset=train,
                metrics={"test_accuracy": r["acc"]})
    r["s"] = time.perf_counter() - t
    train.close()
    test.close()
    return r


def burn(owner: LocalOwner, args, device: str) -> dict:
    env = dict(os.environ)
    if args.threads:
        # The same number of threads as PyTorch's: LibTorch's OpenMP, Flex's rayon.
        env["OMP_NUM_THREADS"] = env["RAYON_NUM_THREADS"] = str(args.threads)
    p = subprocess.run(
        [owner.bin, "bench", "train", "--model", args.model, "--epochs", str(args.epochs),
         "--rounds", str(args.rounds), "--batch-size", str(args.batch_size),
         "--lr", str(args.lr), "--seed", str(args.seed), "--device", device,
         "--data", args.data, "--dir", str(owner.dir)],
        capture_output=True, text=True, env=env,
    )
    if p.returncode != 0:
        raise SystemExit(f"blindfold bench train exited {p.returncode}: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_torch(args) -> dict:
    torch.use_deterministic_algorithms(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as d, LocalOwner(d) as owner:
        owner.start_broker()
        print("sealing", args.data, file=sys.stderr)
        owner.seal(args.data, "sealed")
        owner.register("sealed", 'tee = ["sample"]\njobs = ["bench"]\n')
        key = owner.public_key
        sealed, plain = [], []
        for i in range(args.rounds):
            # Alternate which side goes first, so neither always runs on a warm cache.
            order = ("sealed", "plain") if i % 2 == 0 else ("plain", "sealed")
            for side in order:
                r = run_sealed(owner, args, i) if side == "sealed" else run_plain(owner, args, i, key)
                (sealed if side == "sealed" else plain).append(r)
                print(f"round {i + 1} {side}: {r['s']:.2f} s, test accuracy {r['acc']:.4f}",
                      file=sys.stderr)
        ws = [r["weights"] for r in sealed + plain]
        identical = all(all(torch.equal(w[k], ws[0][k]) for k in ws[0]) for w in ws)
        sealed_s = statistics.median(r["s"] for r in sealed)
        plaintext_s = statistics.median(r["s"] for r in plain)
        out = {
            "model": args.model,
            "epochs": args.epochs,
            "sealed_s": round(sealed_s, 4),
            "plaintext_s": round(plaintext_s, 4),
            "overhead": round(sealed_s / plaintext_s, 4),
            "identical_weights": identical,
            "sealed_acc": sealed[0]["acc"],
            "plaintext_acc": plain[0]["acc"],
            "key_s": round(statistics.median(r["key_s"] for r in sealed), 4),
            "decrypt_s": round(statistics.median(r["decrypt_s"] for r in sealed), 4),
            "rounds": args.rounds,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        }
        out["burn"] = []
        for device in args.burn or []:
            b = burn(owner, args, device)
            out["burn"].append({
                "device": device,
                "sealed_s": b["sealed_s"],
                "plaintext_s": b["plaintext_s"],
                "overhead": b["overhead"],
                "identical_weights": b["identical_weights"],
                "acc": b["sealed_acc"],
                # Blindfold's sealed job against PyTorch's plaintext one: the goal
                # is at most 1.0.
                "vs_torch_plaintext": round(b["sealed_s"] / plaintext_s, 4),
                "vs_torch_sealed": round(b["sealed_s"] / sealed_s, 4),
            })
            print(f"blindfold --device {device}: sealed {b['sealed_s']:.2f} s, plaintext "
                  f"{b['plaintext_s']:.2f} s; PyTorch plaintext {plaintext_s:.2f} s",
                  file=sys.stderr)
        return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m blindfold.bench",
        description="Sealed vs plaintext training in PyTorch, alternating in one run.",
    )
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("torch", help="PyTorch on sealed vs plaintext Fashion-MNIST")
    t.add_argument("--model", default="lenet5", choices=["mlp", "lenet5", "cnn"])
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--rounds", type=int, default=1, help="jobs per side, alternating")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--threads", type=int, default=0,
                   help="threads of PyTorch and of blindfold's jobs (default: each one's own)")
    t.add_argument("--data", default=FASHION_MNIST, help="Fashion-MNIST IDX folder")
    t.add_argument("--dir", default="/var/tmp", help="scratch folder")
    t.add_argument("--burn", nargs="?", const="cpu", action="append",
                   choices=["cpu", "torch-cpu"], metavar="DEVICE",
                   help="also run `blindfold bench train --device DEVICE` (cpu: Burn's Flex, "
                        "the default; torch-cpu: LibTorch, a binary built with --features "
                        "torch) on the same model, same run; repeat for both")
    args = p.parse_args(argv)
    if not os.path.isdir(args.data):
        raise SystemExit(f"{args.data}: no Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    print(json.dumps(bench_torch(args)))


if __name__ == "__main__":
    main()
