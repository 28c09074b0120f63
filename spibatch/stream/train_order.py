"""Bogus train IDs: which ones the follower refuses, and when a run of refused ones shows the bogus one was taken.

Trains are taken in increasing train-ID order (:mod:`spibatch.stream.follower`).  A train ID far above the last one
taken (:data:`MAX_TRAIN_JUMP`) or outside 0..:data:`MAX_TRAIN_ID` is bogus and refused -- unless :data:`JUMP_ACCEPT`
such trains come in a row, in order: then the last train taken was the bogus one (a first train of ID 1, then the
facility's real IDs).  The same holds below: :data:`JUMP_ACCEPT` trains in a row, in order, below the last train
taken but above the one taken before it (so never taken) show that the last one was bogus (a bit flip: 1005 + 2^26
after 1004; a first train of 5e11), and they are taken from then on.  A source that starts over (a restarted
bridge) sends trains that were taken: those stay repeats.
"""

from __future__ import annotations

import logging

log = logging.getLogger("spibatch")
MAX_TRAIN_JUMP = 10 ** 8   # train IDs (10 a second at EuXFEL): 115 days; a bigger step up is a bogus ID
MAX_TRAIN_ID = 2 ** 40     # 1.1e12 trains: 3 500 years at 10 a second; a bigger (or negative) ID is bogus, even the first
JUMP_ACCEPT = 20           # this many trains in a row, in order, all a jump above the last train taken (or all below
                           # it and above the train taken before it): the last one taken was bogus


class TrainGuard:
    """The runs of refused trains (jumps above the last train taken; trains below it never taken), in order."""

    def __init__(self):
        self._jumped: list[int] = []
        self._back: list[int] = []

    def reset(self) -> None:
        """A train was taken in order: the runs start again."""
        self._jumped.clear()
        self._back.clear()

    @staticmethod
    def jumps(tid: int, last_train: int) -> bool:
        """A train ID more than MAX_TRAIN_JUMP above ``last_train``, or outside 0..MAX_TRAIN_ID (which guards the
        first train too): a bogus one, which taken would make every real train after it look repeated (for good:
        the last train is committed)."""
        if tid < 0 or tid > MAX_TRAIN_ID:
            return True
        return last_train >= 0 and tid - last_train > MAX_TRAIN_JUMP

    def jumped_for_good(self, tid: int, last_train: int) -> bool:
        """Whether ``tid`` (a jump) makes :data:`JUMP_ACCEPT` jumps in a row, each above the one before by at most
        MAX_TRAIN_JUMP: then the train taken last was the bogus one, and the jumps are taken from here on (with
        one warning); else the jump is refused."""
        if not 0 <= tid <= MAX_TRAIN_ID or not _extend(self._jumped, tid):
            return False
        log.warning("follow: %d trains in a row jumped from train %d to %d..%d: taking them from now on (the "
                    "train taken before them was bogus, or the train count was reset)", len(self._jumped),
                    last_train, self._jumped[0], tid)
        self._jumped.clear()
        return True

    def went_back_for_good(self, tid: int, last_train: int, before: int) -> bool:
        """Whether ``tid`` -- below ``last_train``, above ``before`` (the train taken before it), so never taken --
        makes :data:`JUMP_ACCEPT` such trains in a row, in order: then ``last_train`` was bogus, and these are taken
        from here on (with one warning)."""
        if not _extend(self._back, tid):
            return False
        log.warning("follow: %d trains in a row came below the last train taken (%d), %s and in order (%d..%d): "
                    "train %d was bogus; taking them from now on", len(self._back), last_train,
                    f"after train {before}" if before >= 0 else "which was the first", self._back[0], tid, last_train)
        self._back.clear()
        return True


def _extend(run: list[int], tid: int) -> bool:
    """Add ``tid`` to ``run`` (trains in a row, each above the one before by at most MAX_TRAIN_JUMP; one out of that
    order starts the run again); whether it is :data:`JUMP_ACCEPT` long now."""
    if run and not 0 < tid - run[-1] <= MAX_TRAIN_JUMP:
        run.clear()
    run.append(tid)
    return len(run) >= JUMP_ACCEPT
