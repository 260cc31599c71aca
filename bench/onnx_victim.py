"""An ONNX Runtime victim against the same model in torch, undefended and behind MAD, measured in one run.

Victim: ``build_model("lenet", input_shape=(1, 28, 28), num_classes=10, seed=0)`` (randomly initialised: the cost
does not depend on training), once as the torch module and once exported with ``torch.onnx.export`` and loaded
through :func:`modelsteal.models.formats.load_model` (ONNX Runtime, CPU execution provider, as many intra-op
threads as torch has). Both sit behind a :class:`~modelsteal.PredictionAPI` queried with random 1×28×28 inputs
in [0, 1]. Methods:

- ``undefended``: the victim's forward pass + softmax (the API's query path);
- ``MAD``: MAD (Orekondy et al., *Prediction Poisoning: Towards Defenses Against DNN Model Stealing Attacks*,
  ICLR 2020) at ``--epsilon``, last-layer Jacobian. The torch victim's surrogate is a random copy of the victim
  (the default); the ONNX victim has no torch layers to copy, so MAD builds a randomly initialised LeNet (the
  same architecture), which is what the paper recommends: the two MAD rows do the same surrogate work.

After one warm-up call per configuration, each of ``--rounds`` rounds times one block of ``--block`` queries per
configuration, in a rotated order. Printed: rows/second (median block time) per configuration, and per method
the median over rounds of the paired ratio ``onnx rows/s ÷ torch rows/s`` of the same round, plus MAD's cost
over undefended for each backend::

    python bench/onnx_victim.py                    # one torch thread, batch 256
    python bench/onnx_victim.py --rounds 3 --block 512 --batch-size 64
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from modelsteal import PredictionAPI
from modelsteal.defenses import make_defense
from modelsteal.models import build_model
from modelsteal.models.formats import load_model

SHAPE = (1, 28, 28)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7, help="timed blocks per configuration (default 7)")
    p.add_argument("--block", type=int, default=2048, help="queries per timed block (default 2048)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per query call (default 256)")
    p.add_argument("--epsilon", type=float, default=0.5, help="MAD's L1 budget (default 0.5)")
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads (default 1)")
    return p.parse_args(argv)


def apis(folder: Path, *, epsilon: float) -> dict[tuple[str, str], PredictionAPI]:
    """The four configurations: (backend, method) -> API."""
    victim = build_model("lenet", input_shape=SHAPE, num_classes=10, seed=0).eval()
    path = folder / "lenet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(victim, (torch.zeros(2, *SHAPE),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    onnx = load_model(path).model
    logging.getLogger("modelsteal").setLevel(logging.ERROR)  # MAD's note about its surrogate: known here
    return {
        ("torch", "undefended"): PredictionAPI(victim),
        ("onnx", "undefended"): PredictionAPI(onnx),
        ("torch", "MAD"): PredictionAPI(victim, defense=make_defense("mad", strength=epsilon)),
        ("onnx", "MAD"): PredictionAPI(onnx, defense=make_defense("mad", strength=epsilon)),
    }


def time_block(api: PredictionAPI, x: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    for xb in x.split(batch):
        api.query(xb)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.rand(args.block, *SHAPE, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        configs = apis(Path(tmp), epsilon=args.epsilon)
        names = list(configs)
        same = (configs[("onnx", "undefended")].query(x[:64]) - configs[("torch", "undefended")].query(x[:64]))
        for api in configs.values():
            api.query(x[: args.batch_size])  # warm-up
        times: dict[tuple[str, str], list[float]] = {k: [] for k in names}
        for r in range(args.rounds):
            for k in names[r % len(names):] + names[: r % len(names)]:
                times[k].append(time_block(configs[k], x, args.batch_size))
    rate = {k: args.block / statistics.median(v) for k, v in times.items()}
    print(f"LeNet 1x28x28, batch {args.batch_size}, {args.rounds} rounds of {args.block} queries, "
          f"{args.threads} thread(s); max |onnx - torch| posterior difference {same.abs().max().item():.2e}")
    print(f"{'method':<12} {'torch rows/s':>13} {'onnx rows/s':>12} {'onnx/torch':>11}")
    for method in ("undefended", "MAD"):
        ratio = statistics.median(t / o for t, o in zip(times[("torch", method)], times[("onnx", method)],
                                                        strict=True))
        print(f"{method:<12} {rate[('torch', method)]:>13.0f} {rate[('onnx', method)]:>12.0f} {ratio:>10.2f}x")
    for backend in ("torch", "onnx"):
        cost = statistics.median(m / u for m, u in zip(times[(backend, "MAD")], times[(backend, "undefended")],
                                                       strict=True))
        print(f"MAD costs {cost:.2f}x the undefended time on the {backend} victim")


if __name__ == "__main__":
    main()
