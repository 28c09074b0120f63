"""Stands in for sqlalchemy on the path of Parsl's own processes (see spibatch.parsl_lean)."""
from spibatch.parsl_lean import stand_in

stand_in(__name__)
