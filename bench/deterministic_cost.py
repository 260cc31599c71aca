"""What the determinism switch (``modelsteal --deterministic``) costs in training speed, measured in one run.

Model: ``build_model("lenet", input_shape=(1, 28, 28), num_classes=10)``; data: random MNIST-sized images with
random labels (speed does not depend on the content); ``--steps`` SGD steps of batch 64 through
:func:`modelsteal.training.train`. Each measurement is a fresh subprocess (the switch is process-global, so
it must not leak from one arm into the other), either plain or after
:func:`modelsteal.determinism.enable_determinism`, both on ``--threads`` torch threads; the two arms
alternate round by round so load from other processes hits them alike. A short warm-up run precedes the
timed one in each process. It prints each arm's median time, the median over rounds of the paired ratio
(switch on / off), and whether the two arms trained the same weights (a checksum)::

    python bench/deterministic_cost.py                    # CPU, one torch thread
    python bench/deterministic_cost.py --rounds 7 --steps 400
    python bench/deterministic_cost.py --device cuda --threads 4
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch

BATCH = 64


def child(*, deterministic: bool, steps: int, threads: int, device: str) -> None:
    """One timed training run; prints ``SECONDS CHECKSUM``."""
    from modelsteal.determinism import enable_determinism
    from modelsteal.models import build_model
    from modelsteal.training import TrainConfig, train

    if deterministic:
        enable_determinism(threads=threads)
    else:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(steps * BATCH, 1, 28, 28, generator=g).to(dev)
    y = torch.randint(0, 10, (steps * BATCH,), generator=g).to(dev)
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=0.05, momentum=0.5)

    def run(n: int) -> torch.nn.Module:
        model = build_model("lenet", input_shape=(1, 28, 28), num_classes=10, seed=0).to(dev)
        train(model, x[: n * BATCH], y[: n * BATCH], config=config, generator=torch.Generator().manual_seed(1),
              device=dev)
        return model

    run(max(steps // 10, 2))  # warm-up: kernels chosen, caches filled
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model = run(steps)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    checksum = sum(float(p.double().sum()) for p in model.parameters())
    print(f"{seconds:.6f} {checksum!r}")


def measure(*, deterministic: bool, args: argparse.Namespace) -> tuple[float, str]:
    cmd = [sys.executable, __file__, "--child", "on" if deterministic else "off", "--steps", str(args.steps),
           "--threads", str(args.threads), "--device", args.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="SGD steps per timed run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--child", choices=["on", "off"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(deterministic=args.child == "on", steps=args.steps, threads=args.threads, device=args.device)
        return
    times: dict[bool, list[float]] = {False: [], True: []}
    sums: dict[bool, set[str]] = {False: set(), True: set()}
    ratios = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for arm in order:
            seconds, checksum = measure(deterministic=arm, args=args)
            times[arm].append(seconds)
            sums[arm].add(checksum)
        ratios.append(times[True][-1] / times[False][-1])
    print(f"lenet, {args.steps} steps of batch {BATCH}, {args.threads} thread(s), {args.device}, "
          f"{args.rounds} rounds")
    for arm, name in ((False, "plain"), (True, "--deterministic")):
        ms = 1000 * statistics.median(times[arm]) / args.steps
        print(f"  {name:16s} median {statistics.median(times[arm]):.3f} s ({ms:.2f} ms/step), "
              f"min {min(times[arm]):.3f} s, max {max(times[arm]):.3f} s")
    print(f"  ratio deterministic / plain: median {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{q:.3f}' for q in ratios)})")
    same_within = all(len(s) == 1 for s in sums.values())
    print(f"  weights: each arm identical across rounds: {same_within}; "
          f"arms agree with each other: {same_within and sums[False] == sums[True]}")


if __name__ == "__main__":
    main()
