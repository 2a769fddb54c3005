"""Container images for the lab and the runtime tests, made from Debian's busybox-static without
an image registry, once per busybox-static version and recipe, in
``$VOILE_CACHE/images/busybox-<version>-r<recipe>/``:

``rootfs.tar``
    busybox and a symbolic link for each of its applets (sh, ip, ping, nc, sleep, cat, ifconfig,
    wget, ...), plus /etc/passwd and /etc/group: ``podman import rootfs.tar localhost/busybox:lab``
    or ``docker import rootfs.tar localhost/busybox:lab``.
``busybox.docker.tar``
    the same file system as a docker-archive (the ``docker save`` format: manifest.json, the image
    config, the layer) tagged ``localhost/busybox:lab``: ``ctr -n k8s.io images import``,
    ``docker load`` or ``podman load``.
``pause.docker.tar``
    ``localhost/pause:lab``, a Kubernetes sandbox image (containerd's ``sandbox_image``): the same
    layer, whose entrypoint is a shell that sleeps until SIGTERM or SIGINT and then exits 0.

Every tar is reproducible (fixed owners, modes and times), so a busybox-static version gives the
same image IDs on every machine. ``python -m voile.lab.images`` builds what is missing (``make
setup`` runs it) and prints the directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from voile.errors import LabError

BUSYBOX = Path("/bin/busybox")
BUSYBOX_PACKAGE = "busybox-static"
# Bump when the recipe changes what is built, so caches made by an older recipe are not reused.
RECIPE = 1
BUSYBOX_IMAGE = "localhost/busybox:lab"
PAUSE_IMAGE = "localhost/pause:lab"
# PID 1 of a sandbox: the kernel delivers to a namespace's init only the signals it handles, so
# the trap is what makes SIGTERM/SIGINT end it; `wait` returns as soon as a trapped signal arrives.
PAUSE_ENTRYPOINT = ("/bin/sh", "-c", "trap 'exit 0' TERM INT; sleep 2147483647 & wait")
PATH_ENV = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
EPOCH = "1970-01-01T00:00:00Z"
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LabImages:
    """The built files of one busybox-static version."""

    directory: Path
    busybox_version: str
    rootfs: Path
    busybox_archive: Path
    pause_archive: Path


def cache_dir() -> Path:
    return Path(os.environ.get("VOILE_CACHE", Path.home() / ".cache" / "voile")) / "images"


def busybox_version() -> str:
    """The installed busybox-static package version (the cache key), or a clear error."""
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status} ${Version}", BUSYBOX_PACKAGE],
        capture_output=True,
        text=True,
        check=False,
    )
    status, _, version = proc.stdout.rpartition(" ")
    if proc.returncode != 0 or not status.endswith("installed") or not BUSYBOX.is_file():
        raise LabError(f"{BUSYBOX_PACKAGE} is not installed: run `make setup`")
    return version


def _paths(directory: Path, version: str) -> LabImages:
    return LabImages(
        directory=directory,
        busybox_version=version,
        rootfs=directory / "rootfs.tar",
        busybox_archive=directory / "busybox.docker.tar",
        pause_archive=directory / "pause.docker.tar",
    )


def ensure(cache: Path | None = None) -> tuple[LabImages, bool]:
    """The images for the installed busybox-static, built when missing; whether they were built.
    Idempotent and safe to run concurrently: each build happens in a private directory that is
    renamed into place, and the loser of a race discards its copy."""
    version = busybox_version()
    root = cache or cache_dir()
    final = root / f"busybox-{version.replace(':', '_')}-r{RECIPE}"
    if final.is_dir():
        return _paths(final, version), False
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    work.chmod(0o755)
    try:
        build(_paths(work, version))
        try:
            work.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _paths(final, version), True


def build(images: LabImages) -> None:
    """Write the three tars into ``images.directory`` (which exists)."""
    layer = rootfs_tar()
    images.rootfs.write_bytes(layer)
    comment = f"voile.lab.images recipe {RECIPE}: {BUSYBOX_PACKAGE} {images.busybox_version}"
    write_docker_archive(
        images.busybox_archive, BUSYBOX_IMAGE, layer, {"Env": [PATH_ENV], "Cmd": ["sh"]}, comment
    )
    write_docker_archive(
        images.pause_archive,
        PAUSE_IMAGE,
        layer,
        {"Env": [PATH_ENV], "Entrypoint": list(PAUSE_ENTRYPOINT)},
        comment,
    )


def _applets() -> list[str]:
    """Where each applet belongs, e.g. ``bin/sh``, ``sbin/ip``, ``usr/bin/wget``."""
    out = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True
    ).stdout
    return sorted({line.strip() for line in out.splitlines() if "/" in line} - {"bin/busybox"})


def rootfs_tar() -> bytes:
    """The root file system as an uncompressed tar: busybox, one link per applet, /etc basics."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", target: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.linkname = target
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d in ("bin", "dev", "etc", "proc", "root", "run", "sbin", "sys", "tmp", "usr",
                  "usr/bin", "usr/sbin", "var", "var/tmp"):  # fmt: skip
            mode = {"root": 0o700, "tmp": 0o1777, "var/tmp": 0o1777}.get(d, 0o755)
            add(d, tarfile.DIRTYPE, mode)
        add("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in _applets():
            add(applet, tarfile.SYMTYPE, 0o777, target="/bin/busybox")
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n"
        add("etc/passwd", tarfile.REGTYPE, 0o644, passwd)
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def write_docker_archive(
    path: Path, repo_tag: str, layer: bytes, config: dict[str, object], comment: str
) -> None:
    """A one-layer image in the ``docker save`` format: ``manifest.json`` names the config (whose
    file name is its sha256, the image ID) and the layer (``<sha256>/layer.tar``); the config's
    ``rootfs.diff_ids`` is the layer's sha256."""
    layer_id = hashlib.sha256(layer).hexdigest()
    image_config = {
        "architecture": _GO_ARCH.get(platform.machine(), platform.machine()),
        "os": "linux",
        "created": EPOCH,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        "history": [{"created": EPOCH, "created_by": comment}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [
        {"Config": config_name, "RepoTags": [repo_tag], "Layers": [f"{layer_id}/layer.tar"]}
    ]
    members = [
        (f"{layer_id}/", b""),
        (f"{layer_id}/layer.tar", layer),
        (config_name, config_bytes),
        ("manifest.json", json.dumps(manifest, separators=(",", ":")).encode()),
    ]
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime, info.uname, info.gname = 0, "root", "root"
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
    tmp.rename(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voile.lab.images", description=__doc__)
    parser.add_argument("--cache", type=Path, help="default $VOILE_CACHE/images")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        images, built = ensure(args.cache)
    except LabError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    how = f"built in {time.monotonic() - start:.1f} s" if built else "cached"
    print(f"images: busybox-static {images.busybox_version}: {how} at {images.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
