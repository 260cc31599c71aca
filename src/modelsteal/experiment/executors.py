"""Executors: where a sweep's work units run — in this process, in local worker processes, or on Ray.

An executor takes a function ``fn(unit, *, cache) -> result`` (:func:`~modelsteal.experiment.sweep.run_unit`),
the work units of a plan and the shared :class:`~modelsteal.experiment.sweep.PointCache` (victims, data, transfer
sets, fitted defenses), and yields ``(index, result)`` as each unit finishes, in any order; the sweep writes each
finished point to its cache as it arrives, so a sweep killed on any backend resumes where it stopped.

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

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

BACKENDS = ("serial", "pool", "ray")

UnitFn = Callable[..., Any]


class WorkerDiedError(RuntimeError):
    """A worker process died mid-unit (killed, out of memory): the finished points are cached, a rerun does
    the rest. The CLI prints it in one line."""


class Executor(ABC):
    """Runs work units; subclasses say where."""

    name = ""

    @abstractmethod
    def run(self, fn: UnitFn, units: Sequence[Any], *, cache: Any) -> Iterator[tuple[int, Any]]:
        """``(i, fn(units[i], cache=cache))`` for every unit, as each finishes."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}


class SerialExecutor(Executor):
    """Every unit in this process, in order (today's sweep)."""

    name = "serial"

    def run(self, fn: UnitFn, units: Sequence[Any], *, cache: Any) -> Iterator[tuple[int, Any]]:
        for i, unit in enumerate(units):
            yield i, fn(unit, cache=cache)


_WORKER_CACHE: Any = None


def _init_worker(cache: Any, threads: int, deterministic: bool) -> None:
    """Pool worker start-up: the shared cache (sent once), the thread count, determinism if asked."""
    global _WORKER_CACHE
    import torch

    torch.set_num_threads(threads)
    if deterministic:
        from modelsteal.determinism import enable_determinism

        enable_determinism(threads=threads)
    _WORKER_CACHE = cache


def _run_in_worker(fn: UnitFn, unit: Any) -> Any:
    return fn(unit, cache=_WORKER_CACHE)


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

    def run(self, fn: UnitFn, units: Sequence[Any], *, cache: Any) -> Iterator[tuple[int, Any]]:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        if not units:
            return
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(units)), mp_context=ctx,
                                   initializer=_init_worker, initargs=(cache, self.threads, self.deterministic))
        try:
            pending = {pool.submit(_run_in_worker, fn, unit): i for i, unit in enumerate(units)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
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


def _ray_task(fn: UnitFn, unit: Any, cache_ref: list[Any], threads: int, deterministic: bool) -> Any:
    """One unit in a Ray worker: the cache read from the object store once per worker process."""
    global _WORKER_CACHE
    import ray
    import torch

    key = cache_ref[0].hex()
    if _WORKER_CACHE is None or getattr(_WORKER_CACHE, "_ray_key", None) != key:
        _init_worker(ray.get(cache_ref[0]), threads, deterministic)
        _WORKER_CACHE._ray_key = key
    torch.set_num_threads(threads)
    return fn(unit, cache=_WORKER_CACHE)


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
        self._ray = _import_ray()

    def _init(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        if self.address is None:  # a local cluster of `workers` CPUs, quiet
            ray.init(num_cpus=self.workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=self.address, log_to_driver=False, configure_logging=False)

    def run(self, fn: UnitFn, units: Sequence[Any], *, cache: Any) -> Iterator[tuple[int, Any]]:
        if not units:
            return
        ray = self._ray
        self._init()
        cache_ref = [ray.put(cache)]  # inside a list: every task gets the reference, and fetches it once
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(_ray_task)
        threads = max(1, int(self.num_cpus))
        pending = {task.remote(fn, unit, cache_ref, threads, self.deterministic): i for i, unit in enumerate(units)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                yield i, ray.get(done[0])
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "address": self.address or "local", "workers": self.workers,
                "num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


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
