"""The lab: several simulated hosts on one machine (``voile.lab.host``), each running real Open
vSwitch daemons and a real node agent, joined by an underlay bridge in its own namespace."""
