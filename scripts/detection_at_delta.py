"""PRADA's detections at other thresholds δ, read off a detection sweep's points without re-running anything.

PRADA's statistic W over a client's stream does not depend on δ, so a client is flagged at δ exactly when the
lowest W its stream reached (``min_w`` in each point's record) is below δ. For each δ given, this prints per
attack how many runs would be detected (for ``benign`` clients: false positives)::

    .venv/bin/python scripts/detection_at_delta.py results/detection/prada-mnist-cpu --delta 0.95 0.94 0.93

Points without ``min_w`` (Sybil keys that never reached ``min_stream`` distances, detectors other than PRADA)
count as never flagged, as they were in the sweep.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from modelsteal.cli.main import OneLineParser


def main() -> None:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path, help="detection sweep result directories")
    p.add_argument("--delta", nargs="+", type=float, required=True, help="thresholds delta in (0, 1)")
    args = p.parse_args()
    for d in args.delta:
        if not 0 < d < 1:
            p.error(f"--delta must lie in (0, 1), got {d}")
    for out in args.dirs:
        points = sorted((out / "points").glob("*.json"))
        if not points:
            p.error(f"{out} holds no points/*.json: is it a sweep's output directory?")
        runs: dict[str, list[float | None]] = defaultdict(list)
        calibrated = set()
        for path in points:
            r = json.loads(path.read_text())
            if r.get("detector") is None:
                continue
            runs[r["attack"]].append(r.get("min_w"))
            calibrated.add(r.get("detector_delta"))
        print(f"{out} (calibrated delta: {', '.join(f'{c:.4f}' for c in sorted(calibrated - {None}))})")
        print(f"  {'attack':<24}" + "".join(f"{'δ=' + format(d, 'g'):>10}" for d in args.delta))
        for attack, lows in runs.items():
            hits = [sum(w is not None and w < d for w in lows) for d in args.delta]
            cells = "".join(f"{h}/{len(lows)}".rjust(10) for h in hits)
            print(f"  {attack:<24}{cells}")


if __name__ == "__main__":
    main()
