"""DAWN's watermark records kept in the server's store, written out as the records file verification reads.

When the served defense watermarks answers (DAWN), the server stores, with each answered request's ledger
entry, what the defense recorded while answering it (:meth:`~modelsteal.defenses.dawn.DAWN.take_new_records`:
the quantised inputs and their wrong labels, with the defense's header). So the records survive ``kill -9`` and
restarts (an answer is sent only after its records have committed), several workers sharing one store write
into one place, and a request that fails or is refused before it is answered takes its records back out with its
ledger entry. :func:`export_records` writes them, deduplicated per client, as the JSON-lines file of
:func:`~modelsteal.defenses.dawn.load_records`::

    modelsteal keys watermarks --store ledger.db --out wm.jsonl [--name alice]
    modelsteal verify --victim victim.pt --suspect clone.pt --method dawn --key SECRET --records wm.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelsteal.serve.store import Store


def stored_records(store: Store, *, names: list[str] | None = None) -> tuple[dict[str, Any] | None, list[dict]]:
    """The header of the stored records (``None`` when there are none) and their rows ``{"client", "input",
    "label"}``, oldest first, each (client, input) once; ``names`` keeps those clients only. A store holding
    records of two different keys or settings is refused (one file is verified with one key)."""
    clients = {c.id: c.name for c in store.clients()}
    want = None if names is None else set(names)
    header: dict[str, Any] | None = None
    rows: list[dict] = []
    seen: set[tuple[str, tuple[int, ...]]] = set()
    for client_id, payload in store.watermarks():
        name = clients.get(client_id, str(client_id))
        if want is not None and name not in want:
            continue
        entry = json.loads(payload)
        if header is None:
            header = entry["header"]
        elif entry["header"] != header:
            raise ValueError(f"the store holds watermark records made with different DAWN settings ({header} and "
                             f"{entry['header']}): export one client at a time with --name")
        for qi, label in entry["records"]:
            key = (name, tuple(qi))
            if key not in seen:
                seen.add(key)
                rows.append({"client": name, "input": qi, "label": int(label)})
    return header, rows


def export_records(store: Store, path: str | Path, *, names: list[str] | None = None) -> tuple[Path, int]:
    """Write the stored records (of ``names``, default all clients) to ``path`` as a DAWN records file;
    returns the path and the number of rows. A one-line ``ValueError`` when there is nothing to write."""
    if names:
        missing = [n for n in names if store.client_named(n) is None]
        if missing:
            known = ", ".join(c.name for c in store.clients()) or "none"
            raise ValueError(f"no client named {', '.join(map(repr, missing))} in {store.url}; known: {known}")
    header, rows = stored_records(store, names=names)
    if header is None:
        who = "" if not names else f" for {', '.join(names)}"
        raise ValueError(f"{store.url} holds no watermark records{who}: the server records them when it serves "
                         "--defense dawn")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        f.write(json.dumps(header) + "\n")
        for r in rows:
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)
    return path, len(rows)
