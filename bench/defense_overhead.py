"""Throughput of defended and watched prediction APIs against undefended inference, measured in one run.

Victim: ``build_model("lenet", input_shape=(1, 28, 28), num_classes=10, seed=0)`` (randomly initialised: the
cost of a defense or a detector does not depend on training) behind a :class:`~modelsteal.PredictionAPI`,
queried with random 1×28×28 inputs in [0, 1] at batch sizes 1, 64 and 256. Methods:

- ``undefended``: victim forward pass + softmax (the API's query path);
- ``AM``: Adaptive Misinformation (Kariyappa et al., CVPR 2020) at ``--tau``, its misinformation model
  ``f̂`` fitted first (``--am-epochs``), when ``am`` is a registered defense; otherwise a line says so;
- ``MAD last-layer``: MAD (Orekondy et al., ICLR 2020) at ``--epsilon`` with ``G`` over the surrogate's last
  linear layer (closed form, one surrogate forward pass); ``MAD all-params``: ``G`` over every surrogate
  parameter, the Prediction Poisoning defense AM's paper compares its cost with (``--no-mad-all`` skips it);
- ``reverse sigmoid``: Lee et al.'s reverse-sigmoid perturbation (default β, γ);
- ``detector <name>``: each registered detector, fitted on digits upsampled to 28×28 (``--fit-samples``
  training and validation images; uniform noise as the outlier set of detectors that need one) and
  calibrated at 95% TNR, in ``PredictionAPI(victim, detector=det, response="none")``: the detector scores
  every query, the answers are the victim's.

After one warm-up call per method, each of ``--rounds`` rounds times one block of ``--block`` queries per
method (batch size 1 makes that many calls), the methods in a rotated order so that no method always runs
first. It prints queries/second (from the median block time) and, per method, the median over rounds of
the paired cost ratio ``t_method / t_undefended`` of the same round (load from other processes cancels as far
as it can) and its inverse, the throughput ratio. Then AM's paper claims (Sec. 1: under 2× the undefended
cost, and cheaper than PP's gradient computations): AM's cost and whether it is below each MAD's at equal
batch::

    python bench/defense_overhead.py                          # CPU, one torch thread
    python bench/defense_overhead.py --rounds 3 --block 64     # quick
    python bench/defense_overhead.py --device auto --rounds 15
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from modelsteal import PredictionAPI
from modelsteal.data import load_dataset
from modelsteal.data.registry import DatasetSplits
from modelsteal.defenses import MAD, ReverseSigmoid, available_defenses, defense_class, make_defense
from modelsteal.detectors import available_detectors, make_detector
from modelsteal.devices import resolve_device
from modelsteal.models import build_model

SHAPE = (1, 28, 28)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, auto, ...")
    p.add_argument("--rounds", type=int, default=7, help="timed blocks per method and batch size (default 7)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--block", type=int, default=256,
                   help="queries per timed block: batch size 1 makes this many calls (default 256)")
    p.add_argument("--epsilon", type=float, default=0.5, help="MAD's L1 budget (default 0.5)")
    p.add_argument("--no-mad-all", dest="mad_all", action="store_false",
                   help="skip MAD with G over all parameters (the slowest row)")
    p.add_argument("--tau", type=float, default=None, help="AM's MSP threshold (default: its example strength)")
    p.add_argument("--am-epochs", type=int, default=1, help="epochs of AM's f̂ training before timing (default 1)")
    p.add_argument("--fit-samples", type=int, default=500,
                   help="training and validation images the detectors and AM are fitted on (default 500)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1, as in tests/conftest.py: on a shared 2-core machine two "
                        "OpenMP threads thrash; 0 keeps torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("rounds", "block", "fit_samples", "am_epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(b < 1 for b in args.batch_sizes):
        p.error(f"--batch-sizes must be >= 1, got {args.batch_sizes}")
    try:
        args.device = resolve_device(args.device)
    except ValueError as e:
        p.error(str(e))
    return args


def fit_data(n: int, *, seed: int) -> tuple[DatasetSplits, Tensor]:
    """Digits upsampled to 28×28 (``n`` training and at most ``n`` validation images) and ``n`` uniform-noise
    outliers: what the detectors and AM learn from (their cost does not depend on it)."""
    d = load_dataset("digits")

    def up(x: Tensor) -> Tensor:
        return F.interpolate(x, size=SHAPE[1:], mode="bilinear", align_corners=False).clamp(0, 1)

    data = DatasetSplits(name="digits-28", x_train=up(d.x_train[:n]), y_train=d.y_train[:n], x_val=up(d.x_val[:n]),
                         y_val=d.y_val[:n], x_test=up(d.x_test[:n]), y_test=d.y_test[:n], num_classes=d.num_classes)
    outliers = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed + 1))
    return data, outliers


def am_api(victim: torch.nn.Module, data: DatasetSplits, args: argparse.Namespace) -> tuple[str, PredictionAPI]:
    """Adaptive Misinformation at ``--tau`` (its example strength by default), ``f̂`` fitted when it needs it."""
    cls = defense_class("am")
    tau = args.tau if args.tau is not None else cls.example_strength
    options = {"train": {"epochs": args.am_epochs}} if "train" in inspect.signature(cls).parameters else {}
    defense = make_defense("am", strength=tau, **options)
    if getattr(defense, "needs_fit", False):
        defense.fit(victim, data, generator=torch.Generator().manual_seed(args.seed))
    return f"AM tau={tau:g}", PredictionAPI(victim, defense=defense, input_shape=SHAPE, device=args.device)


def build_methods(args: argparse.Namespace) -> tuple[dict[str, PredictionAPI], list[str]]:
    """Every API to time, ``undefended`` first, and the notes to print about what is missing."""
    device = args.device
    victim = build_model("lenet", input_shape=SHAPE, num_classes=10, seed=args.seed).to(device).eval()
    data, outliers = fit_data(args.fit_samples, seed=args.seed)
    apis = {"undefended": PredictionAPI(victim, input_shape=SHAPE, device=device)}
    notes = []
    if "am" in available_defenses():
        name, api = am_api(victim, data, args)
        apis[name] = api
    else:
        notes.append("AM: not available (no defense named 'am' is registered)")
    apis["MAD last-layer"] = PredictionAPI(victim, defense=MAD(epsilon=args.epsilon, jacobian="last_layer"),
                                           input_shape=SHAPE, device=device)
    if args.mad_all:
        apis["MAD all-params"] = PredictionAPI(victim, defense=MAD(epsilon=args.epsilon, jacobian="all"),
                                               input_shape=SHAPE, device=device)
    apis["reverse sigmoid"] = PredictionAPI(victim, defense=ReverseSigmoid(), input_shape=SHAPE, device=device)
    for name in available_detectors():
        det = make_detector(name)
        det.fit(victim, data, outliers=outliers if det.needs_outliers else None,
                generator=torch.Generator().manual_seed(args.seed))
        det.calibrate(data.x_val, tnr=0.95)
        apis[f"detector {name}"] = PredictionAPI(victim, detector=det, response="none", input_shape=SHAPE,
                                                 device=device)
    return apis, notes


def time_block(query: Callable[[Tensor], Tensor], x: Tensor, calls: int, sync: Callable[[], None]) -> float:
    """Seconds per query of ``calls`` calls of ``query(x)``."""
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        query(x)
    sync()
    return (time.perf_counter() - t0) / (calls * x.shape[0])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    apis, notes = build_methods(args)
    names = list(apis)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"device={device} threads={torch.get_num_threads()} rounds={args.rounds} block={args.block} "
          f"victim=LeNet 1x28x28 K=10 MAD epsilon={args.epsilon} load average={os.getloadavg()[0]:.2f}")
    for note in notes:
        print(note)
    print(f"{'batch':>5}  {'method':<22} {'queries/s':>11} {'x undefended':>13} {'cost x':>7}")
    costs: dict[tuple[int, str], float] = {}
    for bs in args.batch_sizes:
        x = torch.rand(bs, *SHAPE, generator=gen).to(device)
        calls = max(1, args.block // bs)
        ref = apis["undefended"].query(x)
        for name in names:  # warm-up; the detectors answer what the victim answers (response "none")
            out = apis[name].query(x)
            if name.startswith("detector"):
                assert torch.allclose(out, ref, atol=1e-6), f"{name} changed the answers"
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(time_block(apis[name].query, x, calls, sync))
        base = times["undefended"]
        for name in names:
            qps = 1.0 / statistics.median(times[name])
            cost = statistics.median(t / b for t, b in zip(times[name], base, strict=True))
            costs[(bs, name)] = cost
            print(f"{bs:>5}  {name:<22} {qps:>11.1f} {1 / cost:>12.3f}x {cost:>7.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    am = next((n for n in names if n.startswith("AM")), None)
    if am is None:
        print("AM claims: not checked (AM not available)")
        return
    mads = [n for n in names if n.startswith("MAD")]
    for bs in args.batch_sizes:
        c_am = costs[(bs, am)]
        vs = "; ".join(f"{n} {costs[(bs, n)]:.2f}x: AM cheaper {'yes' if c_am < costs[(bs, n)] else 'NO'}"
                       for n in mads)
        print(f"claim @{bs}: AM costs {c_am:.2f}x undefended (paper: < 2x): {'met' if c_am < 2 else 'NOT met'}; {vs}")


if __name__ == "__main__":
    main()
