"""Sweep throughput: points per hour of one fixed 8-point Knockoff sweep on digits, by executor, in one run.

The sweep (``SWEEP`` below): the digits victim (trained once before timing, shared by every run through its
checkpoint), Knockoff with the bundled sample-photo patches at one budget and seed, and 8 operating points —
undefended, reverse sigmoid ×3, random noise ×2, rounding, top-1 — so all 8 clones share their queries. Each
configuration runs the whole sweep into a fresh directory (victim already cached), wall time measured around
:func:`~modelsteal.experiment.run_sweep`, worker start-up included:

- ``serial``: one point after another in this process (``--threads`` torch threads; 1 by default);
- ``pool-2``: two worker processes, one torch thread each;
- ``ray-2``: a local Ray cluster of two CPUs, one task per point (start-up of the cluster not timed, as a user
  attaches to a running one; the first task's import of torch is);
- ``stacked``: serial, the 8 clones trained together (``--stack-clones 8``);
- ``stacked+pool-2``: two workers, 4 stacked clones each.

It prints seconds, points per hour and the ratio of each to serial, and checks the issue's target: the whole
curve with stacked clones (the better of ``stacked`` and ``stacked+pool-2``) in at most 1/3 of the serial time::

    python bench/sweep_throughput.py                  # lenet clones, as the demo
    python bench/sweep_throughput.py --clone mlp --epochs 20
    python bench/sweep_throughput.py --skip ray-2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from modelsteal.experiment import run_sweep
from modelsteal.experiment.config import parse_config
from modelsteal.experiment.executors import make_executor

CONFIGS = ("serial", "pool-2", "ray-2", "stacked", "stacked+pool-2")


def sweep_config(victim: Path, *, clone: str, epochs: int, budget: int) -> dict:
    train = {"epochs": epochs, "lr": 0.1, "momentum": 0.5, "batch_size": 64}
    return {
        "name": "bench-sweep-throughput",
        "victim": {"dataset": "digits", "arch": "lenet", "epochs": 20, "checkpoint": str(victim)},
        "transfer": {"source": "sample-patches"},
        "defenses": [
            {"name": "none"},
            {"name": "reverse-sigmoid", "strengths": [0.1, 0.3, 0.6], "options": {"gamma": 0.2}},
            {"name": "random-noise", "strengths": [20.0, 80.0], "options": {"norm": "l1"}},
            {"name": "rounding", "strengths": [1]},
            {"name": "top-k", "strengths": [1]},
        ],
        "attacks": [{"name": "knockoff", "clone": clone, "train": train}],
        "budgets": [budget],
        "seeds": [0],
        "device": "cpu",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clone", default="lenet", help="clone architecture (default lenet)")
    ap.add_argument("--epochs", type=int, default=10, help="clone training epochs (default 10)")
    ap.add_argument("--budget", type=int, default=1500, help="queries per point (default 1500)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the serial runs (default 1)")
    ap.add_argument("--skip", nargs="*", default=[], choices=CONFIGS, help="configurations to leave out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    raw = sweep_config(root / "victim.pt", clone=args.clone, epochs=args.epochs, budget=args.budget)
    cfg = parse_config(raw)
    run_sweep(cfg, out_dir=root / "warm", progress=False, plots=False, stack_clones=1)  # trains the victim once
    ray = None
    if "ray-2" not in args.skip:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    plans = {
        "serial": dict(executor="serial", stack_clones=1),
        "pool-2": dict(executor=lambda: make_executor("pool", workers=2), stack_clones=1),
        "ray-2": dict(executor=lambda: make_executor("ray", workers=2), stack_clones=1),
        "stacked": dict(executor="serial", stack_clones=8),
        "stacked+pool-2": dict(executor=lambda: make_executor("pool", workers=2), stack_clones=4),
    }
    seconds: dict[str, float] = {}
    accuracy: dict[str, list[float]] = {}
    for name, spec in plans.items():
        if name in args.skip:
            continue
        executor = spec["executor"]() if callable(spec["executor"]) else spec["executor"]
        t0 = time.perf_counter()
        records = run_sweep(cfg, out_dir=root / name, progress=False, plots=False, executor=executor,
                            stack_clones=spec["stack_clones"])
        seconds[name] = time.perf_counter() - t0
        accuracy[name] = [r["attacker_accuracy"] for r in records]
    if ray is not None:
        ray.shutdown()
    print(f"8-point Knockoff sweep on digits: clone {args.clone}, {args.epochs} epochs, budget {args.budget}, "
          f"{os.cpu_count()} CPU(s), torch {torch.__version__}")
    print(f"{'configuration':<16} {'seconds':>8} {'points/h':>9} {'× serial':>9}  max |Δ clone acc| vs serial")
    base = seconds.get("serial")
    for name, s in seconds.items():
        ratio = "" if base is None else f"{base / s:8.2f}×"
        delta = "" if "serial" not in accuracy else max(
            abs(a - b) for a, b in zip(accuracy[name], accuracy["serial"], strict=True))
        print(f"{name:<16} {s:8.1f} {8 * 3600 / s:9.0f} {ratio:>9}  {delta if delta == '' else f'{delta:.4f}'}")
    stacked = [seconds[n] for n in ("stacked", "stacked+pool-2") if n in seconds]
    if base is not None and stacked:
        best = min(stacked)
        verdict = "met" if best <= base / 3 else "NOT met"
        print(f"target (stacked clones within 1/3 of serial): {verdict} — best stacked {best:.1f} s vs serial "
              f"{base:.1f} s ({base / best:.2f}×)")


if __name__ == "__main__":
    main()
