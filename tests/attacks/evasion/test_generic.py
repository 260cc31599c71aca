"""Evasion attacks against PRADA (attacks/evasion: sybil, interleave, prada-jbda): budgets including natural
queries, Sybil's per-key caps and its union, the interleaving fraction at every prefix, the detection report,
PRADA-aware JBDA unflagged where plain JBDA is flagged, and one-line errors for bad options."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.attacks import JBDA, TrainConfig, attack_class
from modelsteal.attacks.evasion import Interleave, KeyPool, PradaAwareJBDA, Sybil
from modelsteal.attacks.evasion.prada_jbda import seed_stream
from modelsteal.detectors import make_detector

TRAIN = TrainConfig(epochs=2, lr=0.05, momentum=0.9)


class Recorder:
    """A black box that records every row it forwards, with the client key it came under."""

    def __init__(self, api: PredictionAPI) -> None:
        self.api = api
        self.num_classes, self.input_shape = api.num_classes, api.input_shape
        self.rows: list[torch.Tensor] = []
        self.clients: list[str] = []

    def query(self, x, *, client="default"):
        out = self.api.query(x, client=client)
        self.rows.append(x.detach().clone())
        self.clients += [client] * len(x)
        return out

    def flags(self, client):
        return self.api.flags(client)

    @property
    def stream(self) -> torch.Tensor:
        return torch.cat(self.rows)


class OneKey:
    """Stands in for an HTTPBlackBox: one key, the ``client`` argument ignored (it only names a local count)."""

    def __init__(self, api: PredictionAPI, key: str) -> None:
        self.api, self.key = api, key
        self.num_classes, self.input_shape = api.num_classes, api.input_shape

    def query(self, x, *, client="default"):
        return self.api.query(x, client=self.key)


def _prada_api(victim, digits, **api_options) -> PredictionAPI:
    det = make_detector("prada").fit(victim, digits)
    return PredictionAPI(victim, detector=det, response="none", **api_options)


def _jbda(digits, **options):
    return JBDA(seed_set=digits.x_val[:50], clone="mlp", train=TRAIN, **options)


# -- budgets -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sybil", "interleave", "prada-jbda"])
def test_budget_never_exceeded_natural_queries_included(name, digits_victim, digits):
    """Bug caught: interleave giving its inner attack the whole budget (or one more row than B − ⌊B·f⌋), which
    the outer budget refuses mid-run; an attack whose reported queries differ from what the API answered."""
    api = PredictionAPI(digits_victim)
    options = {"seed_set": digits.x_val[:40], "clone": "mlp", "train": TRAIN}
    if name == "interleave":
        options.update(natural=digits.x_test, fraction=0.3)
    if name == "sybil":
        options.update(max_per_key=37)
    budget = 211
    result = attack_class(name)(**options)(api, budget=budget, seed=0)
    assert result.queries == api.total_queries <= budget
    assert result.queries >= budget - 1


# -- Sybil -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("assign", "clients", "cap"), [("contiguous", None, 30), ("round-robin", 7, None),
                                                         ("contiguous", 4, 50)])
def test_sybil_keys_stay_under_the_cap_and_their_union_is_the_inner_attack(assign, clients, cap, digits_victim,
                                                                           digits):
    """Bug caught: a key index off by one (a key gets cap + 1 rows, which the API's per-key budget refuses),
    rows dropped, duplicated or reordered by the router, or Sybil not driving the inner attack with the same
    generator (its queries would differ from the inner attack's alone)."""
    budget = 200
    plain = Recorder(PredictionAPI(digits_victim))
    alone = _jbda(digits)(plain, budget=budget, seed=3)
    n_keys, per_key = Sybil(attack=_jbda(digits), clients=clients, max_per_key=cap).plan(budget)
    api = PredictionAPI(digits_victim, budget=per_key)  # a per-key budget: one row too many raises
    spread = Recorder(api)
    result = Sybil(attack=_jbda(digits), clients=clients, max_per_key=cap, assign=assign)(spread, budget=budget,
                                                                                          seed=3)
    keys = [f"sybil-{i}" for i in range(n_keys)]
    counts = [api.queries(k) for k in keys]
    assert max(counts) <= per_key and sum(counts) == api.total_queries == alone.queries == result.queries
    assert result.info["queries_per_key"] == counts and result.info["keys"] == n_keys
    assert set(spread.clients) <= set(keys)
    # the union, per key in order, is the inner attack's own stream
    stream, owner = spread.stream, spread.clients
    for i, key in enumerate(keys):
        mine = torch.stack([row for row, c in zip(stream, owner, strict=True) if c == key]) if counts[i] else None
        expected = plain.stream[i * per_key:(i + 1) * per_key] if assign == "contiguous" else plain.stream[i::n_keys]
        if mine is None:
            assert len(expected) == 0
        else:
            assert torch.equal(mine, expected)
    assert torch.equal(result.transfer_x, alone.transfer_x)


def test_sybil_through_a_key_pool_of_single_key_boxes(digits_victim, digits):
    """Over HTTP one box holds one key: KeyPool routes each key's rows to its own box. Bug caught: the pool
    answering every key from its first box, or Sybil inventing key names the pool does not hold."""
    api = PredictionAPI(digits_victim)
    pool = KeyPool([OneKey(api, f"key-{i}") for i in range(4)], names=["a", "b", "c", "d"])
    result = Sybil(attack=_jbda(digits), max_per_key=50)(pool, budget=200, seed=0)
    assert [api.queries(f"key-{i}") for i in range(4)] == [50, 50, 50, 50] == result.info["queries_per_key"]
    with pytest.raises(ValueError, match="needs 5 keys but the KeyPool holds 4"):
        Sybil(attack=_jbda(digits), max_per_key=40)(pool, budget=200, seed=0)
    assert api.total_queries == 200  # refused before any query


def _http_pool(app, keys: list[str]) -> KeyPool:
    """One HTTPBlackBox per key, each answered in process by ``app`` (an ASGI app behind a sync transport)."""
    httpx = pytest.importorskip("httpx")
    import anyio

    from modelsteal.serve.client import HTTPBlackBox

    asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    def forward(request):
        async def send():
            async with httpx.AsyncClient(transport=asgi, base_url="http://app") as http:
                r = await http.request(request.method, request.url.path, content=request.content,
                                       headers=dict(request.headers))
                return httpx.Response(r.status_code, content=r.content, headers=r.headers)

        return anyio.run(send)

    return KeyPool([HTTPBlackBox("http://app", key, transport=httpx.MockTransport(forward), backoff=0.001)
                    for key in keys])


def test_sybil_over_http_one_key_per_client(digits_victim, digits, tmp_path):
    """Through the server, each key's ledger holds its share and PRADA's flags come from /v1/usage: spread over
    4 keys of 100 JBDA is unflagged, the same 400 queries on one key are flagged. Bug caught: the router
    sending every key's rows with the first key, or the flags of an HTTP key never read (no detection info)."""
    pytest.importorskip("fastapi")
    from modelsteal.serve.app import create_app
    from modelsteal.serve.store import open_store

    store = open_store(tmp_path / "ledger.db")
    keys = [store.create_key(name=f"k{i}")[1] for i in range(5)]
    app = create_app(_prada_api(digits_victim, digits), store=store)
    pool = _http_pool(app, keys)
    seeds = digits.x_val[:100]
    spread = Sybil(attack=JBDA(seed_set=seeds, clone="mlp", train=TRAIN), max_per_key=100)(pool, budget=400, seed=0)
    assert [pool.box(n).usage()["queries"] for n in pool.names] == [100, 100, 100, 100, 0]
    assert spread.info["detector"] and not spread.info["detected"]
    one = Sybil(attack=JBDA(seed_set=seeds, clone="mlp", train=TRAIN), clients=1)(
        KeyPool([pool.box(pool.names[4])]), budget=400, seed=0)
    assert one.info["detected"] and one.info["queries_per_key"] == [400]
    assert pool.box(pool.names[4]).usage()["flagged"] > 0
    store.close()


def test_detection_report_counts_queries_to_the_first_flag(digits_victim, digits):
    """One key carrying plain JBDA is flagged; with batches of one row the reported count is the exact position
    of the first flagged query, which a fresh PRADA replaying the recorded stream confirms. Bug caught: the
    count taken before the batch is added, or the total of all keys reported for one key."""
    api = _prada_api(digits_victim, digits)
    rec = Recorder(api)
    jbda = JBDA(seed_set=digits.x_val[:100], clone="mlp", train=TRAIN, query_batch_size=1)
    result = Sybil(attack=jbda, clients=2, max_per_key=400, assign="contiguous")(rec, budget=800, seed=0)
    info = result.info
    assert info["detector"] and info["detected"] and info["flagged_keys"] >= 1
    replay = make_detector("prada").fit(digits_victim, digits)
    stream = rec.stream[:400]  # key sybil-0's rows
    first = int(replay.flag(stream, replay.posteriors(stream), client="r").nonzero()[0]) + 1
    assert info["queries_to_flag"][0] == first == info["queries_to_detection"]
    assert info["queries_per_key"] == [400, 400]


# -- interleaving ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.75])
def test_interleaving_fraction_is_exact_at_every_prefix(fraction, digits_victim, digits):
    """Natural rows (the test split) and JBDA rows (seeds from the validation split and their children) are told
    apart by value; among the first p queries exactly ⌊p·f⌋ are natural. Bug caught: natural rows placed after
    the attack rows of a batch, or a rounded instead of floored count."""
    api = PredictionAPI(digits_victim)
    rec = Recorder(api)
    natural = digits.x_test
    result = Interleave(attack=_jbda(digits), natural=natural, fraction=fraction)(rec, budget=240, seed=1)
    stream = rec.stream.flatten(1)
    is_natural = (torch.cdist(stream, natural.flatten(1)) == 0).any(dim=1)
    prefix = is_natural.long().cumsum(0)
    p = torch.arange(1, len(stream) + 1)
    f = Fraction(fraction).limit_denominator(1000)
    assert prefix.tolist() == [int(i) * f.numerator // f.denominator for i in p]  # ⌊p·f⌋
    assert result.info["natural_queries"] == int(is_natural.sum())
    assert result.info["natural_fraction"] == int(is_natural.sum()) / len(stream)
    assert result.queries == len(stream) <= 240


def test_interleaving_leaves_the_inner_attack_unchanged(digits_victim, digits):
    """With half the stream natural, the inner attack makes the queries it makes alone on half the budget, and
    fraction 0 is the inner attack itself. Bug caught: the natural order drawn from the attack's generator
    (shifting the inner attack's random choices), or natural answers handed to the inner attack."""
    alone = _jbda(digits)(PredictionAPI(digits_victim), budget=150, seed=2)
    for fraction, budget in [(0.5, 300), (0.0, 150)]:
        mixed = Interleave(attack=_jbda(digits), natural=digits.x_test, fraction=fraction)(
            PredictionAPI(digits_victim), budget=budget, seed=2)
        assert torch.equal(alone.transfer_x, mixed.transfer_x)
        assert torch.equal(alone.transfer_y, mixed.transfer_y)
        # the natural row due after the last attack row is not sent: 150 attack rows end at position 299
        assert mixed.info["natural_queries"] == (mixed.queries // 2 if fraction else 0)
        assert mixed.info["attack_queries"] == 150


# -- PRADA-aware JBDA ----------------------------------------------------------------------------------------
def test_prada_aware_jbda_is_not_flagged_where_plain_jbda_is(digits_victim, digits):
    """On the digits MLP with PRADA's defaults (δ = 0.95, 100-distance minimum stream): plain JBDA's stream is
    flagged; the spaced children's is not, and the children sit at the drawn distances from their parents.
    Bug caught: the drawn distances ignored (plain λ·sign steps, flagged)."""
    seeds = digits.x_val[:100]
    plain_api = _prada_api(digits_victim, digits)
    JBDA(seed_set=seeds, clone="mlp", train=TRAIN)(plain_api, budget=400, seed=0)
    assert plain_api.flags() > 0
    api = _prada_api(digits_victim, digits)
    result = PradaAwareJBDA(seed_set=seeds, clone="mlp", train=TRAIN)(api, budget=400, seed=0)
    assert result.queries == 400 and api.flags() == 0
    assert result.info["detected"] is False and result.info["queries_to_detection"] is None
    info = result.info
    children = info["parents"] >= 0
    steps = (result.transfer_x[children] - result.transfer_x[info["parents"][children]]).flatten(1).norm(dim=1)
    mean, std = info["distance_mean"], info["distance_std"]
    assert 0.5 < mean < 4 and 0 < std < mean
    assert abs(float(steps.mean()) - mean) < 0.5 * std  # the steps follow the drawn distances (clip permitting)


def test_seed_stream_is_per_label_minimum_distance_to_earlier_rows():
    """Class 0: (3,4) is 5 from (0,0); (6,8) is 10 from (0,0) and 5 from (3,4). Class 1 has one row: no distance.
    Bug caught: labels ignored ((0,1) would add 1), or distances to later rows taken."""
    x = torch.tensor([[0.0, 0], [3, 4], [0, 1], [6, 8]])
    assert sorted(seed_stream(x, torch.tensor([0, 0, 1, 0])).tolist()) == pytest.approx([5.0, 5.0])
    assert sorted(seed_stream(x[[3, 1, 0]], torch.tensor([0, 0, 0])).tolist()) == pytest.approx([5.0, 5.0])


def test_prada_aware_jbda_with_given_distances_meets_them(digits_victim, digits):
    """Bug caught: a bisection that stops short (steps shorter than their targets where the clip allows them)."""
    attack = PradaAwareJBDA(seed_set=digits.x_val[:30], clone="mlp", train=TRAIN, distance_mean=1.0,
                            distance_std=0.0, rounds=1)
    result = attack(PredictionAPI(digits_victim), budget=60, seed=0)
    info = result.info
    children = info["parents"] >= 0
    steps = (result.transfer_x[children] - result.transfer_x[info["parents"][children]]).flatten(1).norm(dim=1)
    assert torch.allclose(steps.double(), torch.ones(len(steps), dtype=torch.float64), atol=1e-4)


def test_sweep_configs_can_name_the_inner_attack_and_its_options(digits_victim, digits):
    """``attack: sybil`` in a sweep config, wrapping Knockoff with nquery 2. Bug caught: the wrapper not handing
    the inner attack the transfer set the sweep provides, or dropping ``attack_options``."""
    from modelsteal.experiment.config import AttackConfig
    from modelsteal.experiment.points import build_attack

    attack = build_attack(
        AttackConfig(name="sybil", clone="mlp", train={"epochs": 2},
                     options={"attack": "knockoff", "attack_options": {"queries_per_image": 2}, "max_per_key": 60}),
        victim_arch="mlp", transfer=(digits.x_train, digits.y_train), seeds=digits.x_val[:20],
        device=torch.device("cpu"))
    api = PredictionAPI(digits_victim)
    result = attack(api, budget=120, seed=0)
    assert result.info["images"] == 60 and result.info["queries_per_key"] == [60, 60]
    assert {k: result.info[k] for k in ("keys", "max_per_key")} == {"keys": 2, "max_per_key": 60}


# -- bad options --------------------------------------------------------------------------------------------
BAD = [
    ("sybil", {"clients": 0}, "clients must be an integer >= 1"),
    ("sybil", {"max_per_key": -3}, "max_per_key must be an integer >= 1"),
    ("sybil", {"assign": "zigzag"}, "assign must be one of contiguous, round-robin"),
    ("sybil", {"attack": "steal-everything"}, "known attacks"),
    ("sybil", {"attack_options": {"bogus": 1}}, "bogus"),
    ("sybil", {"attack": "equation-solving"}, "not an image attack"),
    ("sybil", {"attack": "knockoff"}, "needs transfer_set"),
    ("interleave", {"fraction": 1.0}, r"fraction must be a number in \[0, 1\)"),
    ("interleave", {"fraction": -0.1}, r"fraction must be a number in \[0, 1\)"),
    ("interleave", {"fraction": 0.9999}, "rounds to 1"),
    ("prada-jbda", {"distance_mean": 1.0}, "both distance_mean and distance_std"),
    ("prada-jbda", {"distance_mean": -1.0, "distance_std": 0.1}, "distance_mean must be a positive number"),
]


@pytest.mark.parametrize(("name", "options", "message"), BAD)
def test_bad_options_are_one_line_value_errors(name, options, message, digits):
    with pytest.raises(ValueError, match=message) as err:
        attack_class(name)(seed_set=digits.x_val[:20], **options)
    assert "\n" not in str(err.value)


def test_bad_inputs_are_refused_before_any_query(digits_victim, digits):
    api = PredictionAPI(digits_victim)
    with pytest.raises(ValueError, match="needs natural in-distribution inputs"):
        Interleave(attack=_jbda(digits))
    with pytest.raises(ValueError, match="natural inputs have shape"):
        Interleave(attack=_jbda(digits), natural=torch.zeros(5, 3))(api, budget=50)
    with pytest.raises(ValueError, match="give its options to it"):
        Sybil(attack=_jbda(digits), attack_options={"step": 0.2})
    with pytest.raises(ValueError, match="give its options to it"):
        Interleave(attack=_jbda(digits), natural=digits.x_test, clone="lenet")
    with pytest.raises(ValueError, match="one distinct name per box"):
        KeyPool([api, api], names=["a", "a"])
    with pytest.raises(ValueError, match="at least one black box"):
        KeyPool([])
    assert api.total_queries == 0
