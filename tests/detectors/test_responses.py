"""Responses to flagged queries (none, shuffle, misinform, refuse) inside ``PredictionAPI``, with a hand-calibrated
test-only detector, so these tests do not depend on any concrete detector."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from modelsteal import PredictionAPI, QueryRefusedError
from modelsteal.defenses.base import Defense
from modelsteal.detectors.base import Detector, NotFittedError
from modelsteal.detectors.responses import Response, available_responses, make_response
from modelsteal.models import build_model

SHAPE = (1, 8, 8)
K = 10


class LowConfidence(Detector):
    """Test-only: suspicion ``-max(probs)``; calibrated by hand (``threshold``)."""

    name = "low-confidence"

    def score(self, x: Tensor, probs: Tensor, *, client: str = "default") -> Tensor:
        return -probs.max(dim=1).values


def _model(seed: int = 0) -> nn.Module:
    return build_model("mlp", input_shape=SHAPE, num_classes=K, seed=seed)


def _x(n: int = 16, seed: int = 1) -> Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _detector(model: nn.Module, x: Tensor) -> tuple[LowConfidence, Tensor]:
    """A detector fitted on ``model`` whose threshold flags the less confident half of ``x``; and that half."""
    det = LowConfidence()
    det.victim = model.eval()
    scores = det.score(x, det.posteriors(x))
    # midway between the two middle scores, not at one of them: a batch split differently gives scores that
    # differ in the last bits, which must not move a row across the threshold
    s = scores.sort().values
    det.threshold = float((s[len(s) // 2 - 1] + s[len(s) // 2]) / 2)
    flags = scores > det.threshold
    assert 0 < int(flags.sum()) < len(x)
    return det, flags


def _on_simplex(y: Tensor) -> bool:
    return bool((y >= 0).all()) and torch.allclose(y.sum(1), torch.ones(len(y)), atol=1e-5)


def test_the_registry_knows_the_four_responses():
    assert {"none", "shuffle", "misinform", "refuse"} <= set(available_responses())
    with pytest.raises(ValueError, match="unknown response 'scramble'; known responses: .*shuffle"):
        make_response("scramble")


@pytest.mark.parametrize("name", ["none", "shuffle", "misinform"])
def test_every_answering_response_keeps_rows_on_the_simplex(name):
    # Bug caught: a misinformation answer without the softmax (raw logits), or a shuffle that samples
    # values with replacement, leaves the simplex; the API's check then raises.
    model, x = _model(), _x(32)
    det, flags = _detector(model, x)
    opts = {"model": _model(seed=5)} if name == "misinform" else {}
    y = PredictionAPI(model, detector=det, response=make_response(name, **opts)).query(x)
    assert y.shape == (32, K) and _on_simplex(y)


def test_none_answers_like_the_undetected_api_and_counts_flags_per_client():
    # Bugs caught: flags counted for every client together (or not at all); the "none" response altering
    # answers.
    model, x = _model(), _x(16)
    det, flags = _detector(model, x)
    plain = PredictionAPI(model).query(x)
    api = PredictionAPI(model, detector=det)
    assert torch.equal(api.query(x, client="alice"), plain)
    api.query(x[:4], client="bob")
    assert api.flags("alice") == int(flags.sum())
    assert api.flags("bob") == int(flags[:4].sum()) != api.flags("alice")
    assert api.total_flags == api.flags("alice") + api.flags("bob")
    assert api.queries("alice") == 16 and api.queries("bob") == 4 and api.flags("carol") == 0


def test_shuffle_permutes_only_the_flagged_rows():
    # Bugs caught: shuffling every row (unflagged rows would differ), shuffling none, or drawing values that
    # are not a permutation of the row (sorted values would differ).
    model, x = _model(), _x(16)
    det, flags = _detector(model, x)
    plain = PredictionAPI(model, batch_size=5).query(x)  # same sub-batches: float results are bit-identical
    y = PredictionAPI(model, detector=det, response="shuffle", batch_size=5).query(x)
    assert torch.equal(y[~flags], plain[~flags])
    assert torch.equal(y[flags].sort(dim=1).values, plain[flags].sort(dim=1).values)
    assert not torch.equal(y[flags].argmax(1), plain[flags].argmax(1))  # 8 rows, all top-1s kept by chance: ~1e-8


def test_shuffle_is_seeded_by_its_own_generator():
    # Bugs caught: permutations drawn from torch's global generator (not reproducible, and moved by others);
    # the seed option ignored (the generator left at its default seed).
    model, x = _model(), _x(16)
    det, _ = _detector(model, x)

    def answers(seed: int, *, global_seed: int) -> Tensor:
        torch.manual_seed(global_seed)  # the global generator must not matter
        return PredictionAPI(model, detector=det, response=make_response("shuffle", seed=seed)).query(x)

    assert torch.equal(answers(3, global_seed=0), answers(3, global_seed=1))
    assert not torch.equal(answers(3, global_seed=0), answers(4, global_seed=0))


def test_misinform_answers_flagged_rows_with_the_misinformation_models_softmax():
    # Bugs caught: the victim's (or defended) answer kept for flagged rows; every row misinformed.
    model, x, misinfo = _model(), _x(16), _model(seed=7)
    det, flags = _detector(model, x)
    plain = PredictionAPI(model).query(x)
    y = PredictionAPI(model, detector=det, response=make_response("misinform", model=misinfo)).query(x)
    with torch.no_grad():
        expected = torch.softmax(misinfo(x), dim=1)
    assert torch.allclose(y[flags], expected[flags], atol=1e-6)
    assert torch.equal(y[~flags], plain[~flags])


class _Uniform(Defense):
    """Test-only defense: every answer uniform (maximally "unconfident")."""

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        return torch.full_like(probs, 1.0 / probs.shape[1])


def test_the_detector_sees_the_undefended_posteriors_and_the_response_acts_after_the_defense():
    # Bug caught: flagging on the defended posteriors (here uniform: every row would be flagged); the defense
    # applied after the response (flagged rows would be uniform, not the misinformation model's answer).
    model, x, misinfo = _model(), _x(16), _model(seed=7)
    det, flags = _detector(model, x)
    api = PredictionAPI(model, defense=_Uniform(), detector=det, response=make_response("misinform", model=misinfo))
    y = api.query(x)
    assert api.flags() == int(flags.sum()) < len(x)
    with torch.no_grad():
        assert torch.allclose(y[flags], torch.softmax(misinfo(x[flags]), dim=1), atol=1e-6)
    assert torch.allclose(y[~flags], torch.full_like(y[~flags], 0.1))


def test_refuse_raises_for_the_whole_batch_and_counts_nothing():
    # Bugs caught: queries or flags counted for a refused batch; the message counting only the first
    # sub-batch's flags (batch_size=3 splits the batch); an unflagged batch refused too.
    model, x = _model(), _x(16)
    det, flags = _detector(model, x)
    api = PredictionAPI(model, detector=det, response="refuse", batch_size=3)
    clean = x[~flags][:5]
    assert torch.equal(api.query(clean, client="a"), PredictionAPI(model, batch_size=3).query(clean))
    assert (api.queries("a"), api.flags("a")) == (5, 0)
    n = int(flags.sum())
    with pytest.raises(QueryRefusedError, match=f"'low-confidence' flagged {n} of the batch's 16 rows") as err:
        api.query(x, client="a")
    assert (err.value.flagged, err.value.rows, err.value.detector) == (n, 16, "low-confidence")
    assert (api.queries("a"), api.flags("a"), api.total_queries) == (5, 0, 5)


def test_a_detector_that_is_not_ready_is_refused_at_construction():
    # Bug caught: the missing fit or threshold surfacing only at the first query (or as an AttributeError).
    model = _model()
    with pytest.raises(NotFittedError, match="'low-confidence' is not fitted"):
        PredictionAPI(model, detector=LowConfidence())
    det = LowConfidence()
    det.victim = model
    with pytest.raises(NotFittedError, match="no threshold: call calibrate"):
        PredictionAPI(model, detector=det, response="shuffle")
    with pytest.raises(ValueError, match="acts on flagged queries, but no detector"):
        PredictionAPI(model, response="refuse")
    with pytest.raises(ValueError, match="must be a modelsteal Detector"):
        PredictionAPI(model, detector=object())  # type: ignore[arg-type]


def test_response_options_are_checked():
    # Bugs caught: a misinformation model with another number of classes accepted (answers of the wrong
    # width at the first flag); the Python-only model accepted as text from a config.
    model, x = _model(), _x(16)
    det, _ = _detector(model, x)
    wrong = build_model("mlp", input_shape=SHAPE, num_classes=3, seed=0)
    with pytest.raises(ValueError, match="answers 3 classes; the API serves 10"):
        PredictionAPI(model, detector=det, response=make_response("misinform", model=wrong))
    with pytest.raises(ValueError, match="takes a Python object"):
        make_response("misinform", model="lenet.pt")
    with pytest.raises(ValueError, match="misinform needs model="):
        make_response("misinform")
    with pytest.raises(ValueError, match="unknown option"):
        make_response("shuffle", sed=1)


def test_a_custom_response_replaces_only_flagged_rows():
    # Bug caught: the base class handing the response every row (or the unflagged ones).
    model, x = _model(), _x(16)
    det, flags = _detector(model, x)

    class OneHotZero(Response):
        def respond(self, x: Tensor, answers: Tensor, *, client: str) -> Tensor:
            return nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), K).to(answers.dtype)

    y = PredictionAPI(model, detector=det, response=OneHotZero()).query(x)
    assert torch.equal(y[flags][:, 0], torch.ones(int(flags.sum())))
    assert torch.equal(y[~flags], PredictionAPI(model).query(x)[~flags])
