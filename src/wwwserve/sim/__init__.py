"""Simulation: the paper's experiments, duel studies, fault and attack harnesses, run on the
real node code in deterministic virtual time (the networks come from ``wwwserve.testing``)."""
