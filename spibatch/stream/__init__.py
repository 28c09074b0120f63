"""Following a live source: EuXFEL run folders being written, the Karabo bridge, a folder of CXI files.

Sources (:mod:`.euxfel`, :mod:`.bridge`, :mod:`.cxifolder`; :func:`.sources.open_source` by kind) yield
blocks of whole trains; the :class:`~spibatch.stream.follower.Follower` turns them into photons
(:mod:`.kernel`), keeps the hits (:mod:`.hits`) and commits them in chunks (:mod:`.store`) that EMC polls
(:mod:`.shards`); :mod:`.geometry` makes the detector from EXtra-geom; :mod:`.replay` plays a data set as
a live source (:mod:`.replay_writers`).  ``python -m spibatch.stream follow|replay`` runs either as a
process.  extra-data, extra-geom and karabo-bridge (the ``[stream]`` extra) are imported inside the
functions that need them, so ``import spibatch.stream`` stays light.
"""
