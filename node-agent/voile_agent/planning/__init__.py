"""Pure planning: API objects in, the backend-neutral ``HostPlan`` and status decisions out.

Nothing here performs I/O or imports an I/O library or a datapath backend: every backend renders
the same plan, and every rule can be tested without a datapath.
"""
