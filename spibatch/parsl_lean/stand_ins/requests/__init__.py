"""Stands in for requests on the path of Parsl's own processes until Parsl has loaded (see spibatch.parsl_lean.deferred)."""
from spibatch.parsl_lean.deferred import defer

defer(__name__)
