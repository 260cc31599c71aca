"""MAD (Orekondy et al., ICLR 2020): Gram matrices against plain autograd, the vertex search against brute
force, the utility budget, MAD-argmax, the ablations, the greedy search and the default surrogate."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from modelsteal import PredictionAPI
from modelsteal.defenses import MAD, MADArgmax, MADIdentity, MADRandom, make_defense
from modelsteal.defenses.mad import argmax_region_vertices, mad_scores, opt_step, random_surrogate
from modelsteal.models import Normalize, build_model, last_linear
from modelsteal.models.gram import LayerwiseGram, functional_gram

DT = torch.float64


# ------------------------------------------------------------------------------------------------
# references: plain per-sample, per-class autograd
# ------------------------------------------------------------------------------------------------
def reference_jacobian(model: nn.Module, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """G (N, K, D): row k = ∇_params log softmax(model(x_n))_k, one autograd.grad per sample and class."""
    out = []
    for n in range(x.shape[0]):
        logp = torch.log_softmax(model(x[n : n + 1]), dim=1)[0]
        rows = []
        for k in range(logp.shape[0]):
            grads = torch.autograd.grad(logp[k], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                   for g, p in zip(grads, params, strict=True)]))
        out.append(torch.stack(rows))
    return torch.stack(out)


def reference_gram(model: nn.Module, x: torch.Tensor, jacobian: str) -> torch.Tensor:
    with torch.enable_grad():
        model = model.requires_grad_(True)
        if jacobian == "all":
            params = list(model.parameters())
        else:
            layer = last_linear(model)
            params = [p for p in (layer.weight, layer.bias) if p is not None]
        g = reference_jacobian(model, x, params)
    return g @ g.transpose(1, 2)


def reference_scores(g: torch.Tensor, y: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Eq. 4 with the explicit Jacobian: ||Gᵀv/||Gᵀv|| − Gᵀy/||Gᵀy||||² for every row and vertex."""
    u = torch.einsum("nkd,nk->nd", g, y)
    u = u / u.norm(dim=1, keepdim=True)
    a = torch.einsum("nkd,ck->ncd", g, vertices)
    a = a / a.norm(dim=2, keepdim=True)
    return ((a - u[:, None]) ** 2).sum(-1)


def subsets_containing(c: int, k: int) -> torch.Tensor:
    rows = []
    others = [j for j in range(k) if j != c]
    for r in range(k):
        for extra in itertools.combinations(others, r):
            v = torch.zeros(k, dtype=DT)
            v[[c, *extra]] = 1
            rows.append(v / v.sum())
    return torch.stack(rows)


# ------------------------------------------------------------------------------------------------
# tiny models (float64)
# ------------------------------------------------------------------------------------------------
class TinyConvBN(nn.Module):
    """Conv (stride, padding, no bias) + BatchNorm (eval, non-trivial stats) + in-place ReLU + GroupNorm
    + a bias-free Linear in the middle: exercises every layer rule and the copy-on-in-place path."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.normalize = Normalize((0.4, 0.5), (0.2, 0.3))
        self.conv1 = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv1d(3, 4, 2)
        self.gn = nn.GroupNorm(2, 4)
        self.fc1 = nn.Linear(4 * 15, 6, bias=False)
        self.fc2 = nn.Linear(6, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn(self.conv1(self.normalize(x))))  # (N, 3, 4, 4)
        h = torch.tanh(self.gn(self.conv2(h.flatten(2))))  # (N, 4, 15)
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


def _tiny_conv_bn() -> nn.Module:
    torch.manual_seed(3)
    m = TinyConvBN().to(DT)
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.3, 0.3)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.2, 0.2)
        m.gn.weight.uniform_(0.5, 1.5)
    return m.eval()


MODELS = {
    "mlp": (lambda: build_model("mlp", input_shape=(6,), num_classes=5, seed=1).to(DT).eval(), (6,)),
    "lenet": (lambda: build_model("lenet", input_shape=(1, 8, 8), num_classes=4, seed=2,
                                  mean=(0.5,), std=(0.3,)).to(DT).eval(), (1, 8, 8)),
    "conv-bn": (_tiny_conv_bn, (2, 8, 8)),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model_case(request):
    make, shape = MODELS[request.param]
    model = make()
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(7), dtype=DT)
    return request.param, model, x


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("jacobian", ["last_layer", "all"])
def test_gram_matches_per_sample_autograd(model_case, jacobian, layout):
    name, model, x = model_case
    if layout == "channels_last":
        if x.ndim != 4:
            pytest.skip("no 2-d convolutions")
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)  # gradients arrive channels-last
    mad = MAD(surrogate=model, epsilon=0.5, jacobian=jacobian)
    m = mad.gram(x)
    if jacobian == "all":
        assert mad._layerwise._fallback is False  # the layer-wise path, not the torch.func fallback
        assert mad._layerwise._clone is (name == "conv-bn")  # in-place ReLU detected, recorded tensors copied
    ref = reference_gram(model, x, jacobian)
    assert m.dtype == DT and m.shape == ref.shape
    scale = ref.abs().amax()
    assert (m - ref).abs().max() <= 1e-6 * scale, f"{(m - ref).abs().max()} vs scale {scale}"
    assert torch.allclose(m, m.transpose(1, 2), atol=1e-9 * float(scale))


def test_layerwise_gram_falls_back_to_torch_func_for_shared_weights():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(4, 4)
            self.out = nn.Linear(4, 3)

        def forward(self, x):
            return self.out(torch.tanh(self.inner(torch.tanh(self.inner(x)))))  # one module, two calls

    torch.manual_seed(0)
    model = Tied().to(DT)
    x = torch.rand(4, 4, dtype=DT)
    ref = reference_gram(model, x, "all")
    lw = LayerwiseGram(model)
    m, p = lw(x)
    assert lw._fallback is True
    assert torch.allclose(m, ref, atol=1e-10) and torch.allclose(functional_gram(model, x)[0], ref, atol=1e-10)
    assert torch.allclose(p, torch.softmax(model(x), 1))


# ------------------------------------------------------------------------------------------------
# vertex search (Alg. 1 line 3) against brute force
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("jacobian", ["last_layer", "all"])
def test_target_equals_brute_force(jacobian):
    model = build_model("lenet", input_shape=(1, 8, 8), num_classes=5, seed=4).to(DT).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 8, 8, generator=gen, dtype=DT)
    y = torch.softmax(2 * torch.randn(6, 5, generator=gen, dtype=DT), dim=1)
    with torch.enable_grad():
        model.requires_grad_(True)
        params = list(model.parameters()) if jacobian == "all" else [model.head.weight, model.head.bias]
        g = reference_jacobian(model, x, params)
    eye = torch.eye(5, dtype=DT)
    for preserve in (False, True):
        mad = MAD(surrogate=model, epsilon=0.3, jacobian=jacobian, preserve_argmax=preserve)
        y_star = mad.target(x, y)
        for n in range(6):
            verts = subsets_containing(int(y[n].argmax()), 5) if preserve else eye
            ref = reference_scores(g[n : n + 1], y[n : n + 1], verts)[0]
            got = reference_scores(g[n : n + 1], y[n : n + 1], y_star[n : n + 1])[0, 0]
            assert got >= ref.max() - 1e-9, (n, preserve, got, ref.max())
            best = verts[ref.argmax()]
            if (ref.sort(descending=True).values[:2].diff().abs() > 1e-6).all():
                assert torch.allclose(y_star[n], best), (n, preserve)


def test_scores_are_finite_for_zero_gradients():
    m = torch.zeros(3, 4, 4, dtype=DT)
    m[1] = torch.diag(torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=DT))  # vertex e_1 has a zero gradient
    y = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.0, 1.0, 0.0, 0.0], [0.25] * 4], dtype=DT)
    s = mad_scores(m, y, torch.eye(4, dtype=DT))
    assert torch.isfinite(s).all()
    assert torch.equal(s[0], torch.zeros(4, dtype=DT))  # both gradients zero: no deviation
    assert torch.allclose(s[1], torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=DT))  # Gᵀy = 0 vs unit vectors


# ------------------------------------------------------------------------------------------------
# OptStep, utility constraint, MAD-argmax
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def victim():
    return build_model("lenet", input_shape=(1, 8, 8), num_classes=10, seed=0, mean=(0.5,), std=(0.3,)).eval()


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(48, 1, 8, 8, generator=gen)
    y = torch.softmax(3 * torch.randn(48, 10, generator=gen, dtype=DT), dim=1)
    y[0] = torch.nn.functional.one_hot(torch.tensor(9), 10).to(DT)  # exact one-hot row, top-1 at the end
    y[1] = torch.full((10,), 0.1, dtype=DT)  # all tied: argmax is class 0
    y[2, :] = 0.05
    y[2, 3] = y[2, 7] = 0.3  # tie between 3 and 7: argmax is 3
    return x, y


def _dist(a, b, norm):
    return (a - b).abs().sum(1) if norm == "l1" else (a - b).norm(dim=1)


@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("cls", [MAD, MADArgmax, MADIdentity, MADRandom])
def test_utility_budget_and_simplex(victim, batch, norm, cls):
    x, y = batch
    for eps in (0.05, 0.4, 1.1, 2.0):
        d = cls(epsilon=eps, norm=norm)
        d.bind(victim, input_shape=(1, 8, 8), num_classes=10)
        out = d(x, y)
        assert out.dtype == DT
        assert (out >= 0).all() and torch.allclose(out.sum(1), torch.ones(48, dtype=DT), atol=1e-12)
        dist = _dist(out, y, norm)
        assert (dist <= eps + 1e-6).all()
        # α < 1 exactly when y* is farther than ε: then the budget is met with equality
        d2 = cls(epsilon=eps, norm=norm)
        d2.bind(victim, input_shape=(1, 8, 8), num_classes=10)
        y_star = d2.target(x, y)
        far = _dist(y_star, y, norm) > eps
        assert torch.allclose(dist[far], torch.full_like(dist[far], eps), atol=1e-9)
        assert torch.allclose(out[~far], y_star[~far], atol=1e-9)
        if cls in (MADArgmax,) or d.preserve_argmax:
            assert torch.equal(out.argmax(1), y.argmax(1))


@pytest.mark.parametrize("cls", [MADArgmax, MADIdentity, MADRandom])
def test_argmax_kept_at_tied_vertices(victim, batch, cls):
    """ε = 2 reaches every vertex (α = 1): answers are vertices y_S with ties, yet the top-1 label is kept."""
    x, y = batch
    d = cls(epsilon=2.0, norm="l1") if cls is MADArgmax else cls(epsilon=2.0, norm="l1", preserve_argmax=True)
    d.bind(victim, input_shape=(1, 8, 8), num_classes=10)
    y_star = d.target(x, y)
    _, alpha = opt_step(y, y_star, 2.0, "l1")
    assert torch.equal(alpha, torch.ones_like(alpha))
    assert (y_star.argmax(1) != y.argmax(1)).any(), "expected tied vertices whose first maximum is not c"
    out = d(x, y)
    assert torch.equal(out.argmax(1), y.argmax(1))
    assert (_dist(out, y, "l1") <= 2.0 + 1e-6).all()


def test_opt_step_alpha_is_in_unit_interval():
    y = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], dtype=DT)
    y_star = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=DT)
    out, alpha = opt_step(y, y_star, 0.4, "l1")
    assert torch.allclose(alpha, torch.tensor([0.25, 0.4, 0.0], dtype=DT))  # ||y* − y||₁ = 1.6, 1.0, 0
    assert torch.allclose(out[0], torch.tensor([0.375, 0.225, 0.4], dtype=DT))
    assert torch.equal(out[2], y[2])
    _, alpha = opt_step(y, y_star, 5.0, "l2")
    assert torch.equal(alpha, torch.tensor([1.0, 1.0, 0.0], dtype=DT))


# ------------------------------------------------------------------------------------------------
# ablations (Fig. 8)
# ------------------------------------------------------------------------------------------------
def test_identity_ablation_picks_the_vertex_farthest_in_angle(batch):
    _, y = batch
    y_star = MADIdentity(epsilon=0.5).target(torch.zeros(48, 1), y)
    cos = y / y.norm(dim=1, keepdim=True)  # cos∠(e_k, y) = y_k / ||y||
    assert torch.equal(y_star.argmax(1), cos.argmin(1))
    assert torch.equal(y_star.sum(1), torch.ones(48, dtype=DT)) and torch.equal(y_star.max(1).values, y_star.sum(1))


def test_random_ablation_draws_seeded_vertices(batch):
    x, y = batch
    a = MADRandom(epsilon=0.5, seed=3)
    first, second = a.target(x, y), a.target(x, y)
    assert torch.equal(first, MADRandom(epsilon=0.5, seed=3).target(x, y))  # reproducible from the seed
    assert not torch.equal(first, second)  # a fresh draw per query
    assert torch.equal((first == 1).sum(1), torch.ones(48, dtype=torch.long))
    assert len(set(first.argmax(1).tolist())) > 5
    r = MADRandom(epsilon=0.5, seed=3, preserve_argmax=True).target(x, y)
    c = y.argmax(1)
    support = r > 0
    assert support[torch.arange(48), c].all()
    assert torch.allclose(r, support.to(DT) / support.sum(1, keepdim=True))
    assert len(set(support.sum(1).tolist())) > 2


# ------------------------------------------------------------------------------------------------
# MAD-argmax vertices and the greedy search (K > max_exact_classes)
# ------------------------------------------------------------------------------------------------
def test_argmax_region_vertices():
    t = argmax_region_vertices(4, dtype=DT)
    assert t.shape == (4, 8, 4)
    for c in range(4):
        assert torch.equal(t[c, 0], torch.nn.functional.one_hot(torch.tensor(c), 4).to(DT))
        assert (t[c].argmax(1) <= c).all() and (t[c][:, c] == t[c].max(1).values).all()
        assert {tuple(v.tolist()) for v in t[c]} == {tuple(v.tolist()) for v in subsets_containing(c, 4)}


def test_greedy_search_for_many_classes():
    k = 16
    model = build_model("mlp", input_shape=(5,), num_classes=k, seed=5).to(DT).eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(8, 5, generator=gen, dtype=DT)
    y = torch.softmax(2 * torch.randn(8, k, generator=gen, dtype=DT), dim=1)
    greedy = MADArgmax(surrogate=model, epsilon=0.5, jacobian="all", max_exact_classes=12)
    m = greedy.gram(x)
    y_star = greedy.target(x, y)
    c = y.argmax(1)
    support = y_star > 0
    assert support[torch.arange(8), c].all()
    assert torch.allclose(y_star, support.to(DT) / support.sum(1, keepdim=True))  # a vertex of Δ_c
    s_greedy = mad_scores(m, y, y_star.unsqueeze(1))[:, 0]
    s_single = mad_scores(m, y, torch.nn.functional.one_hot(c, k).to(DT).unsqueeze(1))[:, 0]
    assert (s_greedy >= s_single - 1e-12).all() and (s_greedy > s_single).any()
    exact = MADArgmax(surrogate=model, epsilon=0.5, jacobian="all", max_exact_classes=k).argmax_target(m[:3], y[:3])
    s_exact = mad_scores(m[:3], y[:3], exact.unsqueeze(1))[:, 0]
    assert (s_greedy[:3] <= s_exact + 1e-12).all()
    out = greedy(x, y)
    assert torch.equal(out.argmax(1), c) and (_dist(out, y, "l1") <= 0.5 + 1e-9).all()


# ------------------------------------------------------------------------------------------------
# default surrogate, registry, PredictionAPI
# ------------------------------------------------------------------------------------------------
def test_default_surrogate_is_a_fixed_random_copy(victim):
    state = torch.get_rng_state()
    a = MAD(epsilon=0.3, seed=11)
    a.bind(victim, input_shape=(1, 8, 8), num_classes=10)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    sur = a.surrogate
    assert sur is not victim and type(sur) is type(victim) and not sur.training
    assert sur.features[0].weight.is_contiguous(memory_format=torch.channels_last)  # CPU + conv: channels-last
    assert torch.equal(sur.normalize.mean, victim.normalize.mean)
    assert torch.equal(sur.normalize.std, victim.normalize.std)
    assert not torch.equal(sur.head.weight, victim.head.weight)
    same = random_surrogate(victim, seed=11)
    other = random_surrogate(victim, seed=12)
    assert all(torch.equal(p, q) for p, q in zip(sur.parameters(), same.parameters(), strict=True))
    assert not torch.equal(other.head.weight, sur.head.weight)
    assert all(p.requires_grad for p in victim.parameters())  # the victim is not modified
    given = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    b = MAD(surrogate=given, epsilon=0.3)
    b.bind(victim, input_shape=(1, 8, 8), num_classes=10)
    assert b.surrogate is given


def test_registry_and_validation():
    assert isinstance(make_defense("mad", strength=0.4), MAD)
    d = make_defense("mad-argmax", strength=0.4, norm="l2", jacobian="all")
    assert isinstance(d, MADArgmax) and d.preserves_argmax and d.budget_norm == "l2" and d.strength == 0.4
    assert MADArgmax.preserves_argmax and not MAD.preserves_argmax
    assert MAD(epsilon=1, preserve_argmax=True).preserves_argmax
    assert isinstance(make_defense("mad-identity", strength=0.4), MADIdentity)
    assert isinstance(make_defense("mad-random", strength=0.4), MADRandom)
    for bad in ({"epsilon": -1}, {"epsilon": 1, "norm": "linf"}, {"epsilon": 1, "jacobian": "some"},
                {"epsilon": 1, "objective": "x"}, {"epsilon": 1, "max_exact_classes": 0}):
        with pytest.raises(ValueError):
            MAD(**bad)
    with pytest.raises(RuntimeError, match="surrogate"):
        MAD(epsilon=0.5)(torch.zeros(2, 3), torch.full((2, 3), 1 / 3))


@pytest.mark.parametrize("jacobian", ["last_layer", "all"])
def test_prediction_api_end_to_end(victim, jacobian):
    api = PredictionAPI(victim, defense=MAD(epsilon=0.6, jacobian=jacobian), input_shape=(1, 8, 8))
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    clean = api.posteriors(x)
    out = api.query(x)
    assert out.shape == clean.shape and not out.requires_grad
    assert (_dist(out, clean, "l1") <= 0.6 + 1e-5).all() and not torch.allclose(out, clean)
    assert all(p.grad is None for p in victim.parameters())
    assert all(p.grad is None for p in api.defense.surrogate.parameters())
    api_argmax = PredictionAPI(victim, defense=MADArgmax(epsilon=0.6, jacobian=jacobian), input_shape=(1, 8, 8))
    assert torch.equal(api_argmax.query(x).argmax(1), clean.argmax(1))


def test_surrogate_equal_to_the_victim_is_safe(victim):
    """Gᵀy = ∇ Σ_k p_k = 0 when y is the surrogate's own prediction: no NaN, the budget still holds."""
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = torch.softmax(victim(x), dim=1).to(DT)  # float64 answers, float32 surrogate
    for cls in (MAD, MADArgmax):
        out = cls(surrogate=victim, epsilon=0.3, jacobian="all")(x, y)
        assert torch.isfinite(out).all() and (_dist(out, y, "l1") <= 0.3 + 1e-6).all()
    assert not torch.equal(random_surrogate(victim, seed=0).head.weight,
                           build_model("lenet", input_shape=(1, 8, 8), num_classes=10, seed=0).head.weight)


def test_works_under_inference_mode(victim, batch):
    x, y = batch
    for jacobian in ("last_layer", "all"):
        d = MADArgmax(epsilon=0.5, jacobian=jacobian)
        d.bind(victim, input_shape=(1, 8, 8), num_classes=10)
        expected = d(x, y)
        with torch.inference_mode():
            got = d(x.clone(), y.clone())
        assert torch.allclose(got, expected, atol=1e-12)
    tied = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    tied.register_forward_hook(lambda m, i, o: o + m[1](torch.zeros_like(i[0].flatten(1))))  # Linear used twice
    d = MAD(surrogate=tied, epsilon=0.5, jacobian="all")
    with torch.inference_mode():
        assert torch.isfinite(d(x, y)).all()
    assert d._layerwise._fallback is True


def test_chunks_shrink_to_the_memory_budget(monkeypatch):
    import modelsteal.models.gram as gram

    model = build_model("lenet", input_shape=(1, 8, 8), num_classes=4, seed=2).to(DT).eval()
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=DT)
    full, _ = LayerwiseGram(model, chunk_size=64)(x)
    monkeypatch.setattr(gram, "_PLAN_BUDGET", 20_000)
    lw = LayerwiseGram(model)
    small, p = lw(x)
    assert lw._budget_chunk is not None and lw._budget_chunk < 10
    assert torch.allclose(small, full, atol=1e-12) and p.shape == (10, 4)


def test_mad_argmax_greedy_search_ends_at_a_local_optimum():
    """Above ``max_exact_classes`` the greedy ascent adds classes to ``S`` while one addition raises Eq. 4:
    at its answer ``y_S`` no single further class ``j ∉ S`` scores higher (a local optimum), and it took more
    than one step on some rows (else stopping after one step would pass too)."""
    k, n = 16, 24
    model = build_model("mlp", input_shape=(5,), num_classes=k, seed=5).to(DT).eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(n, 5, generator=gen, dtype=DT)
    y = torch.softmax(1.5 * torch.randn(n, k, generator=gen, dtype=DT), dim=1)
    greedy = MADArgmax(surrogate=model, epsilon=0.5, jacobian="all", max_exact_classes=12)
    m = greedy.gram(x)
    y_star = greedy.target(x, y)
    in_s = y_star > 0
    assert torch.allclose(y_star, in_s.to(DT) / in_s.sum(1, keepdim=True))  # a vertex y_S of Δ_c
    assert in_s[torch.arange(n), y.argmax(1)].all()
    sizes = in_s.sum(1)
    assert int(sizes.max()) >= 3, f"the search never took two steps on these rows: sizes {sizes.tolist()}"
    current = mad_scores(m, y, y_star.unsqueeze(1))[:, 0]
    eye = torch.eye(k, dtype=torch.bool)
    neighbours = (in_s.unsqueeze(1) | eye).to(DT)  # row j: S ∪ {j}
    neighbours = neighbours / neighbours.sum(-1, keepdim=True)
    scores = mad_scores(m, y, neighbours).masked_fill(in_s, float("-inf"))
    assert (scores <= current[:, None] + 1e-12).all(), (scores.max(1).values - current).max()
    # and it is a real ascent: at least as good as the start e_c, strictly better on some rows
    start = mad_scores(m, y, torch.nn.functional.one_hot(y.argmax(1), k).to(DT).unsqueeze(1))[:, 0]
    assert (current >= start - 1e-12).all() and (current > start + 1e-6).any()
