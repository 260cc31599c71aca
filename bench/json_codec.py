"""The v2 inference bodies' JSON: :mod:`modelsteal.serve.jsonio` (orjson, with the standard library's behaviour)
against the standard library, measured in one run on the bodies the server and the gateway write and read::

    python bench/json_codec.py                  # 16 and 256 rows of 64 features, answers of 10 classes

Prints per body the time to encode and to parse with each, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelsteal.serve import jsonio  # noqa: E402
from modelsteal.serve.codec_v2 import encode_infer_request, encode_infer_response  # noqa: E402


def per_call(fn: Callable[[], object], *, seconds: float = 0.5) -> float:
    """Median seconds per call over five rounds of about ``seconds / 5`` each."""
    fn()
    n, t = 1, 0.0
    while t < 0.02:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        n *= 2
    reps = max(1, int(n * seconds / 5 / max(t, 1e-9)))
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        rounds.append((time.perf_counter() - t0) / reps)
    return sorted(rounds)[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[16, 256])
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    args = p.parse_args(argv)
    if jsonio.orjson is None:
        print("orjson is not installed (pip install 'modelsteal[serve]'): both columns would be the standard library",
              file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    print(f"{'body':34s} {'stdlib ms':>10s} {'jsonio ms':>10s} {'x faster':>9s}")
    for rows in args.rows:
        x = rng.random((rows, args.features), dtype=np.float32)
        y = rng.random((rows, args.classes), dtype=np.float32)
        request = encode_infer_request(x, input_name="input-0")
        plain = {**request, "inputs": [{**request["inputs"][0], "data": x.reshape(-1).tolist()}]}
        answer = encode_infer_response(model_name="m", outputs=[("probabilities", y, False)])[0]
        body = jsonio.dumps(request)
        cases = {
            f"encode request {rows}x{args.features}": (
                lambda plain=plain: json.dumps(plain, separators=(",", ":"), allow_nan=False).encode(),
                lambda request=request: jsonio.dumps(request)),
            f"parse request {rows}x{args.features}": (
                lambda b=body: json.loads(b), lambda b=body: jsonio.loads(b)),
            f"encode answer {rows}x{args.classes}": (
                lambda y=y: json.dumps({"model_name": "m", "outputs": [{"name": "probabilities", "datatype": "FP32",
                                        "shape": list(y.shape), "data": y.reshape(-1).tolist()}]},
                                       separators=(",", ":"), allow_nan=False).encode(),
                lambda y=y: encode_infer_response(model_name="m", outputs=[("probabilities", y, False)])[0]),
            f"parse answer {rows}x{args.classes}": (lambda a=answer: json.loads(a), lambda a=answer: jsonio.loads(a)),
        }
        for name, (std, fast) in cases.items():
            a, b = per_call(std), per_call(fast)
            print(f"{name:34s} {a * 1e3:10.3f} {b * 1e3:10.3f} {a / b:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
