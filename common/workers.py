"""Several runs of a reproduction at once, each in its own process (``workers=N``).

Small models use a CPU's threads poorly: on 2 cores (Intel Xeon, Mamba's cpu preset) a run at 1 thread
beside another took 1.5x (Mamba induction heads) to 1.9x (the small GPT) its time alone at 2 threads, so
two runs side by side finished the whole preset only 1.16x sooner (34 min 52 s, against 40 min 26 s one
after the other). ``run_jobs`` hands the jobs to ``workers`` spawned processes, each with ``threads``
torch threads; a job waits for the jobs it names in ``Job.after`` (a run that starts from
another run's final weights). A run's numbers depend on its seed and its thread count, never on which
worker trained it or when.

Stopping: the first failed job stops the handing out; the other workers get SIGTERM (which a worker turns
into KeyboardInterrupt: the run in progress ends KILLED in MLflow and keeps its last checkpoint, as a
SIGTERM does to ``common.reproduce``) and the failure is raised in the parent: a ``PaperzooError`` with
its message and exit code, anything else as a ``RuntimeError`` with the worker's traceback. Ctrl-C and
a SIGTERM to the parent stop the workers the same way; a worker whose parent dies gets SIGTERM too
(Linux). Workers print plain progress lines, not tqdm bars, which would overwrite each other.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.errors import PaperzooError


@dataclass
class Job:
    name: str  # in the "[i/N] <name> (worker w)" line printed when it starts
    args: tuple  # target(*args), in a worker; the result must pickle
    after: set[int] = field(default_factory=set)  # indices of the jobs that must finish first


def _stop_on_sigterm(signum, frame):
    # once: a multi-threaded parent's death can deliver the death signal more than once (once per thread the
    # worker is handed to), and a second KeyboardInterrupt would cut the run's KILLED status short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (prctl PR_SET_PDEATHSIG), even by SIGKILL."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not Linux: the worker outlives a killed parent
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _worker(target: Callable, threads: int, inbox, outbox, index: int) -> None:
    import torch

    from common.progress import Progress

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    _die_with_parent()
    torch.set_num_threads(threads)
    Progress.bars = False
    try:
        while (item := inbox.get()) is not None:
            number, args = item
            try:
                outbox.put((index, number, "ok", target(*args)))
            except PaperzooError as err:
                outbox.put((index, number, "error", (str(err), err.exit_code)))
            except Exception:
                outbox.put((index, number, "crash", traceback.format_exc()))
    except KeyboardInterrupt:  # SIGTERM from the parent, busy or idle: the run in progress has ended KILLED
        return


def run_jobs(target: Callable, jobs: list[Job], workers: int, threads: int) -> list[Any]:
    """``target(*job.args)`` for every job, at most ``workers`` at a time; the results in job order."""
    context = mp.get_context("spawn")  # not fork: a forked OpenMP runtime can hang
    outbox = context.Queue()
    inboxes = [context.SimpleQueue() for _ in range(min(workers, len(jobs)))]
    procs = [
        context.Process(target=_worker, args=(target, threads, inbox, outbox, i), daemon=True)
        for i, inbox in enumerate(inboxes)
    ]
    for proc in procs:
        proc.start()
    results: dict[int, Any] = {}
    busy: dict[int, int] = {}  # worker -> job number
    waiting = list(range(len(jobs)))
    try:
        while waiting or busy:
            for worker in [w for w in range(len(procs)) if w not in busy]:
                ready = next((n for n in waiting if jobs[n].after <= results.keys()), None)
                if ready is None:
                    break
                waiting.remove(ready)
                busy[worker] = ready
                print(f"[{ready + 1}/{len(jobs)}] {jobs[ready].name} (worker {worker})", flush=True)
                inboxes[worker].put((ready, jobs[ready].args))
            if not busy:
                raise PaperzooError(f"jobs {', '.join(jobs[n].name for n in waiting)} wait for each other")
            try:
                worker, number, status, value = outbox.get(timeout=1.0)
            except queue.Empty:
                for worker, number in busy.items():
                    if not procs[worker].is_alive():
                        raise PaperzooError(
                            f"the worker training {jobs[number].name} died (exit code "
                            f"{procs[worker].exitcode}); rerun with resume=true to continue"
                        ) from None
                continue
            del busy[worker]
            if status == "error":
                message, code = value
                err = PaperzooError(message)
                err.exit_code = code
                raise err
            if status == "crash":
                raise RuntimeError(f"{jobs[number].name} failed in worker {worker}:\n{value}")
            results[number] = value
        for inbox in inboxes:
            inbox.put(None)
        for proc in procs:
            proc.join()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the run in progress ends KILLED, its checkpoint kept
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():  # stuck past its KILLED status: no orphan left behind
                proc.kill()
                proc.join()
    return [results[n] for n in range(len(jobs))]
