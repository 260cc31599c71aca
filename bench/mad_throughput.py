"""Throughput of MAD (Orekondy et al., ICLR 2020) against undefended inference, measured in one run.

Victim: ``build_model("lenet", input_shape=(1, 28, 28), num_classes=10)`` (randomly initialised: MAD's cost
does not depend on training) behind a :class:`~modelsteal.PredictionAPI`, queried with random 1×28×28
inputs at batch sizes 1, 64 and 256. Methods, timed interleaved so that load from other processes hits
them alike:

- ``undefended``: victim forward pass + softmax (the API's query path);
- ``MAD last-layer``: + MAD with ``G`` over the surrogate's last linear layer (Gram matrix in closed form);
- ``MAD all-params``: + MAD with ``G`` over every surrogate parameter (layer-wise Gram matrix);
- ``autograd loop (last layer / all params)``: what the authors' code does, per sample and per class one
  ``torch.autograd.grad`` of ``log softmax_k`` over the parameters, ``G`` built explicitly, every vertex
  scored, then ``OptStep``; run on at most ``--loop-samples`` samples per measurement (it is per sample).

Each of ``--repeats`` rounds times one block per method, in turn. It prints queries/second (from the
median block time, or ``--stat min``) and the ratios to undefended: throughput ratio and cost ratio, both
the median over rounds of the paired ratio ``t_method / t_undefended`` of the same round, so that load
from other processes (shown by the load averages in the header) cancels as far as possible. Then the two
targets: last-layer MAD at batch 256 ≥ 0.45× undefended throughput, all-parameter MAD ≤ 14× the cost.
The loops are checked to give the same answers as the batched defense::

    python bench/mad_throughput.py                      # CPU, one torch thread
    python bench/mad_throughput.py --threads 2          # two intra-op threads
    python bench/mad_throughput.py --device cuda --repeats 20
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelsteal import PredictionAPI
from modelsteal.defenses import MAD
from modelsteal.defenses.mad import opt_step
from modelsteal.models import build_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--repeats", type=int, default=7, help="timed blocks per method and batch size (default 7)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--block", type=int, default=32,
                   help="queries per timed block: batch size 1 makes this many calls (default 32)")
    p.add_argument("--loop-samples", type=int, default=4, help="samples per block for the autograd loops")
    p.add_argument("--epsilon", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1, as in tests/conftest.py: on a shared 2-core machine two "
                        "OpenMP threads thrash; 0 keeps torch's default)")
    p.add_argument("--stat", choices=["median", "min"], default="median")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def authors_loop(surrogate: nn.Module, params: list[Tensor], x: Tensor, y: Tensor, epsilon: float) -> Tensor:
    """MAD as in the authors' code: per sample, per class ``autograd.grad``, explicit ``G``, vertex scores."""
    out = []
    k = y.shape[1]
    for n in range(x.shape[0]):
        with torch.enable_grad():
            logp = F.log_softmax(surrogate(x[n : n + 1]), dim=1)[0]
            rows = []
            for c in range(k):
                grads = torch.autograd.grad(logp[c], params, retain_graph=c < k - 1)
                rows.append(torch.cat([g.reshape(-1) for g in grads]))
        g = torch.stack(rows)  # (K, D)
        u = g.T @ y[n]
        u = u / u.norm()
        a = g / g.norm(dim=1, keepdim=True)  # Gᵀe_k is row k of G
        scores = ((a - u) ** 2).sum(dim=1)
        y_star = F.one_hot(scores.argmax(), k).to(y.dtype)
        out.append(opt_step(y[n : n + 1], y_star[None], epsilon, "l1")[0])
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = (1, 28, 28)
    victim = build_model("lenet", input_shape=shape, num_classes=10, seed=args.seed).to(device).eval()
    undefended = PredictionAPI(victim, input_shape=shape, device=device)
    mad_last = PredictionAPI(victim, defense=MAD(epsilon=args.epsilon, jacobian="last_layer"), input_shape=shape,
                             device=device)
    mad_all = PredictionAPI(victim, defense=MAD(epsilon=args.epsilon, jacobian="all"), input_shape=shape,
                            device=device)
    # the loops use the same fixed random surrogate, with parameters that take gradients
    loop_sur = copy.deepcopy(mad_all.defense.surrogate).requires_grad_(True)
    last_params = [loop_sur.head.weight, loop_sur.head.bias]
    all_params = list(loop_sur.parameters())

    def loop(params: list[Tensor]) -> Callable[[Tensor], Tensor]:
        def run(x: Tensor) -> Tensor:
            return authors_loop(loop_sur, params, x, undefended.posteriors(x), args.epsilon)

        return run

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    methods: dict[str, tuple[Callable[[Tensor], Tensor], bool]] = {
        "undefended": (undefended.query, False),
        "MAD last-layer": (mad_last.query, False),
        "MAD all-params": (mad_all.query, False),
        "autograd loop (last layer)": (loop(last_params), True),
        "autograd loop (all params)": (loop(all_params), True),
    }
    gen = torch.Generator().manual_seed(args.seed)
    stat = statistics.median if args.stat == "median" else min
    print(f"device={device} threads={torch.get_num_threads()} repeats={args.repeats} stat={args.stat} "
          f"epsilon={args.epsilon} victim=LeNet 1x28x28 K=10 load average={os.getloadavg()[0]:.2f}")
    print(f"{'batch':>5}  {'method':<28} {'queries/s':>11} {'x undefended':>13} {'cost x':>7}")
    results: dict[tuple[int, str], float] = {}
    for bs in args.batch_sizes:
        x = torch.rand(bs, *shape, generator=gen).to(device)
        calls = max(1, args.block // bs)
        x_loop = x[: min(bs, args.loop_samples)]
        # sanity: the loops answer what the batched defense answers (same surrogate, same y*)
        ref = mad_last.query(x_loop), mad_all.query(x_loop)
        got = loop(last_params)(x_loop), loop(all_params)(x_loop)
        agree = [float((r - g).abs().max()) for r, g in zip(ref, got, strict=True)]
        times: dict[str, list[float]] = {name: [] for name in methods}
        for fn, is_loop in methods.values():  # warm-up
            fn(x_loop if is_loop else x)
        for _ in range(args.repeats):
            for name, (fn, is_loop) in methods.items():
                xb, n = (x_loop, 1) if is_loop else (x, calls)
                sync()
                t0 = time.perf_counter()
                for _ in range(n):
                    fn(xb)
                sync()
                times[name].append((time.perf_counter() - t0) / (n * xb.shape[0]))
        base = times["undefended"]
        for name in methods:
            qps = 1.0 / stat(times[name])
            cost = statistics.median(t / b for t, b in zip(times[name], base, strict=True))
            results[(bs, name)] = cost
            print(f"{bs:>5}  {name:<28} {qps:>11.1f} {1 / cost:>12.3f}x {cost:>7.2f}")
        print(f"       loops vs batched MAD on {x_loop.shape[0]} samples: max |diff| last-layer {agree[0]:.1e}, "
              f"all-params {agree[1]:.1e}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if 256 in args.batch_sizes:
        last, full = 1 / results[(256, "MAD last-layer")], results[(256, "MAD all-params")]
        print(f"target: last-layer MAD @256 = {last:.3f}x undefended throughput (>= 0.45x): "
              f"{'met' if last >= 0.45 else 'NOT met'}")
        print(f"target: all-params MAD @256 costs {full:.2f}x undefended (<= 14x): "
              f"{'met' if full <= 14 else 'NOT met'}")


if __name__ == "__main__":
    main()
