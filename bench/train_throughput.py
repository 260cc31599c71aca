"""Training throughput of :func:`modelsteal.training.train` against a minimal hand-written loop, and of the
DP-SGD recipe (Opacus) against plain training, measured in one run.

Model: ``build_model("lenet", input_shape=(1, 28, 28), num_classes=10)``; data: ``--samples`` random
1×28×28 images with random labels (throughput does not depend on the content). Methods, each timed as one
epoch over the same data with batch size 64, SGD lr 0.1 momentum 0.5, interleaved round by round so load
from other processes hits them alike:

- ``hand loop``: ``randperm`` + index + forward + cross-entropy + ``zero_grad`` / ``backward`` / ``step``,
  the least a PyTorch loop can do;
- ``training.train``: the toolkit's one loop (loss object, batch source, callbacks, history);
- ``dp-sgd``: the same loop fed by Opacus' Poisson loader, with per-sample gradients, clipping and noise.

It prints samples/second (median over rounds) and the median over rounds of the paired ratio to the hand
loop, then checks the target: ``training.train`` at ≥ 0.95× the hand loop::

    python bench/train_throughput.py                  # CPU, one torch thread
    python bench/train_throughput.py --repeats 9 --samples 8192
    python bench/train_throughput.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from modelsteal.data.registry import DatasetSplits
from modelsteal.models import build_model
from modelsteal.training import TrainConfig, make_recipe, train

CFG = TrainConfig(epochs=1, batch_size=64, lr=0.1, momentum=0.5)


def hand_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=CFG.lr, momentum=CFG.momentum)
    model.train()
    for idx in torch.randperm(len(x), generator=g).split(CFG.batch_size):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-dp", action="store_true", help="skip the DP-SGD recipe (no Opacus needed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.samples, 1, 28, 28, generator=g).to(dev)
    y = torch.randint(0, 10, (args.samples,), generator=g).to(dev)
    n_val = 256
    data = DatasetSplits(name="random", x_train=x.cpu(), y_train=y.cpu(), x_val=x[:n_val].cpu(),
                         y_val=y[:n_val].cpu(), x_test=x[:n_val].cpu(), y_test=y[:n_val].cpu(), num_classes=10)

    def fresh() -> torch.nn.Module:
        return build_model("lenet", input_shape=(1, 28, 28), num_classes=10, seed=0).to(dev)

    def run_hand() -> None:
        hand_loop(fresh(), x, y, torch.Generator().manual_seed(1))

    def run_train() -> None:
        train(fresh(), x, y, config=CFG, generator=torch.Generator().manual_seed(1), device=dev)

    def run_dp() -> None:
        recipe.fit(fresh(), data, config=CFG, generator=torch.Generator().manual_seed(1), device=dev)

    methods = {"hand loop": run_hand, "training.train": run_train}
    if not args.no_dp:
        recipe = make_recipe("dp-sgd", noise_multiplier=1.0, max_grad_norm=1.0)
        methods["dp-sgd (Opacus)"] = run_dp
    warnings.filterwarnings("ignore")
    for fn in methods.values():  # warm-up: allocator, oneDNN kernels, Opacus hooks
        fn()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"device {dev}, {args.threads} torch thread(s), {args.samples} samples/epoch, batch 64, LeNet 28x28, "
          f"{args.repeats} rounds, load average {load}")
    base = times["hand loop"]
    print(f"{'method':<18} {'samples/s':>10} {'ratio to hand loop':>19}")
    ratios = {}
    for name, ts in times.items():
        ratios[name] = statistics.median(b / t for b, t in zip(base, ts, strict=True))
        print(f"{name:<18} {args.samples / statistics.median(ts):>10.0f} {ratios[name]:>18.3f}x")
    ok = ratios["training.train"] >= 0.95
    print(f"target training.train >= 0.95x hand loop: {'met' if ok else 'NOT met'} ({ratios['training.train']:.3f}x)")
    if "dp-sgd (Opacus)" in ratios:
        print(f"DP-SGD costs {1 / ratios['dp-sgd (Opacus)']:.2f}x plain training time per epoch (per-sample "
              "gradients, clipping, noise; plus one validation pass)")


if __name__ == "__main__":
    main()
