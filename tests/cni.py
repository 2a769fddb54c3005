"""Calling Voile's CNI plugin exactly as a runtime does (CNI spec 1.1, "Protocol parameters"):
the verb and the attachment in the environment, the network configuration on stdin, the result
or the error object on stdout, the exit code. The runtime's part (libcni) is what is written
here; the plugin is the real static binary and talks to a real agent."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Reply:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.stdout)
        return result

    @property
    def code(self) -> int | None:
        """The error object's code (None on success)."""
        return None if self.rc == 0 else int(self.json["code"])

    def __str__(self) -> str:
        return f"rc={self.rc} stdout={self.stdout.strip()} stderr={self.stderr.strip()[-400:]}"


def invoke(
    plugin: Path,
    command: str,
    conf: dict[str, Any] | str | bytes | None,
    *,
    container_id: str | None = None,
    netns: str | None = None,
    ifname: str | None = "eth0",
    args: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Reply:
    """Run the plugin once. ``conf`` is the plugin's configuration (a dict, or raw stdin);
    ``None`` for an environment variable leaves it out, as a broken runtime would."""
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command}
    environ["CNI_PATH"] = str(plugin.parent)
    for key, value in (
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_ARGS", args),
    ):
        if value is not None:
            environ[key] = value
    environ.update(env or {})
    if isinstance(conf, dict):
        stdin = json.dumps(conf).encode()
    elif isinstance(conf, str):
        stdin = conf.encode()
    else:
        stdin = conf or b""
    proc = subprocess.run(
        [str(plugin)], input=stdin, env=environ, capture_output=True, timeout=timeout, check=False
    )
    return Reply(rc=proc.returncode, stdout=proc.stdout.decode(), stderr=proc.stderr.decode())


def runtime_conf(
    plugin_conf: dict[str, Any],
    *,
    name: str,
    cni_version: str = "1.0.0",
    prev_result: dict[str, Any] | None = None,
    runtime_config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The stdin a runtime builds from a conflist entry: the list's name and cniVersion added,
    runtimeConfig for declared capabilities, prevResult for CHECK and DEL."""
    conf = {**plugin_conf, "cniVersion": cni_version, "name": name}
    if prev_result is not None:
        conf["prevResult"] = prev_result
    if runtime_config is not None:
        conf["runtimeConfig"] = runtime_config
    conf.update(extra or {})
    return conf
