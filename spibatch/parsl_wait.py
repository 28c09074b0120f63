"""Waiting for tasks' results without hanging on a platform that can no longer deliver them.

Parsl does not notice that its HTEX interchange died (killed, out of memory): the workers finish their tasks
and nobody hears, and the driver waited on ``future.result()`` for ever with nothing in its log (an audit:
more than 10 minutes, in HTC and HPC mode alike).  :func:`results` waits in steps of :data:`POLL_S` seconds,
and between them stops with one line when an interchange of the running Parsl has died, or when no worker pool
has been connected to it for :data:`LOST_S` seconds while none of its blocks is queued or still starting its
pool (a pool stopped past Parsl's heartbeat is dropped and, its block still "running" to the provider, never
replaced: the driver waited for ever; a block whose pool never connected -- a container being pulled -- is
waited for), or when its interchange has not answered a question for :data:`ASK_S` seconds (stopped or hung: Parsl's
command channel waits for an answer without a timeout, and so did the driver, for ever), and says once when no
task has ended for :data:`STALL_S` seconds (a pool that is connected but takes no task).  Futures that are not
Parsl's (the in-process executors) are waited for the same way; the checks then find nothing.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import threading
import time

log = logging.getLogger("spibatch")

POLL_S = 5.0
STALL_S = 1800.0
LOST_S = 120.0     # no worker pool connected, none queued: after the heartbeat's drop, twice a pool's start
ASK_S = 120.0      # an interchange that has not answered for this long is stopped or hung
ANSWER_S = 2.0     # how long one poll waits for the interchange's answer (a live one answers in milliseconds)
SILENT_S = 10.0    # at shutdown: a question open this long means Parsl's clean-up would wait for ever
WAITING = {"PENDING", "HELD", "UNKNOWN"}   # a block that may still bring a pool (queued, held, not yet known)


class PlatformLost(RuntimeError):
    """The platform can no longer deliver the results waited for (a stage's failure: the run says how to go on)."""


def results(futures, what: str = "tasks", *, poll_s: float | None = None, stall_s: float | None = None,
            lost_s: float | None = None, ask_s: float | None = None) -> list:
    """``[f.result() for f in futures]``, in order (one future at a time: linear in their number); a task that
    failed raises as soon as it is seen, whichever is waited for; PlatformLost when the interchange of an
    executor that holds one of them died, or when none of its worker pools has been connected for ``lost_s``
    seconds (default :data:`LOST_S`) while none of its blocks is queued, or when its interchange has not answered
    for ``ask_s`` seconds (default :data:`ASK_S`)."""
    futures = list(futures)
    poll_s = POLL_S if poll_s is None else poll_s
    stall_s = STALL_S if stall_s is None else stall_s
    lost_s = LOST_S if lost_s is None else lost_s
    ask_s = ASK_S if ask_s is None else ask_s
    out, last, ended, warned, unmanned = [], time.monotonic(), 0, False, {}
    for future in futures:
        while True:
            try:
                out.append(future.result(timeout=poll_s))
                break
            except concurrent.futures.TimeoutError:
                pass
            now_ended = 0
            for other in futures:       # every poll_s: a failure anywhere is said now, not after the rest
                if other.done():
                    now_ended += 1
                    if not other.cancelled() and other.exception() is not None:
                        other.result()
            if now_ended > ended:
                last, ended, warned = time.monotonic(), now_ended, False
            pending = [f for f in futures if not f.done()]
            dead = dead_interchanges(pending)
            if dead:
                raise PlatformLost(f"Parsl's interchange ({', '.join(dead)}) died while {len(pending)} of "
                                   f"{len(futures)} {what} were running: their results cannot arrive")
            now, alone = time.monotonic(), without_pools(pending)
            silent = sorted((age, label) for label, age in unanswered(pending).items() if age >= ask_s)
            if silent:
                raise PlatformLost(f"Parsl's interchange ({', '.join(label for _, label in silent)}) has not answered "
                                   f"for {silent[-1][0]:.0f} s while {len(pending)} of {len(futures)} {what} wait: "
                                   f"it is stopped or hung, and their results cannot arrive")
            unmanned = {label: unmanned.get(label, now) for label in alone}   # since when, continuously
            gone = sorted(label for label, since in unmanned.items() if now - since >= lost_s)
            if gone:
                raise PlatformLost(f"no Parsl worker pool has been connected to the interchange ({', '.join(gone)}) "
                                   f"for {now - unmanned[gone[0]]:.0f} s while {len(pending)} of {len(futures)} "
                                   f"{what} wait, and none of its blocks is queued: the workers were stopped or lost")
            if not warned and time.monotonic() - last > stall_s:
                log.warning("no %s has ended for %.0f s (%d of %d running): if the workers are gone or stopped, "
                            "Ctrl-C and `spibatch resume` (the finished iterations are kept)", what.rstrip("s"),
                            time.monotonic() - last, len(pending), len(futures))
                warned = True
    return out


def without_pools(futures=()) -> list[str]:
    """The labels of the HTEX executors of the running Parsl that hold one of ``futures``, whose interchange lives,
    to which no worker pool is connected, none of whose blocks is queued (:data:`WAITING`) and none of whose
    running blocks is still starting its pool (never connected) -- what Parsl's own strategy asks of it every
    period ([] without Parsl, or when it cannot be asked)."""
    gone = []
    for label, executor in _executors_of(futures).items():
        if interchange_dead(executor):
            continue
        answer = _asked(executor)
        if answer is None:   # not answered yet (unanswered() says for how long), or it could not be asked
            continue
        managers, ever = answer   # ever: the blocks whose pool has registered
        if managers:
            continue
        try:
            blocks = {block: status.state.name for block, status in list(executor.status_facade.items())}
        except Exception:  # noqa: BLE001 - not an HTEX: nothing to say
            continue
        if set(blocks.values()) & WAITING:
            continue
        if any(state == "RUNNING" and block not in ever for block, state in blocks.items()):
            continue   # a block still starting its pool (a container pulled, imports under load): not lost
        gone.append(label)
    return gone


class _Question:
    """One question to an executor's interchange -- its connected pools and the blocks that ever connected --, asked
    in a daemon thread: Parsl's command channel waits for the answer without a timeout (a stopped interchange never
    gives one), and the thread left waiting there holds nothing the driver needs."""

    def __init__(self, executor):
        self.executor, self.asked, self.answer = executor, time.monotonic(), None
        self.thread = threading.Thread(target=self._ask, name="spibatch-interchange-question", daemon=True)
        self.thread.start()

    def _ask(self) -> None:
        try:
            self.answer = (self.executor.connected_managers(), set(self.executor.connected_blocks()))
        except Exception:  # noqa: BLE001 - not an HTEX, or its command channel broken: no answer to use
            pass


_questions: dict[int, _Question] = {}   # id(executor) -> its open question


def _asked(executor):
    """(connected managers, blocks ever connected) from ``executor``'s interchange, waiting at most :data:`ANSWER_S`;
    None while the question is still open (asked again only once it is answered) or when it could not be asked."""
    question = _question_of(executor)
    if question is None:
        question = _questions[id(executor)] = _Question(executor)
    question.thread.join(ANSWER_S)
    if question.thread.is_alive():
        return None
    del _questions[id(executor)]
    return question.answer


def interchange_dead(executor) -> bool:
    """Whether the HTEX interchange process of ``executor`` has ended."""
    proc = getattr(executor, "interchange_proc", None)
    return proc is not None and proc.poll() is not None


def _question_of(executor) -> _Question | None:
    """The question on record for ``executor`` (answered or not), else None."""
    question = _questions.get(id(executor))
    return question if question is not None and question.executor is executor else None


def _open_question(executor) -> _Question | None:
    """``executor``'s question still waiting for its answer (one answered is forgotten here), else None."""
    question = _question_of(executor)
    if question is None:
        return None
    if not question.thread.is_alive():
        _questions.pop(id(executor), None)
        return None
    return question


def silent(executor) -> bool:
    """Whether a question to ``executor``'s interchange is still unanswered after :data:`SILENT_S` (then Parsl's own
    clean-up, which asks it too, would wait for ever)."""
    question = _open_question(executor)
    return question is not None and time.monotonic() - question.asked >= SILENT_S


def unanswered(futures=()) -> dict[str, float]:
    """{label: seconds} of the executors holding one of ``futures`` whose interchange has an open question that old
    (see :func:`without_pools`, which asks)."""
    now = time.monotonic()
    return {label: now - question.asked for label, executor in _executors_of(futures).items()
            if (question := _open_question(executor)) is not None}


def _executors_of(futures) -> dict:
    """{label: executor} of the running Parsl's executors that hold one of ``futures`` (Parsl's AppFutures name
    theirs; {} without Parsl, or for other futures)."""
    if "parsl" not in sys.modules:
        return {}
    labels = {getattr(f, "task_record", {}).get("executor") for f in futures} - {None}
    if not labels:
        return {}
    import parsl

    try:
        dfk = parsl.dfk()
    except Exception:  # noqa: BLE001 - NoDataFlowKernelError: no Parsl running
        return {}
    return {label: e for label, e in dfk.executors.items() if label in labels}


def dead_interchanges(futures=()) -> list[str]:
    """The labels of the executors of the running Parsl that hold one of ``futures`` and whose interchange process
    has ended ([] without Parsl, or for other futures)."""
    return sorted(label for label, executor in _executors_of(futures).items() if interchange_dead(executor))
