"""``modelsteal angles CONFIG --out DIR``: histogram of angular deviations under white-box MAD (PP paper, Fig. 6)."""

from __future__ import annotations

import argparse
from pathlib import Path

from modelsteal.cli._common import add_device


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "angles",
        help="histogram of the attacker's gradient deviation under white-box MAD (Fig. 6)",
        description="Train a fresh clone online on white-box MAD answers at each epsilon of the config's first "
        "defense and record the angle between its true and poisoned gradients at every query (Orekondy et al., "
        "ICLR 2020, Fig. 6/7). Writes DIR/angles.csv, DIR/angles-summary.csv, DIR/test-loss.csv and two PNGs.",
    )
    p.add_argument("config", help="YAML sweep config: victim, transfer, one mad defense, one attack, one budget")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--scale", default=None, metavar="NAME",
                   help="the config's scale (a name of its `scales` section, e.g. cpu; default full)")
    p.add_argument("--budget", type=int, default=None, help="override the number of queried images")
    p.add_argument("--eval-every", type=int, default=100, help="online steps between test-loss evaluations")
    p.add_argument("--eval-size", type=int, default=2000, help="test images used for the test loss")
    add_device(p)
    return p


def run(args: argparse.Namespace) -> int:
    import time
    from dataclasses import asdict, replace

    from modelsteal.attacks import TrainConfig
    from modelsteal.devices import resolve_device
    from modelsteal.experiment import load_config
    from modelsteal.experiment.angles import online_angles, plot_angles, write_angles
    from modelsteal.experiment.config import victim_key
    from modelsteal.experiment.transfer import build_transfer_set
    from modelsteal.experiment.validate import validate_sweep
    from modelsteal.experiment.victims import load_or_train_victim

    cfg = load_config(args.config, scale=args.scale)
    validate_sweep(cfg)
    dcfg, acfg = cfg.defenses[0], cfg.attacks[0]
    if not dcfg.name.startswith("mad"):
        raise ValueError(f"the first defense must be mad (white-box MAD), got {dcfg.name!r}")
    if dcfg.name != "mad" or dcfg.options.get("preserve_argmax"):
        raise ValueError("angles supports plain MAD (name: mad) only")
    if any(s is None for s in dcfg.strengths):
        raise ValueError("give the epsilon values as the defense's strengths")
    budget = args.budget or cfg.budgets[0]
    if budget < 1:
        raise ValueError(f"--budget must be positive, got {budget}")
    if args.eval_every < 1:
        raise ValueError(f"--eval-every must be >= 1, got {args.eval_every}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(None if args.device == "auto" else args.device)
    if dev.type != "cpu":
        raise ValueError("angles runs on the CPU (batch-size-1 online training gains nothing from a GPU)")
    victim, data, acc, _ = load_or_train_victim(cfg.victim, out_dir=out, device=dev)
    pool, _ = build_transfer_set(cfg.transfer, victim_data=data)
    train = TrainConfig(**acfg.train)
    n = min(args.eval_size, len(data.x_test))
    traces, seconds = [], {}
    for eps in dcfg.strengths:
        t0 = time.perf_counter()
        print(f"epsilon {eps}: {budget} online queries, batch {train.batch_size}", flush=True)
        traces.append(
            online_angles(
                victim, pool, epsilon=float(eps), queries=budget, x_test=data.x_test[:n], y_test=data.y_test[:n],
                clone=acfg.clone or cfg.victim.arch, train_config=train, defense_options=dcfg.options,
                eval_every=args.eval_every, seed=cfg.seeds[0],
            )
        )
        seconds[str(float(eps))] = round(time.perf_counter() - t0, 3)
        s = traces[-1].summary()
        print(f"  mean {s['angle_mean']:.1f}°, median {s['angle_median']:.1f}°, >90°: {100 * s['frac_over_90']:.1f}%, "
              f"test loss {s['test_loss_start']:.3f} -> {s['test_loss_end']:.3f}", flush=True)
    write_angles(traces, out)
    plot_angles(traces, out, title=data.name)
    record_angles_provenance(replace(cfg, budgets=[budget]), out=out, device=dev, seconds=seconds,
                             settings={"eval_every": args.eval_every, "eval_size": n})
    print(f"victim {data.name} test accuracy {100 * acc:.1f}% (victim key {victim_key(cfg)}, "
          f"{asdict(cfg.victim)['arch']}); wrote {out}/angles.csv, angles-summary.csv, test-loss.csv, "
          "fig6-angles.png, fig7-test-loss.png, provenance.json")
    return 0


def record_angles_provenance(cfg, *, out: Path, device, seconds: dict[str, float], settings: dict) -> Path:
    """``out/provenance.json`` for an angles run, as a sweep records it: the victim's SHA-256, the config as
    run, the environment, and each epsilon's wall time (under ``points``, keyed ``epsilon=E``)."""
    from modelsteal.experiment.config import point_key
    from modelsteal.experiment.provenance import start_provenance
    from modelsteal.experiment.results import write_provenance
    from modelsteal.experiment.victims import victim_checkpoint_path

    path = victim_checkpoint_path(cfg.victim, out_dir=out, key=point_key(cfg.victim.identity()))
    prov = start_provenance(cfg, out=out, device=device, victim_path=path)
    prov["angles"] = settings
    for eps, wall in seconds.items():
        prov["points"][f"epsilon={eps}"] = {"wall_seconds": wall, "victim_sha256": prov["victim_sha256"],
                                            "environment_id": prov["environment_id"], "strength": float(eps)}
    return write_provenance(prov, out)
