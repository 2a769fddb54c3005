"""Pure planning: observed state in, desired ports and OpenFlow flows (and their diffs) out.

Nothing here performs I/O or imports an I/O library, so a kernel-datapath backend could apply the
same plan later and every rule can be tested without a datapath.
"""
