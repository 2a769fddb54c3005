"""Functional tests: as root, against real Open vSwitch daemons in real network namespaces."""
