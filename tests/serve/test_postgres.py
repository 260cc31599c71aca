"""The PostgreSQL store and a multi-worker server sharing it.

Off by default: set ``MODELSTEAL_TEST_POSTGRES=1`` to run them. They then use the Debian ``postgresql``
package (installing it with apt-get when its binaries are missing), start a throwaway cluster on a free
loopback port with trust authentication, and remove it afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.postgres

ENABLED = os.environ.get("MODELSTEAL_TEST_POSTGRES") == "1"
if not ENABLED:
    pytest.skip("PostgreSQL tests are off: set MODELSTEAL_TEST_POSTGRES=1 to install (apt) and start a "
                "throwaway PostgreSQL cluster on loopback", allow_module_level=True)
pytest.importorskip("psycopg", reason="the PostgreSQL store needs psycopg 3: pip install 'psycopg[binary]'")

from serve_helpers import INPUT_SHAPE, NUM_CLASSES, ServerProcess, make_checkpoint  # noqa: E402

from modelsteal.serve.store import (  # noqa: E402
    AuthenticationError,
    BudgetExhaustedError,
    PostgresStore,
    RateLimitedError,
    open_store,
)


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _run(cmd: list[str], *, timeout: float) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    bindir = _pg_bindir()
    if bindir is None:
        if shutil.which("apt-get") is None:
            pytest.skip("PostgreSQL is not installed and apt-get is not available to install it")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=600, env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "postgresql"], capture_output=True,
                       timeout=900, env=env, check=True)
        bindir = _pg_bindir()
        assert bindir is not None, "apt-get installed postgresql but initdb was not found"
    root = Path(tempfile.mkdtemp(prefix="modelsteal-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        pw = pwd.getpwnam("postgres")
        os.chmod(root, 0o755)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    try:
        _run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
             timeout=180)
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=on"
        _run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "pg.log"),
              "-w", "-t", "60", "start"], timeout=90)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_store_keys_budget_rate_and_release(pg_url):
    with open_store(pg_url) as store:
        assert isinstance(store, PostgresStore)
        client, key = store.create_key(name="pg-alice", budget=10, rate_limit=1000.0)
        assert store.authenticate(key).id == client.id
        entry, after = store.reserve(client.id, 6)
        assert after.queries == 6
        with pytest.raises(BudgetExhaustedError, match="4 left"):
            store.reserve(client.id, 5)
        store.release(entry.id)
        assert store.client(client.id).queries == 0
        slow, _ = store.create_key(name="pg-slow", rate_limit=5.0)
        store.reserve(slow.id, 10, now=1e6)
        with pytest.raises(RateLimitedError):
            store.reserve(slow.id, 1, now=1e6)
        store.revoke("pg-alice")
        with pytest.raises(AuthenticationError, match="revoked"):
            store.authenticate(key)
    with pytest.raises(ValueError, match="cannot use PostgreSQL store"):
        open_store(f"postgresql://postgres@127.0.0.1:{_free_port()}/postgres")


def test_postgres_store_keeps_flags_per_client_next_to_the_ledger(pg_url):
    # Bugs caught: the flags table missing from the PostgreSQL schema; release() failing on a flagged entry
    # (foreign key) or leaving its flags behind; flags summed over every client.
    with open_store(pg_url) as store:
        a, _ = store.create_key(name="pg-flag-a")
        b, _ = store.create_key(name="pg-flag-b")
        first, _ = store.reserve(a.id, 5)
        store.record_flags(first.id, 3)
        second, _ = store.reserve(a.id, 4)
        store.record_flags(second.id, 2)
        store.record_flags(store.reserve(b.id, 2)[0].id, 0)
        assert (store.flags(a.id), store.flags(b.id)) == (5, 0)
        store.release(second.id)
        assert store.flags(a.id) == 3
    with open_store(pg_url) as store:
        assert store.flags(a.id) == 3


def test_postgres_concurrent_reservations_are_exact(pg_url):
    a, b = open_store(pg_url), open_store(pg_url)
    try:
        client, _ = a.create_key(name="pg-race", budget=500)

        def worker(s: PostgresStore) -> None:
            for _ in range(40):
                try:
                    s.reserve(client.id, 7)
                except BudgetExhaustedError:
                    pass

        threads = [threading.Thread(target=worker, args=(s,)) for s in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        final = b.client(client.id)
        assert final.queries == 7 * (500 // 7)
        assert sum(e.n for e in a.ledger(client_id=client.id)) == final.queries
    finally:
        a.close()
        b.close()


def test_two_workers_share_the_postgres_ledger(pg_url, tmp_path):
    import httpx

    ckpt = make_checkpoint(tmp_path / "victim.pt")
    with open_store(pg_url) as store:
        keys = {f"pg-load{i}": store.create_key(name=f"pg-load{i}")[1] for i in range(2)}
    sent = dict.fromkeys(keys, 0)
    lock = threading.Lock()
    failures: list[str] = []
    server = ServerProcess(model=ckpt, store=pg_url, log_path=tmp_path / "server.log", args=["--workers", "2"])

    def worker(name: str, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {keys[name]}"}, timeout=30) as http:
            for i in range(20):
                n = 1 + (seed + i) % 9
                r = http.post("/v1/predict", json={"inputs": torch.rand(n, *INPUT_SHAPE, generator=g).tolist()})
                if r.status_code != 200 or len(r.json()["outputs"]) != n:
                    with lock:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    return
                with lock:
                    sent[name] += n

    with server:
        threads = [threading.Thread(target=worker, args=(name, 3 * k + j)) for k, name in enumerate(keys)
                   for j in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not failures, failures
        for name, key in keys.items():
            usage = httpx.get(server.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
            assert usage["queries"] == sent[name] and usage["requests"] == 80
        info = httpx.get(server.url + "/v1/info", timeout=10).json()
        assert info["num_classes"] == NUM_CLASSES


@pytest.mark.parametrize("sync, setting", [("full", "on"), ("normal", "off")])
def test_postgres_ledger_sync_sets_synchronous_commit(pg_url, sync, setting):
    # Bugs caught: --ledger-sync normal ignored on PostgreSQL (every commit still waits for the WAL flush), or
    # applied by default (the durability promise silently weakened).
    with open_store(pg_url, sync=sync) as store:
        with store._transaction(write=False) as cur:
            assert cur.execute("SHOW synchronous_commit").fetchone()[0] == setting
        client, _ = store.create_key(name=f"pg-sync-{sync}")
        entry, after = store.reserve(client.id, 3)
        assert after.queries == 3 and store.ledger()[-1].id == entry.id
