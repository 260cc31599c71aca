"""The gateway: ``modelsteal serve --upstream URL`` answers from an existing model server instead of a local model.

The owner's model stays where it is (Triton, KServe, Seldon MLServer, TorchServe — anything that speaks the
Open Inference Protocol — or another ``modelsteal serve``); the gateway puts in front of it what
``modelsteal serve`` puts in front of a checkpoint: API keys, budgets, rate limits and the ledger, the output
formats, the defenses that need only the posteriors (reverse sigmoid, rounding, top-k, label-only, noise,
DAWN), MAD with a *local* surrogate (a randomly initialised ``--surrogate ARCH``, the surrogate the Prediction
Poisoning paper found best), Adaptive Misinformation with ``f̂`` (architecture ``--surrogate``) trained on
data the upstream labels, and the detectors that need only inputs and answers (PRADA, MSP).

How: the upstream becomes an ``nn.Module`` (:class:`UpstreamModel`) whose ``forward`` returns the log of the
upstream's probabilities, so that :class:`~modelsteal.PredictionAPI`'s softmax gives them back and every
defense, detector and output format runs unchanged. The server's dynamic batcher (:mod:`modelsteal.serve.batcher`)
sends the requests of one batch to the upstream as one call, before it takes its inference lock
(:meth:`UpstreamModel.prefetch`), so that batches answered in different threads wait on the upstream concurrently.

Failures: a refused connection, a 5xx, a 4xx (the gateway checked the input, so the upstream's refusal is the
upstream's fault) or a malformed or wrong-shaped answer is a 502 to the caller, a timeout a 504
(:class:`UpstreamError`); nothing is counted in the ledger for the unanswered rows (the request's ledger entry is
released), the gateway stays up and logs one line. ``timeout`` and ``pool_size`` bound the wait and the
connections to the upstream.

Example::

    modelsteal serve --upstream http://127.0.0.1:8080/v2/models/digits-lr --dataset digits \\
        --defense reverse-sigmoid --strength 0.5 --store ledger.db --port 8000
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from modelsteal.blackbox import BudgetExceededError, PredictionAPI
from modelsteal.serve.codec import APIError

if TYPE_CHECKING:
    from modelsteal.serve.client import HTTPBlackBox
    from modelsteal.serve.config import ServeConfig

log = logging.getLogger("modelsteal.serve")

#: defenses that read only the posteriors (and the input, DAWN's hash) — nothing inside the victim
POSTERIOR_DEFENSES = ("none", "identity", "reverse-sigmoid", "rounding", "top-k", "label-only", "random-noise",
                      "dawn", "mad-identity", "mad-random")
#: defenses that need a local model of the right shape: ``--surrogate ARCH``
SURROGATE_DEFENSES = ("mad", "mad-argmax", "am")
#: detectors that need only the inputs and the answers
GATEWAY_DETECTORS = ("none", "prada", "msp")


class UpstreamError(APIError):
    """The upstream did not answer usably: 502 (refused, 5xx, 4xx, malformed) or 504 (timed out)."""


class UpstreamModel(nn.Module):
    """An upstream endpoint as a classifier: ``forward(x)`` is ``log p`` with ``p`` the upstream's probabilities
    (so ``softmax(forward(x)) = p``), on the device of the module. A failure raises :class:`UpstreamError`.

    ``box`` is the :class:`~modelsteal.serve.client.HTTPBlackBox` speaking to the upstream (built with
    ``max_retries=0``: a gateway answers its caller now, it does not retry for minutes).
    """

    def __init__(self, box: HTTPBlackBox) -> None:
        super().__init__()
        self.box = box
        self.input_shape = tuple(box.input_shape)
        self.num_classes = int(box.num_classes)
        self._anchor = nn.Parameter(torch.empty(0), requires_grad=False)  # where the answers go (device)
        self._memo = threading.local()

    def prefetch(self, x: Tensor) -> None:
        """Ask the upstream for ``x`` now (the server calls this outside its inference lock); the next
        ``forward`` of the same rows in this thread uses the answer instead of asking again."""
        self._memo.value = (x, self.ask(x))

    def forward(self, x: Tensor) -> Tensor:
        memo = getattr(self._memo, "value", None)
        self._memo.value = None
        xc = x.detach().to("cpu", torch.float32)
        if memo is not None and memo[0].shape == xc.shape and torch.equal(memo[0], xc):
            probs = memo[1]
        else:
            probs = self.ask(xc)
        return torch.log(probs).to(self._anchor.device)

    def ask(self, x: Tensor) -> Tensor:
        """The upstream's ``(N, K)`` probabilities for ``x`` (float32, CPU); :class:`UpstreamError` on failure,
        logged as one line."""
        from modelsteal.serve.client import ServerError, ServerTimeoutError, ServerUnreachableError

        where = self.box.url + (f"/v2/models/{self.box.model_name}" if self.box.protocol == "v2" else "")
        try:
            return self.box.query(x.detach().to("cpu", torch.float32))
        except ServerTimeoutError as e:
            error = UpstreamError(504, "upstream_timeout", f"the upstream model server timed out: {e}")
        except (ServerError, ServerUnreachableError, PermissionError, BudgetExceededError, ValueError) as e:
            error = UpstreamError(502, "upstream_error", f"the upstream model server failed: {e}")
        log.warning("upstream %s failed (%d rows): %s", where, len(x), error.message.splitlines()[0][:300])
        raise error

    def __deepcopy__(self, memo: dict[int, Any]) -> UpstreamModel:
        raise ValueError("this needs a copy of the victim's internals, which a gateway does not have: give "
                         "--surrogate ARCH (a local architecture)")


def connect(config: ServeConfig) -> HTTPBlackBox:
    """The client of the upstream named in ``config`` (its metadata read now: a one-line error when it is not
    there or does not describe a classifier)."""
    from modelsteal.serve.client import HTTPBlackBox

    if config.upstream_timeout <= 0 or not math.isfinite(config.upstream_timeout):
        raise ValueError(f"--upstream-timeout must be a positive number of seconds, got {config.upstream_timeout}")
    if config.upstream_pool < 1:
        raise ValueError(f"--upstream-pool must be >= 1, got {config.upstream_pool}")
    return HTTPBlackBox(config.upstream, config.upstream_key, protocol=config.upstream_protocol,
                        model_name=config.upstream_model, timeout=config.upstream_timeout, max_retries=0,
                        pool_size=config.upstream_pool, batch_size=config.max_batch)


def check_gateway(config: ServeConfig) -> None:
    """One-line ``ValueError`` for what a gateway cannot do, before the upstream is contacted: a defense or
    detector that needs the victim's internals, a surrogate or dataset that is missing."""
    from modelsteal.defenses.base import defense_class

    name = config.defense.strip().lower()
    if name not in POSTERIOR_DEFENSES + SURROGATE_DEFENSES:
        defense_class(name)  # an unknown name: the registry's error, listing the known ones
        offered = ", ".join(POSTERIOR_DEFENSES + SURROGATE_DEFENSES)
        raise ValueError(f"defense {name!r} needs the victim's internals, which a gateway in front of "
                         f"{config.upstream} does not have; it offers {offered}")
    if name in SURROGATE_DEFENSES and not config.surrogate:
        raise ValueError(f"defense {name!r} needs a local model of the upstream's shape: pass --surrogate ARCH "
                         "(e.g. mlp or lenet; randomly initialised for MAD, trained as f-hat for am)")
    if name == "am" and not config.dataset:
        raise ValueError("defense 'am' trains f-hat on data the upstream labels: pass --dataset NAME")
    if name == "am" and str(config.defense_options.get("misinformation_kind", "trained")).lower() == "untrained":
        raise ValueError("am with misinformation_kind=untrained copies the victim's architecture; a gateway has "
                         "none: use the trained or uniform kind")
    detector = config.detector.strip().lower()
    if detector not in GATEWAY_DETECTORS:
        raise ValueError(f"detector {detector!r} needs the victim's internals (features or gradients); a gateway "
                         f"offers {', '.join(GATEWAY_DETECTORS)}")
    if detector != "none" and not config.dataset:
        raise ValueError(f"detector {detector!r} is fitted and calibrated on the victim's data: pass --dataset NAME")
    if config.response == "misinform":
        raise ValueError("--response misinform needs f-hat built from the victim; in a gateway use --defense am "
                         "--surrogate ARCH instead")


def build_gateway_api(config: ServeConfig) -> tuple[PredictionAPI, dict[str, Any]]:
    """The :class:`~modelsteal.PredictionAPI` of a gateway: the upstream as its model, with the configured
    defense (MAD's surrogate and AM's ``f̂`` local), detector (fitted and calibrated on ``config.dataset``,
    answered by the upstream) and output format. Returns the API and a description for ``/v1/info``."""
    from modelsteal.data import load_dataset
    from modelsteal.defenses.base import make_defense
    from modelsteal.models import build_model
    from modelsteal.outputs import make_output
    from modelsteal.serve.config import check_detector, fit_detector

    check_gateway(config)
    detector = check_detector(config)
    defense = make_defense(config.defense, strength=config.strength, **dict(config.defense_options))
    out_opts = dict(config.output_options)
    unknown = sorted(set(out_opts) - {"k", "decimals"})
    if unknown:
        raise ValueError(f"unknown output option(s) {', '.join(unknown)}; known: k (top-k), decimals (rounded)")
    output = make_output(config.output, **out_opts)
    if config.torch_threads:
        torch.set_num_threads(int(config.torch_threads))
    data = load_dataset(config.dataset, data_dir=config.data_dir) if config.dataset else None
    box = connect(config)
    if data is not None and tuple(data.input_shape) != box.input_shape:
        box.view_inputs_as(tuple(data.input_shape))  # a model of 64 features behind (1, 8, 8) digits
    upstream = UpstreamModel(box).to(config.device)
    if defense is not None and config.defense.strip().lower() in SURROGATE_DEFENSES:
        local = build_model(str(config.surrogate), input_shape=box.input_shape, num_classes=box.num_classes,
                            seed=0).to(config.device)
        if config.defense.strip().lower() == "am":
            assert data is not None
            labels = upstream.ask(data.x_train).argmax(dim=1)  # f-hat learns from what the upstream answers
            defense.fit(local, replace(data, y_train=labels), generator=torch.Generator().manual_seed(0))
        else:
            defense.bind(local, input_shape=box.input_shape, num_classes=box.num_classes)  # MAD: a random copy
    if detector is not None:
        fit_detector(detector, upstream, dataset=config.dataset, tnr=config.detector_tnr, data_dir=config.data_dir)
    api = PredictionAPI(upstream, defense=defense, detector=detector, response=config.response, output=output,
                        budget=None, input_shape=box.input_shape, num_classes=box.num_classes,
                        batch_size=config.max_batch, device=config.device)
    info: dict[str, Any] = {
        "defense": {"name": "none" if defense is None else (defense.name or type(defense).__name__),
                    "description": "none" if defense is None else repr(defense),
                    "options": {k: v for k, v in config.defense_options.items()},
                    "strength": None if defense is None else defense.strength},
        "dataset": config.dataset,
        "arch": None,
        "upstream": {"url": box.url, "protocol": box.protocol, "model": box.model_name,
                     "timeout": config.upstream_timeout, "pool": config.upstream_pool},
        "model_name": config.model_name or box.model_name or "model",
    }
    if config.surrogate:
        info["surrogate"] = config.surrogate
    if detector is not None:
        info["detector"] = {"name": detector.name, "description": repr(detector), "response": config.response,
                            "options": dict(config.detector_options), "tnr": config.detector_tnr,
                            "threshold": detector.threshold, "stateful": detector.stateful}
    return api, info
