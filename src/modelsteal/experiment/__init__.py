"""Experiments: YAML configs, sweeps over defenses × strengths × attacks × budgets × seeds, tables, plots."""

from modelsteal.experiment.config import SweepConfig, load_config
from modelsteal.experiment.sweep import run_sweep

__all__ = ["SweepConfig", "load_config", "run_sweep"]
