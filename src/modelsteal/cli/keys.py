"""``modelsteal keys``: create, list, revoke and show the API keys of a ``modelsteal serve`` store.

Keys are stored hashed; ``keys create`` prints the new key once, alone on its last line::

    KEY=$(modelsteal keys create --store ledger.db --name alice --budget 10000 | tail -n 1)
    modelsteal keys list --store ledger.db
    modelsteal keys revoke --store ledger.db --name alice
    modelsteal keys show --store ledger.db --name alice     # usage, flags, detector state summary (JSON)
    modelsteal keys watermarks --store ledger.db --out wm.jsonl   # DAWN's records, for `modelsteal verify`
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("keys", help="create, list and revoke API keys of a server's store",
                              description="Manage the API keys (clients) of a `modelsteal serve` store.")
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    def store_arg(q: argparse.ArgumentParser) -> None:
        q.add_argument("--store", default=os.environ.get("MODELSTEAL_STORE", "modelsteal.db"),
                       help="SQLite path, sqlite:///path or postgresql://... (default $MODELSTEAL_STORE or "
                            "modelsteal.db)")

    c = sub.add_parser("create", help="create a client and print its new key (on the last line)")
    store_arg(c)
    c.add_argument("--name", required=True, help="client name (letters, digits, _ . @ -)")
    c.add_argument("--budget", type=int, default=None, help="query budget (input rows); default unlimited")
    c.add_argument("--rate-limit", type=float, default=None, help="queries per second; default unlimited")

    ls = sub.add_parser("list", help="list clients with their counts, budgets and status")
    store_arg(ls)
    ls.add_argument("--active", action="store_true", help="hide revoked keys")

    r = sub.add_parser("revoke", help="revoke a client's active key (its ledger is kept)")
    store_arg(r)
    r.add_argument("--name", required=True, help="client name")

    sh = sub.add_parser("show", help="print a client's usage, flagged queries and detector state summary (JSON)")
    store_arg(sh)
    sh.add_argument("--name", required=True, help="client name (its active key, else its latest revoked one)")

    wm = sub.add_parser("watermarks", help="write the DAWN watermark records the server stored, as the file "
                                           "`modelsteal verify --method dawn --records` reads")
    store_arg(wm)
    wm.add_argument("--out", required=True, type=Path, help="records file to write (JSON lines)")
    wm.add_argument("--name", action="append", default=None, help="only this client (repeatable); default all")
    return p


def run(args: argparse.Namespace) -> int:
    from modelsteal.serve.store import open_store

    if args.keys_command != "create":  # only `keys create` may start a new store
        _require_existing_store(args.store)
    with open_store(args.store) as store:
        if args.keys_command == "create":
            client, key = store.create_key(name=args.name, budget=args.budget, rate_limit=args.rate_limit)
            budget = "unlimited" if client.budget is None else f"{client.budget} queries"
            rate = "no rate limit" if client.rate_limit is None else f"{client.rate_limit:g} queries/s"
            print(f"created client {client.name!r} ({budget}, {rate}) in {store.url}; the key is shown only once:")
            print(key)
        elif args.keys_command == "list":
            _print_table(store.clients(include_revoked=not args.active))
        elif args.keys_command == "revoke":
            client = store.revoke(args.name)
            print(f"revoked key {client.key_prefix}… of client {client.name!r} ({client.queries} queries recorded)")
        elif args.keys_command == "show":
            print(json.dumps(show(store, args.name), indent=2, allow_nan=False))
        elif args.keys_command == "watermarks":
            from modelsteal.serve.watermarks import export_records

            path, n = export_records(store, args.out, names=args.name)
            print(f"wrote {n} watermarked quer{'y' if n == 1 else 'ies'} to {path}")
    return 0


def show(store: Any, name: str) -> dict[str, Any]:
    """What an admin sees of client ``name``: its usage, flagged queries, detector state summary (rebuilt
    from the store's journal; ``null`` when the server never saved one) and how many distinct queries of its
    DAWN watermarked (``watermarked``)."""
    from modelsteal.serve.detector_state import stored_summary
    from modelsteal.serve.watermarks import stored_records

    client = store.client_named(name)
    if client is None:
        known = ", ".join(c.name for c in store.clients()) or "none"
        raise ValueError(f"no client named {name!r} in {store.url}; known: {known}")
    return {**client.as_dict(), "revoked": client.revoked, "flagged": store.flags(client.id),
            "detector": stored_summary(store, client.id),
            "watermarked": len(stored_records(store, names=[client.name])[1])}


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite store URL (``ledger.db``, ``sqlite:///ledger.db``), ``None`` for a server URL."""
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        return Path(path[1:] if path.startswith("/") else path)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        return None  # postgresql://... (or an unsupported scheme, which open_store reports)
    return Path(url)


def _require_existing_store(url: str) -> None:
    path = sqlite_path(url)
    if path is not None and str(path).strip() and not path.is_file():
        raise FileNotFoundError(f"store {url} does not exist; create it with "
                                f"`modelsteal keys create --store {url} --name NAME`")


def _print_table(clients: list[Any]) -> None:
    header = ("name", "key", "queries", "budget", "rate/s", "created", "status")
    rows = [header]
    for c in clients:
        rows.append((
            c.name, c.key_prefix + "…", str(c.queries), "-" if c.budget is None else str(c.budget),
            "-" if c.rate_limit is None else f"{c.rate_limit:g}",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(c.created_at)),
            "revoked" if c.revoked else "active",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
