"""ART interoperability: our black boxes under ART's extraction attacks, our defenses in front of ART estimators."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("art")

from art.attacks.extraction import CopycatCNN, FunctionallyEquivalentExtraction, KnockoffNets  # noqa: E402
from art.defences.postprocessor import ReverseSigmoid as ARTReverseSigmoid  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402

from modelsteal import BudgetExceededError, PredictionAPI  # noqa: E402
from modelsteal.defenses import MAD, ReverseSigmoid, available_defenses, defense_class, make_defense  # noqa: E402
from modelsteal.interop.art import BlackBoxAdapter, DefendedClassifier, DefensePostprocessor  # noqa: E402
from modelsteal.models import build_model  # noqa: E402

NB_STOLEN = 120


def art_classifier(model: nn.Module, *, loss: nn.Module | None = None, **kwargs) -> PyTorchClassifier:
    shape = tuple(model.input_shape)
    return PyTorchClassifier(model=model, loss=loss or nn.CrossEntropyLoss(), input_shape=shape,
                             nb_classes=model.num_classes, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                             device_type="cpu", **kwargs)


def spy_fit(classifier: PyTorchClassifier) -> list[tuple[np.ndarray, np.ndarray]]:
    """Record the ``(x, y)`` each ``fit`` call trains on: the answers the thief saw."""
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    fit = classifier.fit

    def recording_fit(x: np.ndarray, y: np.ndarray, **kwargs):
        seen.append((np.array(x), np.array(y)))
        return fit(x, y, **kwargs)

    classifier.fit = recording_fit  # type: ignore[method-assign]
    return seen


def thief(digits) -> PyTorchClassifier:
    return art_classifier(build_model("mlp", input_shape=digits.input_shape, num_classes=10, seed=1))


def test_knockoff_counts_every_query_and_sees_the_defended_posteriors(digits, digits_victim):
    """Bugs caught: an adapter that queries twice per batch or probes the API (count != nb_stolen); one that
    answers from the model or ``posteriors`` and so bypasses the defense (the thief would see undefended rows)."""
    api = PredictionAPI(digits_victim, defense=MAD(epsilon=0.5))
    victim = BlackBoxAdapter(api, budget=NB_STOLEN)
    assert victim.nb_classes == 10 and victim.input_shape == (1, 8, 8)
    clone = thief(digits)
    seen = spy_fit(clone)
    np.random.seed(0)  # ART's KnockoffNets draws its transfer set with numpy's global generator
    attack = KnockoffNets(victim, nb_stolen=NB_STOLEN, batch_size_query=50, batch_size_fit=32, nb_epochs=2,
                          use_probability=True, verbose=False)
    attack.extract(digits.x_val.numpy(), thieved_classifier=clone)

    assert api.queries() == NB_STOLEN == victim.queries == victim.blackbox.used
    (x_seen, y_seen), = seen
    x = torch.from_numpy(x_seen)
    undefended = api.posteriors(x)
    defended = api.defense(x, undefended)  # MAD is deterministic: the same rows answer the same
    np.testing.assert_allclose(y_seen, defended.numpy(), atol=1e-6)
    l1 = (torch.from_numpy(y_seen) - undefended).abs().sum(dim=1)
    assert float(l1.mean()) > 0.4  # the thief saw MAD's answers (||ỹ − y||₁ = ε = 0.5 on most rows), not y


def test_budget_too_small_is_refused_before_any_query(digits, digits_victim):
    """Bug caught: checking the budget batch by batch, which spends queries before failing."""
    api = PredictionAPI(digits_victim)
    victim = BlackBoxAdapter(api, budget=NB_STOLEN - 1)
    attack = KnockoffNets(victim, nb_stolen=NB_STOLEN, batch_size_query=50, verbose=False)
    with pytest.raises(BudgetExceededError, match="119"):
        attack.extract(digits.x_val.numpy(), thieved_classifier=thief(digits))
    assert api.queries() == 0 == victim.queries


def test_channels_last_is_transposed_not_reshaped():
    """Bug caught: ``reshape`` instead of ``permute`` from (N, H, W, C) to (N, C, H, W) (scrambles pixels)."""
    model = build_model("mlp", input_shape=(3, 4, 5), num_classes=4, seed=0)
    api = PredictionAPI(model)
    victim = BlackBoxAdapter(api, channels_first=False)
    assert victim.input_shape == (4, 5, 3) and victim.channels_first is False
    x = torch.rand(6, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    got = victim.predict(x.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(got, api.posteriors(x).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        victim.predict(x.numpy())  # channels-first arrays are rejected, not silently misread
    bad = x.permute(0, 2, 3, 1).numpy().copy()
    bad[3, 0, 0, 0] = np.nan  # what FunctionallyEquivalentExtraction sends a posterior API (see docs/interop.md)
    with pytest.raises(ValueError, match="non-finite"):
        victim.predict(bad)
    assert api.queries() == 6  # neither the wrong layout nor the NaN batch was sent


def test_adapter_meets_the_requirements_of_every_art_extraction_attack(digits_victim):
    """Bug caught: subclassing ART's plain ``BlackBoxClassifier``, which lacks ``NeuralNetworkMixin`` and is
    refused by FunctionallyEquivalentExtraction."""
    victim = BlackBoxAdapter(PredictionAPI(digits_victim), clip_values=(0.0, 1.0))
    FunctionallyEquivalentExtraction(victim, num_neurons=16)
    CopycatCNN(victim, nb_stolen=10)
    assert tuple(victim.clip_values) == (0.0, 1.0)


def test_postprocessor_equals_our_defense_and_arts_reverse_sigmoid(digits, digits_victim):
    """Bugs caught: the postprocessor skipping the softmax of logits, applying the defense twice or on the
    wrong axis; the numbers are checked against our defense called directly and against ART's own
    reverse sigmoid (the same formula, implemented independently)."""
    x = digits.x_test[:64]
    rs = ReverseSigmoid(beta=0.5, gamma=0.2)
    defended = art_classifier(digits_victim, postprocessing_defences=DefensePostprocessor(rs, from_logits=True))
    got = defended.predict(x.numpy())
    with torch.no_grad():
        probs = torch.softmax(digits_victim(x), dim=1)
    np.testing.assert_allclose(got, rs(x, probs).numpy(), atol=1e-6)
    assert np.abs(got - probs.numpy()).sum(axis=1).mean() > 0.05  # the defense changed the answers
    # ART clips posteriors to 1e-9 before its logit, so compare on rows without near-zero entries
    moderate = torch.softmax(torch.randn(64, 10, generator=torch.Generator().manual_seed(0)), dim=1).numpy()
    np.testing.assert_allclose(DefensePostprocessor(rs)(moderate), ARTReverseSigmoid(beta=0.5, gamma=0.2)(moderate),
                               atol=1e-6)


def test_postprocessor_refuses_defenses_that_read_inputs_and_logits_without_flag(digits_victim):
    """Bugs caught: running MAD on a placeholder x (ART never passes x to a postprocessor: silently wrong
    answers); treating logits as probabilities."""
    with pytest.raises(ValueError, match="DefendedClassifier"):
        DefensePostprocessor(MAD(epsilon=0.5))
    DefensePostprocessor(MAD(epsilon=0.5, objective="identity"))  # the G = I ablation reads no inputs
    with pytest.raises(ValueError, match="from_logits=True"):
        DefensePostprocessor(ReverseSigmoid(beta=0.5))(np.array([[2.0, -1.0, 0.5]], dtype=np.float32))


def test_defended_classifier_feeds_the_inputs_to_mad(digits, digits_victim):
    """Bug caught: the wrapper passing the defense anything but the queried x (zeros, another batch):
    MAD's answer depends on x through the surrogate's Jacobian."""
    x = digits.x_test[:48]
    surrogate = build_model("mlp", input_shape=digits.input_shape, num_classes=10, seed=7).eval()
    mad = MAD(epsilon=0.8, surrogate=surrogate)
    defended = DefendedClassifier(art_classifier(digits_victim), mad, from_logits=True)
    got = defended.predict(x.numpy())
    with torch.no_grad():
        probs = torch.softmax(digits_victim(x), dim=1)
    np.testing.assert_allclose(got, mad(x, probs).numpy(), atol=1e-6)
    assert not np.allclose(got, mad(torch.zeros_like(x), probs).numpy(), atol=1e-3)  # x matters
    assert defended.queries == 48
    bound = DefendedClassifier(art_classifier(digits_victim), MAD(epsilon=0.8), from_logits=True)
    assert bound.defense.surrogate is not None  # the default surrogate is built from the estimator's module


def test_pytorch_classifier_keeps_soft_labels_only_for_soft_losses(digits_victim):
    """What docs/interop.md says about ART's PyTorchClassifier (art/estimators/classification/pytorch.py):
    CrossEntropyLoss keeps probability targets, NLLLoss reduces them to the argmax."""
    soft = np.array([[0.6, 0.3, 0.1] + [0.0] * 7, [0.2, 0.5, 0.3] + [0.0] * 7], dtype=np.float32)
    kept = art_classifier(digits_victim, loss=nn.CrossEntropyLoss()).reduce_labels(soft)
    np.testing.assert_array_equal(kept, soft)
    reduced = art_classifier(digits_victim, loss=nn.NLLLoss()).reduce_labels(soft)
    np.testing.assert_array_equal(reduced, [0, 1])


def test_core_never_imports_art_and_missing_art_names_the_extra():
    """Bugs caught: a core module importing ART (the extra would become mandatory); an adapter module that
    fails with a bare ImportError instead of naming ``modelsteal[interop]``."""
    code = (
        "import sys\n"
        "import modelsteal, modelsteal.cli.main, modelsteal.interop, modelsteal.defenses, modelsteal.attacks\n"
        "assert 'art' not in sys.modules, 'ART imported by the core'\n"
        "sys.modules['art'] = None\n"
        "try:\n"
        "    import modelsteal.interop.art\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MissingDependencyError") and "modelsteal[interop]" in out.stdout


def test_knockoff_against_a_live_server_through_http(tmp_path, digits):
    """Bugs caught: an adapter whose rows are not what the server's ledger counts (double requests, probing),
    one that drops the server's input range (clip values), or answers the thief anything but the server's
    defended posteriors; and a key's budget on the server is enforced through ART."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    from serve_helpers import ServerProcess, make_checkpoint

    from modelsteal.models import load_checkpoint
    from modelsteal.serve.client import HTTPBlackBox
    from modelsteal.serve.store import open_store

    ckpt = make_checkpoint(tmp_path / "victim.pt")
    store_url = str(tmp_path / "ledger.db")
    with open_store(store_url) as store:
        _, key = store.create_key(name="thief", budget=NB_STOLEN)
    args = ["--defense", "reverse-sigmoid", "--strength", "0.5"]
    with ServerProcess(model=ckpt, store=store_url, log_path=tmp_path / "server.log", args=args) as server:
        with HTTPBlackBox(server.url, key) as api:
            victim = BlackBoxAdapter(api)
            assert tuple(victim.clip_values) == (0.0, 1.0) and victim.nb_classes == 10
            clone = thief(digits)
            seen = spy_fit(clone)
            np.random.seed(0)
            KnockoffNets(victim, nb_stolen=NB_STOLEN, batch_size_query=64, nb_epochs=1, use_probability=True,
                         verbose=False).extract(digits.x_val.numpy(), thieved_classifier=clone)
            assert api.usage()["queries"] == NB_STOLEN == victim.queries
            with pytest.raises(BudgetExceededError):
                victim.predict(digits.x_val[:1].numpy())
    (x_seen, y_seen), = seen
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x_seen)), dim=1)
    np.testing.assert_allclose(y_seen, ReverseSigmoid(beta=0.5)(torch.from_numpy(x_seen), probs).numpy(), atol=1e-5)
    assert np.abs(y_seen - probs.numpy()).sum(axis=1).mean() > 0.01  # defended, not the raw posteriors


@pytest.mark.parametrize("name", available_defenses())
def test_defenses_that_declare_no_input_ignore_it(name, digits, digits_victim):
    """``DefensePostprocessor`` trusts ``uses_input``. Bug caught: a defense that reads ``x`` but declares
    ``uses_input = False`` (e.g. MAD without its declaration), which ART would then run on a placeholder."""
    cls = defense_class(name)
    strength = getattr(cls, "example_strength", None) if cls.strength_param else None

    def answers(x: torch.Tensor) -> torch.Tensor:
        defense = make_defense(name, strength=strength)  # a fresh instance: random defenses restart their seed
        if defense.needs_fit:  # AM's misinformation model, fitted (deterministically) on a tiny slice
            defense.fit(digits_victim, replace(digits, x_train=digits.x_train[:256], y_train=digits.y_train[:256]))
        defense.bind(digits_victim, input_shape=digits.input_shape, num_classes=10)
        return defense(x, probs, client="default")

    x = digits.x_test[:32]
    with torch.no_grad():
        probs = torch.softmax(digits_victim(x), dim=1)
    if getattr(make_defense(name, strength=strength), "uses_input", False):
        assert not torch.allclose(answers(x), answers(x.flip(0)), atol=1e-4)  # it does read x
    else:
        torch.testing.assert_close(answers(x), answers(x.flip(0)))
