"""Executors: where a sweep's work units run — in this process, in local worker processes, or on Ray.

An executor takes a function ``fn(unit, *, cache) -> result`` (:func:`~modelsteal.experiment.sweep.run_unit`),
the work units of a plan and the shared :class:`~modelsteal.experiment.sweep.PointCache` (victims, data, transfer
sets, fitted defenses), and yields ``(index, result)`` as each unit finishes, in any order; the sweep writes each
finished point to its cache as it arrives, so a sweep killed on any backend resumes where it stopped. Given
``advance``, every executor reports progress inside a unit: ``fn`` is called with ``advance=`` a function of a
fraction of a point, and ``advance`` gets those fractions in this process (from workers through a queue: a
multiprocessing queue for ``pool``, a Ray queue actor for ``ray``), dropped once their unit has finished.

- ``serial`` (the default): one unit after another in this process, with its thread settings.
- ``pool``: ``workers`` local processes (``spawn``ed, so CUDA and OpenMP are safe), ``threads`` torch threads
  each (1 by default: two one-thread processes beat one two-thread process on small models); the cache is sent
  to each worker once, when it starts.
- ``ray`` (``pip install modelsteal[ray]``): each unit a Ray task with ``num_cpus`` (and ``num_gpus``); the cache
  is put in Ray's object store once and every task reads it from there. ``address``: ``None`` starts a local
  cluster of ``workers`` CPUs, ``auto`` joins the cluster this machine belongs to, ``ray://HOST:PORT`` connects a
  client. Every node needs modelsteal installed (the same version) and, for file-based data, the files.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

BACKENDS = ("serial", "pool", "ray")

UnitFn = Callable[..., Any]
Advance = Callable[[float], Any]
#: how often (seconds) the parent reads the workers' progress while it waits for units
PROGRESS_POLL = 0.2


class WorkerDiedError(RuntimeError):
    """A worker process died mid-unit (killed, out of memory): the finished points are cached, a rerun does
    the rest. The CLI prints it in one line."""


class Executor(ABC):
    """Runs work units; subclasses say where."""

    name = ""

    @abstractmethod
    def run(self, fn: UnitFn, units: Sequence[Any], *, cache: Any,
            advance: Advance | None = None) -> Iterator[tuple[int, Any]]:
        """``(i, fn(units[i], cache=cache))`` for every unit, as each finishes; with ``advance``, ``fn`` also gets
        ``advance=`` (progress inside the unit, in points) and ``advance`` receives it here."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}


class SerialExecutor(Executor):
    """Every unit in this process, in order (today's sweep)."""

    name = "serial"

    def run(self, fn: UnitFn, units: Sequence[Any], *, cache: Any,
            advance: Advance | None = None) -> Iterator[tuple[int, Any]]:
        for i, unit in enumerate(units):
            yield i, (fn(unit, cache=cache) if advance is None else fn(unit, cache=cache, advance=advance))


_WORKER_CACHE: Any = None
_WORKER_PROGRESS: Any = None  # the pool's progress queue, in a worker


def _init_worker(cache: Any, threads: int, deterministic: bool, progress: Any = None) -> None:
    """Pool worker start-up: the shared cache (sent once), the thread count, determinism if asked, the queue
    progress goes to (``None``: not reported)."""
    global _WORKER_CACHE, _WORKER_PROGRESS
    import torch

    _WORKER_PROGRESS = progress
    torch.set_num_threads(threads)
    if deterministic:
        from modelsteal.determinism import enable_determinism

        enable_determinism(threads=threads)
    _WORKER_CACHE = cache


def _run_in_worker(fn: UnitFn, unit: Any, index: int) -> Any:
    queue = _WORKER_PROGRESS
    if queue is None:
        return fn(unit, cache=_WORKER_CACHE)
    return fn(unit, cache=_WORKER_CACHE, advance=lambda f: queue.put((index, float(f))))


def _drain(get: Callable[[], list[tuple[int, float]]], advance: Advance, finished: set[int]) -> None:
    """Hand ``advance`` the fractions the workers reported, but those of units already finished (their point
    count is exact once the unit is done)."""
    for index, fraction in get():
        if index not in finished:
            advance(fraction)


def _queue_items(queue: Any) -> list[tuple[int, float]]:
    """Everything waiting in a ``SimpleQueue`` (whose ``put`` is written before it returns, so a finished
    unit's reports are all there when its result is), without blocking."""
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items


class PoolExecutor(Executor):
    """``workers`` local processes with ``threads`` torch threads each."""

    name = "pool"

    def __init__(self, *, workers: int | None = None, threads: int = 1, deterministic: bool = False) -> None:
        workers = (os.cpu_count() or 1) if workers is None else workers
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        if threads < 1:
            raise ValueError(f"threads per worker must be >= 1, got {threads}")
        self.workers, self.threads, self.deterministic = int(workers), int(threads), bool(deterministic)

    def run(self, fn: UnitFn, units: Sequence[Any], *, cache: Any,
            advance: Advance | None = None) -> Iterator[tuple[int, Any]]:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        if not units:
            return
        ctx = multiprocessing.get_context("spawn")
        progress = ctx.SimpleQueue() if advance is not None else None
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(units)), mp_context=ctx, initializer=_init_worker,
                                   initargs=(cache, self.threads, self.deterministic, progress))
        finished: set[int] = set()
        try:
            pending = {pool.submit(_run_in_worker, fn, unit, i): i for i, unit in enumerate(units)}
            while pending:
                done, _ = wait(pending, timeout=None if progress is None else PROGRESS_POLL,
                               return_when=FIRST_COMPLETED)
                if progress is not None:
                    _drain(lambda: _queue_items(progress), advance, finished)
                for future in done:
                    i = pending.pop(future)
                    finished.add(i)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        raise WorkerDiedError(
                            f"a worker process died ({len(pending) + 1} unit(s) unfinished); the finished points "
                            "are cached, so running the same command again computes only the rest") from None
                    yield i, result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "workers": self.workers, "threads": self.threads}


def _ray_task(fn: UnitFn, unit: Any, cache_ref: list[Any], threads: int, deterministic: bool,
              progress: Any = None, index: int = 0) -> Any:
    """One unit in a Ray worker: the cache read from the object store once per worker process; progress put
    in the ``progress`` queue actor (when given) as ``(index, fraction)``."""
    global _WORKER_CACHE
    import ray
    import torch

    key = cache_ref[0].hex()
    if _WORKER_CACHE is None or getattr(_WORKER_CACHE, "_ray_key", None) != key:
        _init_worker(ray.get(cache_ref[0]), threads, deterministic)
        _WORKER_CACHE._ray_key = key
    torch.set_num_threads(threads)
    if progress is None:
        return fn(unit, cache=_WORKER_CACHE)
    return fn(unit, cache=_WORKER_CACHE, advance=lambda f: progress.put_nowait((index, float(f))))


class RayExecutor(Executor):
    """Each unit a Ray task (``num_cpus``, ``num_gpus``); the cache in the object store once."""

    name = "ray"

    def __init__(self, *, address: str | None = None, workers: int | None = None, num_cpus: float = 1,
                 num_gpus: float = 0, deterministic: bool = False) -> None:
        if num_cpus <= 0 or num_gpus < 0:
            raise ValueError(f"num_cpus must be > 0 and num_gpus >= 0, got {num_cpus} and {num_gpus}")
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        if address is not None and not (address == "auto" or address.startswith("ray://")):
            raise ValueError(f"--address must be auto or ray://HOST:PORT, got {address!r}")
        self.address, self.workers = address, workers
        self.num_cpus, self.num_gpus, self.deterministic = float(num_cpus), float(num_gpus), bool(deterministic)
        if self.num_gpus and address is None:
            _check_local_gpus(self.num_gpus)
        self._ray = _import_ray()
        self._owned = False  # whether this executor started the local cluster (then it shuts it down)
        self._previous_sigterm: Any = None

    def _init(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        if self.address is None:  # a local cluster of `workers` CPUs, quiet; shut down on every exit path
            self._owned = True
            self._catch_sigterm()
            atexit.register(self.close)
            try:
                ray.init(num_cpus=self.workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except BaseException:
                self.close()
                raise
        else:
            ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if self.num_gpus > gpus:
            self.close()
            raise ValueError(f"--gpus-per-task {self.num_gpus:g} is more than the cluster's {gpus:g} GPU(s): its "
                             "tasks would wait forever")

    def _catch_sigterm(self) -> None:
        """Turn SIGTERM into ``SystemExit`` while the cluster runs (main thread only), so ``finally`` blocks and
        :meth:`close` run: by default SIGTERM ends the driver at once and orphans the cluster's processes."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)

        self._previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def close(self) -> None:
        """Shut down the local cluster this executor started (no-op otherwise, and when called again): Ray's own
        shutdown, then any of its processes still alive (the raylet's agents outlive it) are terminated."""
        if not self._owned:
            return
        self._owned = False
        cluster = _ray_descendants(os.getpid())
        try:
            self._ray.shutdown()
        finally:
            _terminate(cluster)
            if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None

    def run(self, fn: UnitFn, units: Sequence[Any], *, cache: Any,
            advance: Advance | None = None) -> Iterator[tuple[int, Any]]:
        if not units:
            return
        ray = self._ray
        self._init()
        cache_ref = [ray.put(cache)]  # inside a list: every task gets the reference, and fetches it once
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(_ray_task)
        threads = max(1, int(self.num_cpus))
        progress = None
        if advance is not None:
            from ray.util.queue import Queue

            progress = Queue(actor_options={"num_cpus": 0})
        pending = {task.remote(fn, unit, cache_ref, threads, self.deterministic, progress, i): i
                   for i, unit in enumerate(units)}
        finished: set[int] = set()
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=None if progress is None else PROGRESS_POLL)
                if progress is not None:
                    _drain(lambda: progress.get_nowait_batch(progress.qsize()), advance, finished)
                if not done:
                    continue
                i = pending.pop(done[0])
                finished.add(i)
                yield i, ray.get(done[0])
        finally:
            try:
                if ray.is_initialized():
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    if progress is not None:
                        progress.shutdown()
            finally:
                self.close()  # a cluster this executor started ends with its run

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "address": self.address or "local", "workers": self.workers,
                "num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


def _check_local_gpus(num_gpus: float) -> None:
    """Refuse ``--gpus-per-task`` that this machine's GPUs cannot give (a local Ray cluster has the GPUs torch
    sees): its tasks would wait forever, and the victim would have trained for nothing."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise ValueError(f"--gpus-per-task {num_gpus:g} asks for a GPU per task, but this machine has no GPU (CUDA is "
                         "not available): the local Ray cluster's tasks would wait forever; drop --gpus-per-task, or "
                         "join a cluster that has GPUs with --address")
    if num_gpus > n:
        raise ValueError(f"--gpus-per-task {num_gpus:g} is more than the {n} GPU(s) of this machine: the local Ray "
                         f"cluster's tasks would wait forever; use at most {n}")


def _ray_descendants(pid: int) -> list[int]:
    """The processes below ``pid`` whose command line names Ray (a local cluster's raylet, GCS, agents, workers),
    read from ``/proc``; empty where there is no ``/proc``."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    out = []
    for p in found:
        try:
            cmd = (proc / str(p) / "cmdline").read_bytes()
        except OSError:
            continue
        if b"ray" in cmd:
            out.append(p)
    return out


def _terminate(pids: Sequence[int], *, grace: float = 5.0) -> None:
    """SIGTERM the processes ``pids`` that are still alive, then SIGKILL those alive after ``grace`` seconds."""
    import time

    def alive(p: int) -> bool:
        try:
            os.kill(p, 0)
        except OSError:
            return False
        try:  # a zombie (exited, not yet reaped by its parent) is gone for our purpose
            return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True

    left = [p for p in pids if alive(p)]
    for p in left:
        try:
            os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError("--backend ray needs Ray: pip install 'modelsteal[ray]'") from None
    return ray


def make_executor(backend: str = "serial", *, workers: int | None = None, address: str | None = None,
                  num_cpus: float = 1, num_gpus: float = 0, deterministic: bool = False) -> Executor:
    """The executor named ``backend`` (``serial``, ``pool``, ``ray``); options checked, one-line errors."""
    name = str(backend).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if name != "ray" and address is not None:
        raise ValueError("--address is for --backend ray")
    if name != "ray" and num_gpus:
        raise ValueError("--gpus-per-task is for --backend ray")
    if name == "serial":
        if workers not in (None, 1):
            raise ValueError(f"--workers {workers} needs --backend pool or ray (serial runs one unit at a time)")
        return SerialExecutor()
    if name == "pool":
        return PoolExecutor(workers=workers, deterministic=deterministic)
    return RayExecutor(address=address, workers=workers, num_cpus=num_cpus, num_gpus=num_gpus,
                       deterministic=deterministic)
