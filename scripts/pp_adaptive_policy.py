"""Where adaptive Knockoff Nets spends its queries: the final class policy and action counts per seed.

Runs the ``knockoff-adaptive`` attack of a sweep config (e.g. ``configs/pp-adaptive-mnist-cpu.yaml``) at one
budget for each of the config's seeds, against its undefended victim, and writes the policy
(``info["policy"]``, the class probabilities from the final preferences) and the per-class action counts::

    python scripts/pp_adaptive_policy.py configs/pp-adaptive-mnist-cpu.yaml --budget 10000 \\
        --out results/pp/pp-adaptive-mnist-cpu/policy-b10000.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from modelsteal import PredictionAPI
from modelsteal.experiment.config import load_config
from modelsteal.experiment.sweep import build_attack, prepare_sweep, resolve_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--budget", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    cfg = load_config(args.config)
    dev = resolve_device(None if args.device == "auto" else args.device)
    inputs = prepare_sweep(cfg, out_dir=args.out.parent, device=dev, progress=False)
    acfg = next((a for a in cfg.attacks if a.name == "knockoff-adaptive"), None)
    if acfg is None:
        raise SystemExit(f"{args.config} has no knockoff-adaptive attack")
    out = {}
    for seed in cfg.seeds:
        attack = build_attack(acfg, victim_arch=cfg.victim.arch, transfer=inputs.transfer, seeds=inputs.seeds,
                              device=dev)
        info = attack(PredictionAPI(inputs.victim), budget=args.budget, seed=seed).info
        out[str(seed)] = {"classes": info["classes"], "policy": [round(float(x), 4) for x in info["policy"]],
                          "action_counts": info["action_counts"].tolist()}
        print(seed, out[str(seed)], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
