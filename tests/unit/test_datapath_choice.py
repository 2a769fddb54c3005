"""``--datapath auto``: Open vSwitch where it forwards in the kernel or its userspace datapath
was asked for, else eBPF; an explicit choice is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from voile_agent import main


def choose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *argv: str, module: bool) -> str:
    marker = tmp_path / ("openvswitch" if module else "absent")
    if module:
        marker.mkdir(exist_ok=True)
    monkeypatch.setattr(main, "OVS_MODULE", marker)
    args = main.build_parser().parse_args(["cleanup", *argv])
    return main.choose_backend(args)


def test_auto_is_ebpf_without_the_ovs_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VOILE_DATAPATH", raising=False)
    assert choose(tmp_path, monkeypatch, module=False) == "ebpf"
    assert choose(tmp_path, monkeypatch, module=True) == "ovs"
    # The userspace datapath asked for (the chart's datapathType=netdev): OVS, module or not.
    assert choose(tmp_path, monkeypatch, "--datapath-type", "netdev", module=False) == "ovs"
    assert choose(tmp_path, monkeypatch, "--datapath", "ebpf", module=True) == "ebpf"
    assert choose(tmp_path, monkeypatch, "--datapath", "ovs", module=False) == "ovs"
