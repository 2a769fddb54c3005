"""Pure decisions of the operator: observed state in, a decision out. No I/O, no kopf, no clock.

Everything that decides which address, which VNI, which condition, which claim to collect, or
whether to keep leadership lives here so that it can be tested table-driven and by Hypothesis.
"""
