"""Cut executors: the cut stage of extraction (:func:`cuts3d.pipeline.extract.cut_and_encode`, run by
:func:`cuts3d.pipeline.extract.run_cut_job`) in other processes, while the extracting process goes on with the
model stage (load, ViT, depth) of the next images (``ExtractConfig.cut_workers``).

:func:`cuts3d.pipeline.extract.run_shard` holds the one bounded in-flight loop; an executor only runs jobs:

* ``max_in_flight``: the bound (images handed over and not yet collected);
* ``in_flight``: images handed over and not yet collected;
* ``submit(job)``: hand over one :class:`cuts3d.pipeline.extract.CutJob`;
* ``wait_first()``: block until at least one image is done; its (record, per-stage seconds) pairs, failures
  already turned into failed records (stage ``cuts``), in submission order;
* ``close(abort=False)``: shut down; ``abort`` cancels what was not started and stops what runs.

:class:`ProcessCutExecutor` runs the jobs in a local process pool, :class:`RayCutExecutor` as Ray CPU tasks.
Workers use one thread each (torch and the BLAS/OpenMP pools): K workers on K cores with the default thread
counts each would oversubscribe the cores many times over.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

FAULT_EXIT_ENV = "CUTS3D_FAULT_CUT_WORKER_EXIT"
"""Fault injection for tests: the path of a file holding one image's ``rel``. The first cut worker to get that
image deletes the file and ends its process at once (``os._exit``), as a crash would; later runs are unaffected."""

PARENT_POLL_S = 0.5
"""How often a pool worker checks that the process that started it is still alive."""


class CutWorkerDied(RuntimeError):
    """A cut worker process ended (killed, crashed, out of memory) while images were in flight."""


_thread_limits: Any = None  # kept alive for the worker's lifetime


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def limit_threads() -> None:
    """torch and every BLAS/OpenMP pool of this worker process on one thread, for the process's lifetime (a
    pool worker and a Ray cut actor each own their process).

    threadpoolctl only reaches the libraries loaded when it is called, and scipy loads its own OpenBLAS when
    scipy.linalg is first imported: so the variables are set for any library loaded later, and the cut stage's
    modules are imported before the limit (a BLAS left at its default of one thread per core made two workers
    fight over two cores).
    """
    global _thread_limits
    for name in _THREAD_VARIABLES:
        os.environ[name] = "1"
    import torch
    from threadpoolctl import threadpool_limits

    import cuts3d.cuts.segment  # noqa: F401  (numpy, scipy.linalg, scipy.sparse.linalg, numba: loaded now)

    torch.set_num_threads(1)
    _thread_limits = threadpool_limits(limits=1)


def thread_counts() -> dict[str, int]:
    """Threads of each BLAS/OpenMP library loaded in this process (threadpoolctl's view), after loading the cut
    stage's modules: what a cut worker's arithmetic runs on."""
    from threadpoolctl import threadpool_info

    import cuts3d.cuts.segment  # noqa: F401

    return {f"{i['internal_api']}:{i['filepath']}": int(i["num_threads"]) for i in threadpool_info()}


def fault_hook(rel: str) -> None:
    """See :data:`FAULT_EXIT_ENV` (does nothing unless that variable is set)."""
    path = os.environ.get(FAULT_EXIT_ENV)
    if not path:
        return
    try:
        if Path(path).read_text(encoding="utf-8").strip() != rel:
            return
        os.unlink(path)  # only one process can delete it: the fault fires once
    except OSError:
        return
    os._exit(70)


def init_worker(parent_pid: int) -> None:
    """Initializer of a pool worker: one thread, Ctrl-C left to the parent (which shuts the pool down), and a
    watchdog that ends the worker when its parent is gone (``kill -9`` of the parent: the worker would otherwise
    wait for work forever, as it holds its queue's pipe open itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_threads()
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="cuts3d-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:  # a dead parent's children are re-parented
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _dead_workers(pool: ProcessPoolExecutor, patience_s: float = 1.0) -> str:
    """``cut worker process pid 123 (exit code 70)``: the pool's processes that ended by themselves (not by the
    SIGTERM a broken pool sends the others).

    The pool notices a death when the worker's pipe closes, a moment before its exit status can be read: waits
    up to ``patience_s`` for it.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            processes = list((getattr(pool, "_processes", None) or {}).items())
            ended = [(pid, p.exitcode) for pid, p in processes if p.exitcode is not None]
        except Exception:  # private state of concurrent.futures: only the message depends on it
            return "a cut worker process"
        dead = [(pid, code) for pid, code in ended if code != -signal.SIGTERM]
        if dead or not processes or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    named = [f"pid {pid} ({_exit_text(code)})" for pid, code in (dead or ended)]
    return "cut worker process " + ", ".join(named) if named else "a cut worker process"


class ProcessCutExecutor:
    """Cut jobs in ``workers`` local processes (a ``spawn`` pool: fork after torch has started threads can deadlock).

    A worker that dies breaks the pool: every image in flight gets a failed record (stage ``cuts``, naming the
    dead worker; a rerun retries it), and the next job starts a new pool.

    Args:
        workers: processes (K).
        max_in_flight: the bound of :func:`cuts3d.pipeline.extract.run_shard`; default ``2 * workers`` (one
            image being cut and one waiting per worker, so no worker idles while the next is handed over).
    """

    def __init__(self, workers: int, max_in_flight: int | None = None):
        if workers < 1:
            raise ValueError(f"a process pool needs >= 1 worker, got {workers}")
        self.workers = workers
        self.max_in_flight = max_in_flight or 2 * workers
        self._pool: ProcessPoolExecutor | None = None
        self._pending: dict[Future, tuple[int, dict[str, Any], ProcessPoolExecutor]] = {}
        self._deaths: dict[int, str] = {}  # id(broken pool) -> its dead workers, taken before it is shut down
        self._order = itertools.count()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker, initargs=(os.getpid(),))

    def _drop(self, pool: ProcessPoolExecutor) -> None:
        """Forget a broken pool (its processes are already ended); the next submit starts a new one."""
        if pool is self._pool:
            self._deaths[id(pool)] = _dead_workers(pool)
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, job: Any) -> None:
        from cuts3d.pipeline.extract import run_cut_job

        if self._pool is None:
            self._pool = self._start()
        try:
            future = self._pool.submit(run_cut_job, job)
        except BrokenProcessPool:  # broke since the last collection: start over once
            self._drop(self._pool)
            self._pool = self._start()
            future = self._pool.submit(run_cut_job, job)
        self._pending[future] = (next(self._order), job.result, self._pool)

    def wait_first(self) -> list[tuple[dict[str, Any], dict[str, float]]]:
        from cuts3d.pipeline.extract import _fail

        done, _ = wait(list(self._pending), return_when=FIRST_COMPLETED)
        out = []
        for future in sorted(done, key=lambda f: self._pending[f][0]):
            _, result, pool = self._pending.pop(future)
            try:
                out.append(future.result())
            except BrokenProcessPool:
                self._drop(pool)
                err = CutWorkerDied(f"{self._deaths.get(id(pool)) or _dead_workers(pool)} died while this image was "
                                    "in flight (killed, crashed or out of memory); the worker pool was restarted")
                out.append((_fail(result, "cuts", err), {}))
            except Exception as err:  # e.g. the job or its result could not be pickled
                out.append((_fail(result, "cuts", err), {}))
        return out

    def close(self, abort: bool = False) -> None:
        """Shut the pool down and wait for its processes; ``abort``: cancel queued jobs and stop running ones."""
        pool, self._pool = self._pool, None
        pending, self._pending = self._pending, {}
        if pool is None:
            return
        if abort:
            for future in pending:
                future.cancel()
            stop = getattr(pool, "terminate_workers", None)  # Python >= 3.14
            try:
                if stop is not None:
                    stop()
                else:
                    for process in list((getattr(pool, "_processes", None) or {}).values()):
                        process.terminate()
            except (OSError, ValueError) as err:  # a process already gone or closed
                warnings.warn(f"stopping the cut workers: {err}; waiting for the jobs they run instead",
                              RuntimeWarning, stacklevel=2)
        pool.shutdown(wait=True, cancel_futures=True)


class RayCutExecutor:
    """Cut jobs on ``workers`` Ray actors (``num_cpus=1`` each), started once per shard task.

    Actors rather than tasks: a Ray task may land on a fresh worker process (seconds to start and import torch,
    and Ray trims idle workers), while an actor keeps its process and imports for the whole shard. Each job goes
    to the actor with the fewest jobs queued, at most ``max_in_flight`` in all (default ``2 * workers``: one
    being cut and one queued per actor).

    An actor that dies (killed, crashed, out of memory) fails the images queued on it (stage ``cuts``, naming
    it; a rerun retries them) and is replaced; a job that raises fails its image.
    """

    def __init__(self, workers: int, max_in_flight: int | None = None):
        import ray

        from cuts3d.pipeline.extract import run_cut_job

        if workers < 1:
            raise ValueError(f"Ray cut workers: need >= 1, got {workers}")

        @ray.remote(num_cpus=1, max_restarts=0)
        class CutWorker:
            def __init__(self) -> None:
                limit_threads()

            def run(self, job: Any) -> Any:
                return run_cut_job(job)

        self._actor_class = CutWorker
        self.workers = workers
        self.max_in_flight = max_in_flight or 2 * workers
        self._actors = [CutWorker.remote() for _ in range(workers)]
        self._queued = {id(a): 0 for a in self._actors}
        self._pending: dict[Any, tuple[int, dict[str, Any], Any]] = {}
        self._order = itertools.count()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def submit(self, job: Any) -> None:
        actor = min(self._actors, key=lambda a: self._queued[id(a)])
        self._queued[id(actor)] += 1
        self._pending[actor.run.remote(job)] = (next(self._order), job.result, actor)

    def _replace(self, actor: Any) -> None:
        if actor in self._actors:
            self._actors[self._actors.index(actor)] = fresh = self._actor_class.remote()
            self._queued[id(fresh)] = 0

    def wait_first(self) -> list[tuple[dict[str, Any], dict[str, float]]]:
        import ray
        from ray.exceptions import RayActorError

        from cuts3d.pipeline.extract import _fail

        ready, _ = ray.wait(list(self._pending), num_returns=1)
        out = []
        for ref in sorted(ready, key=lambda r: self._pending[r][0]):
            _, result, actor = self._pending.pop(ref)
            self._queued[id(actor)] = self._queued.get(id(actor), 1) - 1
            try:
                out.append(ray.get(ref))
            except RayActorError as err:  # the actor's process died: every job queued on it fails the same way
                self._replace(actor)
                died = CutWorkerDied(f"Ray cut worker (actor) died while this image was in flight (killed, crashed or "
                                     f"out of memory: {str(err).splitlines()[0]}); the worker was replaced")
                out.append((_fail(result, "cuts", died), {}))
            except Exception as err:  # RayTaskError: the job raised
                cause = getattr(err, "cause", None)
                out.append((_fail(result, "cuts", cause if isinstance(cause, Exception) else err), {}))
        return out

    def close(self, abort: bool = False) -> None:
        import ray

        pending, self._pending = self._pending, {}
        if abort:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:  # already finished, or its actor is gone
                    pass
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
