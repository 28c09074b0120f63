"""The live monitor (a read-only web page for a running or finished run) and the static report.html.

``spibatch monitor PATH`` serves :mod:`spibatch.monitor.server`; every run writes
``report.html`` with :func:`spibatch.monitor.report.write_report`.  Heavy pieces
(starlette, uvicorn, matplotlib) are imported inside the functions that need them.
"""
