"""The v2 bodies' JSON (serve/jsonio.py): orjson where installed, but the standard library's numbers, refusals
and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelsteal.serve import jsonio
from modelsteal.serve.codec_v2 import encode_infer_response

pytestmark = pytest.mark.skipif(jsonio.orjson is None, reason="orjson (the serve extra) is not installed")


def _tricky_float32() -> np.ndarray:
    a = np.random.default_rng(0).random(200, dtype=np.float32)
    a[:6] = [0.1, 1e-7, 3e-45, 1.0, 0.0, 16777217.0]
    return a


def test_float32_arrays_read_back_as_the_doubles_tolist_gives() -> None:
    # orjson alone writes float32 as float32's shortest text (0.1 -> "0.1"), which a reader takes as another double
    a = _tricky_float32()
    got = jsonio.loads(jsonio.dumps({"data": a}))["data"]
    assert got == a.tolist()
    assert got[0] == 0.10000000149011612


def test_the_fallback_without_orjson_gives_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    a = _tricky_float32()
    fast = jsonio.dumps({"d": a, "n": 3, "s": "x"})
    monkeypatch.setattr(jsonio, "orjson", None)
    slow = jsonio.dumps({"d": a, "n": 3, "s": "x"})
    assert slow == json.dumps({"d": a.tolist(), "n": 3, "s": "x"}, separators=(",", ":")).encode()
    assert json.loads(fast) == json.loads(slow)


@pytest.mark.parametrize("bad", [np.array([0.5, np.nan], dtype=np.float32), np.array([np.inf]), [1.0, float("-inf")],
                                 float("nan")])
def test_nan_and_infinity_are_refused_as_json_dumps_refuses_them(bad: object) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        jsonio.dumps({"outputs": [{"data": bad}]})


def test_an_answer_with_nan_is_refused_not_written_as_null() -> None:
    with pytest.raises(ValueError):
        encode_infer_response(model_name="m", outputs=[("p", np.array([[0.5, np.nan]]), False)])


def test_loads_accepts_and_refuses_what_json_loads_does() -> None:
    assert np.isnan(jsonio.loads(b"[NaN]")[0])  # orjson refuses NaN literals; the standard library reads them
    assert jsonio.loads(b"[1e400]") == [float("inf")]
    assert jsonio.loads(b'{"a": 1, "a": 2}') == {"a": 2}
    for body in (b'{"inputs": }', b"[1, 2", b"\xff"):
        with pytest.raises(Exception) as ours:
            jsonio.loads(body)
        with pytest.raises(Exception) as theirs:
            json.loads(body)
        assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)
