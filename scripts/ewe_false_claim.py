"""The false-claim attack against EWE verification (Liu et al., USENIX Security 2024), with and without the
commitment check (issue 27, item 4).

An owner trains an EWE victim on his private data (the ``ewe`` recipe; ``train`` commits its trigger set). Later a
dishonest accuser — the same owner, or anyone holding such a checkpoint — wants to claim *independent* models.
He crafts a new "trigger set": source-class images moved by targeted PGD within L∞ ``--eps`` toward the target
class on an ensemble of his own surrogates (:func:`modelsteal.ownership.false_claims.craft_false_triggers`), and
presents it as the watermark. Each independent suspect is verified (budget 100, alpha ``--alpha``):

- ``forged, chance null``: the forged set with the null the accuser controls (the recorded estimate, floored
  at 1/K: what ``verify --method ewe`` does without references);
- ``forged, reference null``: the forged set with the null from honest reference models (Clopper-Pearson bound on
  the largest reference count: adversarial examples transfer to the references too);
- ``forged, commitment``: the forged set checked against the victim's committed trigger set: refused;
- ``genuine``: the committed trigger set, reference null (the honest claim's false-positive count).

    OMP_NUM_THREADS=1 python scripts/ewe_false_claim.py --out results/ownership/ewe-false-claim-digits.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from modelsteal.attacks import TrainConfig
from modelsteal.data import load_dataset
from modelsteal.experiment.ownership import fit_true_labels as fit
from modelsteal.models import build_model
from modelsteal.ownership.commitments import CommitmentError, trigger_commitment
from modelsteal.ownership.false_claims import craft_false_triggers
from modelsteal.ownership.null import clopper_pearson_interval
from modelsteal.ownership.references import REFERENCE_ARCHS
from modelsteal.ownership.watermark import EWEVerifier
from modelsteal.training import make_recipe, watermark_rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--private", type=int, default=500)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--independents", type=int, default=20)
    p.add_argument("--references", type=int, default=6)
    p.add_argument("--surrogates", type=int, default=3)
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--out", type=Path, default=Path("results/ownership/ewe-false-claim-digits.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_dataset(args.dataset, seed=0)
    private = replace(data, x_train=data.x_train[: args.private], y_train=data.y_train[: args.private])
    pool_x, pool_y = data.x_train[args.private:], data.y_train[args.private:]

    def family(count: int, first: int) -> list[nn.Module]:
        out = []
        for i in range(count):
            idx = torch.randperm(len(pool_x), generator=torch.Generator().manual_seed(first + i))[: len(pool_x) // 2]
            out.append(fit(data, REFERENCE_ARCHS[i % 3], first + i, pool_x[idx], pool_y[idx], epochs=args.epochs))
        return out

    model = build_model("mlp", input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std, seed=0)
    victim, hist = make_recipe("ewe").fit(model, private, config=TrainConfig(epochs=10, lr=0.05, momentum=0.9),
                                          generator=torch.Generator().manual_seed(0), device="cpu")
    victim.eval()
    genuine = hist.info["watermark"]
    commitments = {"ewe_triggers": trigger_commitment(genuine["triggers"], genuine["target_class"])}
    surrogates = [victim, *family(args.surrogates - 1, 3000)]
    refs = family(args.references, 1000)
    indeps = family(args.independents, 2000)
    print(f"trained, {time.perf_counter() - t0:.0f}s", flush=True)
    source = pool_x[pool_y == genuine["source_class"]][:100]
    rows, summary = [], []

    def verifier(record: dict, *, refs_null: bool, commit: bool) -> EWEVerifier:
        v = EWEVerifier(watermark=record, alpha=args.alpha).commit(commitments if commit else None).fit(victim)
        if refs_null:
            v.calibrate(refs)
        return v

    settings = [("genuine, reference null", genuine, True, True)]
    for eps in args.eps:
        forged = {**genuine, "triggers": craft_false_triggers(surrogates, source, target=genuine["target_class"],
                                                             eps=eps, steps=40),
                  "null_rate_estimate": 0.0}
        rate_s = [watermark_rate(m, forged["triggers"], genuine["target_class"]) for m in surrogates]
        print(f"eps {eps}: surrogates answer the target on {rate_s}", flush=True)
        settings += [(f"forged eps {eps:g}, chance null", forged, False, False),
                     (f"forged eps {eps:g}, reference null", forged, True, False),
                     (f"forged eps {eps:g}, commitment checked", forged, False, True)]
    for name, record, refs_null, commit in settings:
        try:
            v = verifier(record, refs_null=refs_null, commit=commit)
        except CommitmentError as e:
            summary.append({"setting": name, "claimed": 0, "refused": len(indeps), "suspects": len(indeps),
                            "message": str(e)})
            continue
        verdicts = [v.verify(m, budget=100, seed=0) for m in indeps]
        k = sum(x.stolen for x in verdicts)
        rates = [x.details["success_rate"] for x in verdicts]
        summary.append({"setting": name, "claimed": k, "refused": 0, "suspects": len(indeps),
                        "interval95": clopper_pearson_interval(k, len(indeps)), "null_rate": v.null()[0],
                        "median_rate": sorted(rates)[len(rates) // 2], "max_rate": max(rates)})
        rows += [{"setting": name, "suspect": i, "p_value": x.p_value, "rate": x.details["success_rate"]}
                 for i, x in enumerate(verdicts)]
    print("| evidence, null | independents claimed | refused | null rate | median / max target rate |")
    print("|---|---|---|---|---|")
    for s in summary:
        extra = (f"{s['null_rate']:.3f} | {s['median_rate']:.2f} / {s['max_rate']:.2f}" if "null_rate" in s
                 else "- | -")
        print(f"| {s['setting']} | {s['claimed']}/{s['suspects']} | {s['refused']}/{s['suspects']} | {extra} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                    "rows": rows, "seconds": time.perf_counter() - t0}, indent=1))
    print(f"total {time.perf_counter() - t0:.0f}s; wrote {args.out}")


if __name__ == "__main__":
    main()
