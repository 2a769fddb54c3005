"""The few bpf(2) commands the agent needs, through ctypes: open a pinned map or program, read
its id, and look up, update, delete and iterate map entries.

Why ctypes and not ``bpftool map update``: the agent converges every entry of every map on
each pass (drift repair reads all of them); one syscall per entry costs microseconds, one
bpftool process per entry milliseconds. Loading programs (ELF relocation, BTF, map creation)
stays with ``bpftool prog loadall``, which libbpf does right once per host.

Blocking; the backend runs it with ``asyncio.to_thread``. Errors leave as ``DatapathError``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Iterator

from voile.errors import DatapathError

_SYSCALL = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351}
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ANY = 0

BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _Attr(ctypes.Structure):
    _fields_ = [("raw", ctypes.c_uint8 * 128)]


def _bpf(cmd: int, attr: bytes) -> int:
    number = _SYSCALL.get(platform.machine())
    if number is None:
        raise DatapathError(f"bpf(2): unknown syscall number on {platform.machine()}")
    buf = _Attr()
    ctypes.memmove(buf.raw, attr, len(attr))
    ret = _libc.syscall(number, cmd, ctypes.byref(buf), ctypes.sizeof(buf))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def _ptr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def obj_get(path: str) -> int:
    """A file descriptor for a pinned object (FileNotFoundError when it is not pinned)."""
    name = ctypes.create_string_buffer(path.encode())
    attr = _ptr(name).to_bytes(8, "little") + (0).to_bytes(8, "little")
    try:
        return _bpf(BPF_OBJ_GET, attr)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise FileNotFoundError(path) from exc
        raise DatapathError(f"bpf(BPF_OBJ_GET {path}): {exc.strerror}") from exc


def _info(fd: int, size: int) -> bytes:
    info = ctypes.create_string_buffer(size)
    attr = fd.to_bytes(4, "little") + size.to_bytes(4, "little") + _ptr(info).to_bytes(8, "little")
    try:
        _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    except OSError as exc:
        raise DatapathError(f"bpf(BPF_OBJ_GET_INFO_BY_FD): {exc.strerror}") from exc
    return info.raw


def pinned_prog_id(path: str) -> int | None:
    """The id of a pinned program, None when nothing is pinned there."""
    try:
        fd = obj_get(path)
    except FileNotFoundError:
        return None
    try:
        return int.from_bytes(_info(fd, 256)[4:8], "little")
    finally:
        os.close(fd)


def possible_cpus() -> int:
    """How many CPUs a per-CPU map has a slot for (/sys/devices/system/cpu/possible)."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class Map:
    """One pinned map, opened once (its fd keeps it alive while open)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = obj_get(path)
        info = _info(self.fd, 128)
        self.type = int.from_bytes(info[0:4], "little")
        self.id = int.from_bytes(info[4:8], "little")
        self.key_size = int.from_bytes(info[8:12], "little")
        self.value_size = int.from_bytes(info[12:16], "little")
        self.max_entries = int.from_bytes(info[16:20], "little")
        percpu = self.type in (BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY)
        self.cpus = possible_cpus() if percpu else 1
        self._slot = (self.value_size + 7) // 8 * 8 if percpu else self.value_size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _elem(self, cmd: int, key: bytes, value: int = 0, flags: int = 0) -> int:
        k = ctypes.create_string_buffer(key, self.key_size)
        attr = (
            self.fd.to_bytes(4, "little")
            + b"\0" * 4
            + _ptr(k).to_bytes(8, "little")
            + value.to_bytes(8, "little")
            + flags.to_bytes(8, "little")
        )
        return _bpf(cmd, attr)

    def lookup(self, key: bytes) -> bytes | None:
        """The value (for a per-CPU map: every CPU's slot, concatenated), None when absent."""
        out = ctypes.create_string_buffer(self._slot * self.cpus)
        try:
            self._elem(BPF_MAP_LOOKUP_ELEM, key, _ptr(out))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise DatapathError(f"lookup in {self.path}: {exc.strerror}") from exc
        return out.raw

    def update(self, key: bytes, value: bytes) -> None:
        v = ctypes.create_string_buffer(value, self._slot * self.cpus)
        try:
            self._elem(BPF_MAP_UPDATE_ELEM, key, _ptr(v), BPF_ANY)
        except OSError as exc:
            raise DatapathError(f"update of {self.path}: {exc.strerror}") from exc

    def delete(self, key: bytes) -> bool:
        """Idempotent: False when the key was not there."""
        try:
            self._elem(BPF_MAP_DELETE_ELEM, key)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise DatapathError(f"delete in {self.path}: {exc.strerror}") from exc
        return True

    def keys(self) -> Iterator[bytes]:
        nxt = ctypes.create_string_buffer(self.key_size)
        key: bytes | None = None
        while True:
            k = ctypes.create_string_buffer(key or b"", self.key_size)
            attr = (
                self.fd.to_bytes(4, "little")
                + b"\0" * 4
                + (_ptr(k) if key is not None else 0).to_bytes(8, "little")
                + _ptr(nxt).to_bytes(8, "little")
            )
            try:
                _bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return
                raise DatapathError(f"iterating {self.path}: {exc.strerror}") from exc
            key = nxt.raw[: self.key_size]
            yield key

    def items(self) -> dict[bytes, bytes]:
        """Every entry; an entry deleted while iterating is left out. Raises DatapathError when
        the map cannot be read (never a partial view)."""
        result = {}
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:
                result[key] = value
        return result

    def per_cpu_sum(self, value: bytes, fields: int) -> list[int]:
        """A per-CPU value of ``fields`` u64 counters, summed over the CPUs."""
        totals = [0] * fields
        for cpu in range(self.cpus):
            slot = value[cpu * self._slot : cpu * self._slot + 8 * fields]
            for i in range(fields):
                totals[i] += int.from_bytes(slot[8 * i : 8 * i + 8], "little")
        return totals
