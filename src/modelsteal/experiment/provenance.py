"""Provenance: what a results directory was made with, in ``DIR/provenance.json``.

It records the victim file's SHA-256 (each row of ``results.csv`` also carries its own, column
``victim_sha256``), the config hash, the git commit, library versions, threads, CPU and oneDNN ISA
(:mod:`modelsteal.experiment.environment`), and each point's wall time. A sweep into a directory recorded with
another victim says so in one line on stderr.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from modelsteal.experiment.config import SweepConfig, point_key
from modelsteal.experiment.environment import environment, file_sha256
from modelsteal.experiment.results import read_provenance


def config_hash(cfg: SweepConfig) -> str:
    """The sweep's identity as :func:`point_key` hashes it: every field of the config as run (overrides of
    budgets, seeds, ``--only`` and the device included; an absent ``detector`` or ``benign`` section, and an
    absent model file ``victim.path``/``victim.spec``, left out, so configs made before them keep their hash)."""
    d = asdict(cfg)
    for key in ("detector", "benign"):
        if d.get(key) is None:
            d.pop(key, None)
    for key in ("path", "spec"):  # a victim trained from its config: the hash it had before model files
        if d["victim"].get(key) is None:
            d["victim"].pop(key, None)
    return point_key(d)


def warn_victim_change(out: Path, path: Path, *, recorded: str | None, now: str) -> bool:
    """One line on stderr when ``out`` was recorded with victim SHA-256 ``recorded`` and ``path`` now has
    ``now`` (a warning: the sweep goes on, its new rows carry the new hash); whether it warned."""
    if recorded is None or recorded == now:
        return False
    print(f"warning: {out} was recorded with victim sha256 {recorded[:12]}, but {path} now has {now[:12]}; "
          "rows made with each are marked in results.csv column victim_sha256", file=sys.stderr)
    return True


def start_provenance(cfg: SweepConfig, *, out: Path, device: torch.device, victim_path: Path) -> dict[str, Any]:
    """``out``'s provenance updated for this run: the victim's SHA-256 (warning once when it differs from the
    recorded one; the old value kept in ``previous_victim_sha256``), the config hash and this environment;
    per-point entries of earlier runs are kept."""
    prov = read_provenance(out)
    sha = file_sha256(victim_path)
    previous = list(prov.get("previous_victim_sha256", []))
    if warn_victim_change(out, victim_path, recorded=prov.get("victim_sha256"), now=sha):
        previous.append(prov["victim_sha256"])
    env = environment(device=device)
    environments = dict(prov.get("environments", {}))
    environments[point_key(env)] = env
    prov.update({
        "config_name": cfg.name,
        "config_hash": config_hash(cfg),
        "config": asdict(cfg),  # what `modelsteal reproduce` re-runs points from
        "victim_path": str(victim_path),
        "out_dir": str(out),  # recorded paths are relative to the working directory; reproduce rebases them
        "victim_sha256": sha,
        "previous_victim_sha256": previous,
        "victims": {**prov.get("victims", {}), str(victim_path): sha},
        "environment": env,
        "environment_id": point_key(env),
        "environments": environments,
        "points": dict(prov.get("points", {})),
    })
    return prov


def recipe_victim_sha(prov: dict[str, Any], path: Path, *, out: Path) -> str:
    """The SHA-256 of a recipe defense's victim at ``path``, checked against (and recorded in) ``prov``."""
    sha = file_sha256(path)
    warn_victim_change(out, path, recorded=prov["victims"].get(str(path)), now=sha)
    prov["victims"][str(path)] = sha
    return sha
