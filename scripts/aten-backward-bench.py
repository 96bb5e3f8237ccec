#!/usr/bin/env python3
"""Per-call time of the backward steps that crates/zone/src/libtorch replaces, in PyTorch.

For the built-in models' convolutions (batch 64), times what Burn's generic defaults ask
LibTorch for, against the ATen operators PyTorch (and now blindfold on `torch-cpu`)
calls:

- ReLU backward: a `<=` mask and `masked_fill`, against one `threshold_backward`;
- a convolution's weight gradient: a convolution over dimension-swapped tensors,
  against `convolution_backward`; its input gradient: a transposed convolution, against
  `convolution_backward`; its bias gradient: swap, reshape (a copy), sum, against a sum.

Checks that each pair gives the same values (to float rounding), then prints
milliseconds per call. Needs PyTorch; not part of the tests.

    python3 scripts/aten-backward-bench.py [--threads 2]
"""
import argparse
import time

import torch

aten = torch.ops.aten


def per_call_ms(f, n=40):
    f()
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per call")
    layers = [  # model, c_in, c_out, side, kernel, padding
        ("cnn conv1", 1, 32, 28, 3, 1),
        ("cnn conv2", 32, 64, 14, 3, 1),
        ("lenet5 conv1", 1, 6, 28, 5, 2),
        ("lenet5 conv2", 6, 16, 14, 5, 0),
    ]
    for name, cin, cout, side, k, pad in layers:
        x = torch.randn(64, cin, side, side)
        w = torch.randn(cout, cin, k, k)
        out = side + 2 * pad - k + 1
        g = torch.randn(64, cout, out, out)
        y = torch.relu(torch.randn(64, cout, out, out))

        def aten_grads(mask):
            return aten.convolution_backward(
                g, x, w, [cout], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask)

        def burn_weight():
            return torch.conv2d(x.transpose(0, 1), g.transpose(0, 1), None, 1, pad).transpose(0, 1)

        def burn_input():
            return torch.conv_transpose2d(g, w, None, 1, pad)

        def burn_bias():
            return g.transpose(0, 1).reshape(cout, -1).sum(1)

        def burn_relu():
            return g.masked_fill(y <= 0, 0)

        def aten_relu():
            return aten.threshold_backward(g, y, 0)

        gi, gw, gb = aten_grads([True, True, True])
        for ours, theirs in [(gw, burn_weight()), (gi, burn_input()), (gb, burn_bias())]:
            assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-3 * theirs.abs().max()), name
        assert torch.equal(aten_relu(), burn_relu()), name
        rows = {
            "weight grad": (lambda: aten_grads([False, True, False]), burn_weight),
            "input grad": (lambda: aten_grads([True, False, False]), burn_input),
            "bias grad": (lambda: g.sum((0, 2, 3)), burn_bias),
            "relu backward": (aten_relu, burn_relu),
        }
        for what, (fast, slow) in rows.items():
            print(f"{name:13} {what:13} ATen {per_call_ms(fast):6.2f}  Burn's default {per_call_ms(slow):6.2f}")


if __name__ == "__main__":
    main()
