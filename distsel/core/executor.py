"""Where distsel's work runs. Stages, selectors and the pipeline hand work to the current executor
and never touch Ray themselves: `RayExecutor` (tasks, actors and Ray Data actor pools on a local
or remote cluster) or `LocalExecutor` (everything in this process, one call after another, for
unit tests and debugging). Both give the same results for the same work.

    with LocalExecutor().active():
        pipeline.run(config)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from distsel.core import console
from distsel.core.errors import DistselError
from distsel.core.progress import Progress

T = TypeVar("T")
Call = tuple[Any, ...]

# Idle workers are kept for a minute, not a second, so that the next stage's tasks do not wait
# for new worker processes.
LOCAL_RAY_SETTINGS = {"idle_worker_killing_time_threshold_ms": 60_000}
# While a call with a Progress runs, the driver looks for its new lines this often (seconds).
PROGRESS_POLL_SECONDS = 2.0

log = logging.getLogger("distsel")


class ActorGroup(ABC):
    """`size` long-lived workers built from one class; `call` spreads calls over them."""

    @abstractmethod
    def call(self, method: str, calls: Sequence[Call]) -> list[Any]:
        """`worker.method(*args)` for each args in `calls` (round-robin), results in order."""

    @abstractmethod
    def close(self) -> None: ...


class Executor(ABC):
    """Runs functions as tasks, classes as actors, and per-item workers as pools."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Connect to (or start) the compute backend; called on first use."""

    @abstractmethod
    def map(self, fn: Callable[..., T], calls: Sequence[Call], *, num_cpus: float = 1.0) -> list[T]:
        """fn(*args) for each args in `calls`, in parallel where possible; results in order."""

    @abstractmethod
    def as_completed(
        self, fn: Callable[..., T], calls: Sequence[Call], *, num_cpus: float = 1.0
    ) -> Iterator[T]:
        """The results of fn(*args) over `calls`, as each finishes (order not kept)."""

    @abstractmethod
    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        progress: Progress | None = None,
    ) -> T:
        """fn(*args) once, with these resources (e.g. a fit that needs the GPU). `progress`:
        a Progress that fn reports to (pass it among `args` too); its lines reach the driver's
        log while the call runs."""

    @abstractmethod
    def share(self, value: T) -> T:
        """A handle to pass a large value to many calls of `map` once (the value itself when
        nothing is gained)."""

    @abstractmethod
    def actors(
        self, cls: type, args: Call, *, size: int, num_cpus: float = 1.0, num_gpus: float = 0.0
    ) -> ActorGroup: ...

    @abstractmethod
    def over_items(
        self,
        items: list[str],
        worker: Any,
        *,
        resources: Any = None,
        worker_kwargs: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Run `worker` on each item (called with {"item": [item]}); yield its result rows as
        they come. A class runs as a pool of `resources.pool_size` actors that each set it up
        once; a function runs as one-CPU tasks."""

    @abstractmethod
    def totals(self) -> dict[str, float]:
        """The cluster's resources ("CPU", "GPU", ...)."""

    def pool_size(self, resources: Any) -> int:
        """Actors in a pool of these resources: `resources.pool_size`, else as many as the
        cluster holds now (its CPUs / num_cpus, and its GPUs / num_gpus where it asks for GPUs)."""
        if resources.pool_size:
            return int(resources.pool_size)
        total = self.totals()
        fits = [int(total.get("CPU", 0) // resources.num_cpus)] if resources.num_cpus else []
        if resources.num_gpus:
            fits.append(int(total.get("GPU", 0) // resources.num_gpus))
        return max(1, min(fits, default=1))

    def nodes(self) -> list[dict[str, float]]:
        """Each live node's resources."""
        return [self.totals()]

    def map_reduce(
        self,
        fn: Callable[..., T],
        calls: Sequence[Call],
        combine: Callable[..., T],
        *,
        fanin: int = 16,
    ) -> T:
        """combine over fn(*args) for each args in `calls`, as a tree `fanin` wide, in order:
        the same additions on every executor (so the same floating-point result)."""
        values = self.map(fn, calls)
        while len(values) > fanin:
            groups = [tuple(values[i : i + fanin]) for i in range(0, len(values), fanin)]
            values = self.map(combine, groups)
        return combine(*values)

    @contextmanager
    def active(self) -> Iterator[Executor]:
        """Make this the executor that `current()` returns, within the block."""
        global _current
        previous, _current = _current, self
        try:
            yield self
        finally:
            _current = previous


class LocalExecutor(Executor):
    """Everything in this process, in order: no parallelism, no Ray."""

    def __init__(self, cpus: int | None = None) -> None:
        self.cpus = float(cpus or os.cpu_count() or 1)

    def map(self, fn: Callable[..., T], calls: Sequence[Call], *, num_cpus: float = 1.0) -> list[T]:
        return [fn(*args) for args in calls]

    def as_completed(
        self, fn: Callable[..., T], calls: Sequence[Call], *, num_cpus: float = 1.0
    ) -> Iterator[T]:
        return (fn(*args) for args in calls)

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        progress: Progress | None = None,
    ) -> T:
        try:
            return fn(*args)  # its Progress lines are logged as they are said
        finally:
            if progress is not None:
                progress.close()

    def share(self, value: T) -> T:
        return value

    def actors(
        self, cls: type, args: Call, *, size: int, num_cpus: float = 1.0, num_gpus: float = 0.0
    ) -> ActorGroup:
        return _LocalActors(cls(*args))

    def over_items(
        self,
        items: list[str],
        worker: Any,
        *,
        resources: Any = None,
        worker_kwargs: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        kwargs = worker_kwargs or {}
        if isinstance(worker, type):
            instance, kwargs = worker(**kwargs), {}
        else:
            instance = worker
        for item in items:
            out = instance({"item": np.array([item], dtype=object)}, **kwargs)
            size = len(next(iter(out.values())))
            yield from ({name: values[i] for name, values in out.items()} for i in range(size))

    def totals(self) -> dict[str, float]:
        return {"CPU": self.cpus}


class _LocalActors(ActorGroup):
    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def call(self, method: str, calls: Sequence[Call]) -> list[Any]:
        return [getattr(self.worker, method)(*args) for args in calls]

    def close(self) -> None:
        pass


class RayExecutor(Executor):
    """Ray tasks and actors, and Ray Data for pools over items. `address`: the cluster to join
    (else RAY_ADDRESS, else a local single-node Ray that this process starts)."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def start(self) -> None:
        import ray

        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS")
            options = console.ray_init_options()
            if address:
                ray.init(address=address, **options)
            else:
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
                # "local": a Ray started with `ray start` on this machine is joined only when
                # named.
                ray.init(
                    address="local",
                    include_dashboard=False,
                    _system_config=LOCAL_RAY_SETTINGS,
                    **options,
                )
        _quiet_ray_data()

    def map(self, fn: Callable[..., T], calls: Sequence[Call], *, num_cpus: float = 1.0) -> list[T]:
        remote = self._remote(fn, num_cpus)
        return _get([remote.remote(*args) for args in calls])

    def as_completed(
        self, fn: Callable[..., T], calls: Sequence[Call], *, num_cpus: float = 1.0
    ) -> Iterator[T]:
        import ray

        remote = self._remote(fn, num_cpus)
        pending = [remote.remote(*args) for args in calls]
        while pending:
            done, pending = ray.wait(pending, num_returns=min(len(pending), 16))
            yield from _get(done)

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        progress: Progress | None = None,
    ) -> T:
        ref = self._remote(fn, num_cpus, num_gpus).remote(*args)
        if progress is not None:
            import ray

            try:
                while not ray.wait([ref], timeout=PROGRESS_POLL_SECONDS)[0]:
                    progress.relay()
            finally:
                progress.close()
        return _get([ref])[0]

    def share(self, value: T) -> T:
        import ray

        self.start()
        return ray.put(value)

    def actors(
        self, cls: type, args: Call, *, size: int, num_cpus: float = 1.0, num_gpus: float = 0.0
    ) -> ActorGroup:
        import ray

        self.start()
        remote = ray.remote(cls).options(num_cpus=num_cpus, num_gpus=num_gpus)
        return _RayActors([remote.remote(*args) for _ in range(size)])

    def over_items(
        self,
        items: list[str],
        worker: Any,
        *,
        resources: Any = None,
        worker_kwargs: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        import ray

        self.start()
        dataset = ray.data.from_items(
            [{"item": item} for item in items], override_num_blocks=len(items)
        )
        options: dict[str, Any] = {"batch_size": 1}
        if isinstance(worker, type):
            size = self.pool_size(resources)
            # The pool starts with as many actors as fit now, so the work spreads over the nodes
            # from the start; an autoscaling cluster grows it to its size as nodes join.
            start = max(1, min(size, len(items), self._actors_that_fit(resources)))
            options.update(
                # One part at a time per actor: parts are large, and the first actor up must not
                # queue the parts that the actors still starting (on other nodes) would take.
                compute=ray.data.ActorPoolStrategy(
                    min_size=start, max_size=max(start, size), max_tasks_in_flight_per_actor=1
                ),
                num_cpus=resources.num_cpus,
                fn_constructor_kwargs=worker_kwargs or {},
            )
            if resources.num_gpus:
                options["num_gpus"] = resources.num_gpus
        else:
            options.update(num_cpus=1, fn_kwargs=worker_kwargs or {})
        yield from dataset.map_batches(worker, **options).iter_rows()

    def map_reduce(
        self,
        fn: Callable[..., T],
        calls: Sequence[Call],
        combine: Callable[..., T],
        *,
        fanin: int = 16,
    ) -> T:
        # The partial results stay in the object store, and the last combine runs there too:
        # the driver receives one result, whatever the number of calls. Same tree, same order.
        refs = [self._remote(fn, 1.0).remote(*args) for args in calls]
        remote_combine = self._remote(combine, 1.0)
        if len(refs) <= 1:
            return combine(*_get(refs))
        while len(refs) > 1:
            refs = [remote_combine.remote(*refs[i : i + fanin]) for i in range(0, len(refs), fanin)]
        return _get(refs)[0]

    def totals(self) -> dict[str, float]:
        import ray

        self.start()
        return dict(ray.cluster_resources())

    def nodes(self) -> list[dict[str, float]]:
        import ray

        self.start()
        return [node["Resources"] for node in ray.nodes() if node.get("Alive")]

    def _actors_that_fit(self, resources: Any) -> int:
        return self.pool_size(dataclasses.replace(resources, pool_size=None))

    def _remote(self, fn: Callable[..., Any], num_cpus: float, num_gpus: float = 0.0) -> Any:
        import ray

        self.start()
        return ray.remote(fn).options(num_cpus=num_cpus, num_gpus=num_gpus)


class _RayActors(ActorGroup):
    def __init__(self, handles: list[Any]) -> None:
        self.handles = handles

    def call(self, method: str, calls: Sequence[Call]) -> list[Any]:
        handles = self.handles
        return _get(
            [getattr(handles[i % len(handles)], method).remote(*a) for i, a in enumerate(calls)]
        )

    def close(self) -> None:
        import ray

        for handle in self.handles:
            ray.kill(handle)


def _get(refs: list[Any]) -> list[Any]:
    """ray.get, with a DistselError raised inside a task raised here as itself (one line)."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, DistselError):
            raise exc.cause from None
        raise


def _quiet_ray_data() -> None:
    """Unless verbose: Ray Data's console lines at ERROR and no progress bars or execution
    plans (distsel logs its own progress); DeprecationWarnings from Ray's modules off."""
    if console.is_verbose():
        return
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
    import ray.data  # configures the "ray.data" logger when first imported

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


_current: Executor | None = None


def installed() -> Executor | None:
    """The executor made active with `Executor.active`, if any."""
    return _current


def current() -> Executor:
    """The active executor (`Executor.active`); by default a RayExecutor that joins RAY_ADDRESS
    or starts a local Ray when first used."""
    global _current
    if _current is None:
        _current = RayExecutor()
    return _current


def node_id() -> str:
    """The Ray node this code runs on ("local" outside Ray or under a LocalExecutor)."""
    if "ray" not in sys.modules or isinstance(_current, LocalExecutor):
        return "local"
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def cluster_gpus() -> int:
    """GPUs in the cluster of the current executor, 0 when it has not started."""
    if isinstance(current(), LocalExecutor):
        return 0
    import ray

    return int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")


def use_threads(num_cpus: float) -> int:
    """In a Ray actor, size the process's thread pools (OpenMP, MKL, torch and the Rust
    tokenizers' Rayon pool) to the actor's CPUs, so the threads of a node's actors add up to
    its cores; elsewhere (the driver, a LocalExecutor) leave them. Returns the thread count."""
    threads = max(1, int(num_cpus))
    if "ray" not in sys.modules or isinstance(_current, LocalExecutor):
        return threads
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return threads
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


def is_dataset(value: Any) -> bool:
    """Whether `value` is a Ray Dataset."""
    import ray.data

    return isinstance(value, ray.data.Dataset)


def read_dataset(paths: list[str], filesystem: Any = None, json_lines: bool = False) -> Any:
    """A Ray Dataset of Parquet (or JSON Lines) files; an empty one for no paths."""
    import ray.data

    if not paths:
        return ray.data.from_items([])
    if json_lines:
        return ray.data.read_json(paths, filesystem=filesystem)
    return ray.data.read_parquet(paths, filesystem=filesystem)
