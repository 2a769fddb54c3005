"""Datapath backends behind one interface (``base.Datapath``): ``ovs``, ``ebpf``, ``null``.

The controller imports only ``base``; ``main`` chooses and builds a backend; backends never import
each other (import-linter contracts in .importlinter)."""
