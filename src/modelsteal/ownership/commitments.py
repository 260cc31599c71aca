"""Commitments that bind an ownership claim to evidence fixed before the suspect existed.

Liu, Zhang, Duddu, Asokan et al., *False Claims against Model Ownership Resolution*, USENIX Security 2024: an
accuser who may choose the evidence after the fact — a trigger set of transferable adversarial examples, a DAWN
key or records picked to match a suspect, another "private" data set — can claim an independent model. The
defence is to commit to the evidence when the victim is trained: ``modelsteal train`` hashes into the victim's
checkpoint (``meta["commitments"]``)

- ``private_data``: SHA-256 of the victim's training split (inputs and labels): dataset inference's private set;
- ``ewe_triggers``: SHA-256 of the EWE trigger set with its target class;
- ``dawn_key``: the DAWN key's public fingerprint (``train --commit-dawn-key``), the key the served API uses;

and prints :func:`commitment_digest`, one hash over all of them, which the owner publishes (a timestamping
service, a registry, a signed release) at training time. A verification checks its evidence against the
checkpoint's commitments (:func:`check_commitment`) and, given the published digest (``verify --commitment``),
the checkpoint's commitments against it: evidence that does not match is refused before any query. A commitment
proves *when* the evidence was fixed, not that it is a good watermark: it stops evidence chosen after the
suspect appeared, the attack the paper measures.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from torch import Tensor

from modelsteal.ownership.references import data_digest

#: the commitments a checkpoint may hold, and what each binds
COMMITMENTS = {"private_data": "the victim's training split (dataset inference's private set)",
               "ewe_triggers": "the EWE trigger set and its target class",
               "dawn_key": "the DAWN key (its public fingerprint)"}


class CommitmentError(ValueError):
    """Evidence that does not match the commitment made at training time (a one-line refusal)."""


def private_data_commitment(x: Tensor, y: Tensor) -> str:
    """The commitment to a private training set: SHA-256 of its inputs and labels."""
    return data_digest(x, y)


def trigger_commitment(triggers: Tensor, target_class: int) -> str:
    """The commitment to an EWE trigger set: SHA-256 of the triggers (as float32) and the target class."""
    h = hashlib.sha256(data_digest(triggers.float()).encode())
    h.update(f"target={int(target_class)}".encode())
    return h.hexdigest()


def commitment_digest(commitments: Mapping[str, str]) -> str:
    """One SHA-256 over all ``commitments`` (sorted by name): what the owner publishes at training time."""
    return hashlib.sha256(json.dumps(dict(sorted(commitments.items()))).encode()).hexdigest()


def check_commitment(name: str, value: str, commitments: Mapping[str, str] | None, *, evidence: str) -> bool:
    """Refuse (:class:`CommitmentError`) when the checkpoint committed to ``name`` and ``value`` differs; returns
    whether a commitment was checked (``False``: the checkpoint holds none for ``name``, the claim is unbound)."""
    if name not in COMMITMENTS:
        raise ValueError(f"unknown commitment {name!r}; known: {', '.join(COMMITMENTS)}")
    committed = (commitments or {}).get(name)
    if committed is None:
        return False
    if committed != value:
        raise CommitmentError(f"{evidence} does not match the victim's commitment to {COMMITMENTS[name]} "
                              f"(committed {committed[:16]}..., got {value[:16]}...): refused")
    return True


def check_published(commitments: Mapping[str, str] | None, published: str) -> None:
    """Refuse a checkpoint whose commitments do not hash to the ``published`` digest."""
    if not commitments:
        raise CommitmentError("the victim's checkpoint holds no commitments, so it cannot match a published one "
                              "(train it with modelsteal train, which records them)")
    got = commitment_digest(commitments)
    if got != published.strip().lower():
        raise CommitmentError(f"the victim's commitments hash to {got[:16]}..., not the published "
                              f"{published.strip()[:16]}...: the checkpoint's evidence is not what was committed")
