"""The BPF object: ``bpf/voile.c`` compiled with clang, cached by the source's hash.

``make setup`` runs ``python -m voile_agent.datapath.ebpf.build``; the agent finds the object
there (or compiles it itself when clang is on the host). The hash is also the build id the
agent writes into ``voile_config``: pins of another build are replaced, pins of this one are
adopted as they are.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from voile.errors import DatapathError

SOURCE = Path(__file__).with_name("bpf") / "voile.c"


def source_hash() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]


def build_id() -> int:
    return int(source_hash()[:8], 16)


def cache_dir() -> Path:
    base = os.environ.get("VOILE_CACHE") or str(Path.home() / ".cache" / "voile")
    return Path(base) / "bpf"


def object_path() -> Path:
    return cache_dir() / f"voile-{source_hash()}.o"


def _multiarch() -> str:
    machine = platform.machine()
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(
        machine, f"{machine}-linux-gnu"
    )


def ensure_object(explicit: str | None = None) -> Path:
    """The compiled object: ``explicit`` when given, else the cached build of this source
    (compiled now when missing). Raises DatapathError naming what is missing."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise DatapathError(f"BPF object {explicit} does not exist")
        return path
    path = object_path()
    if path.is_file():
        return path
    clang = shutil.which("clang")
    if clang is None:
        raise DatapathError(
            f"no BPF object at {path} and no clang to build it (install clang and libbpf-dev, "
            "run `python -m voile_agent.datapath.ebpf.build`, or give --bpf-object)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    cmd = [
        clang, "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
        f"-I/usr/include/{_multiarch()}", "-c", str(SOURCE), "-o", str(tmp),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise DatapathError(f"clang failed on {SOURCE}: {proc.stderr.strip()[-2000:]}")
    tmp.replace(path)
    return path


def main() -> int:
    try:
        print(ensure_object())
    except DatapathError as exc:
        print(f"ebpf build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
