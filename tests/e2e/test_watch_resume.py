"""The agent's informer resumes its watch from the last resourceVersion after a connection
failure and lists only after a 410 Gone, as counted by the API server itself.

Real: etcd + kube-apiserver (a control plane of this module's own, so that its request counters
and restarts concern this test alone), the agent's ``Informer`` and ``voile.kube`` client. The
connection failure is made by a TCP relay on loopback between the two, which the test cuts (every
connection reset, the port refusing) and opens again: what a load balancer restart or a network
blip does to an agent while the API server itself stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from voile import kube
from voile.controlplane import ControlPlane
from voile_agent.controller.informer import Informer, Obj

NAMESPACE = "watch-resume"
CONFIGMAPS = kube.path("", "v1", "configmaps", namespace=NAMESPACE)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("watch-resume-plane"))
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()
    assert not Path(plane.directory, "etcd-data").exists()


class Relay:
    """A TCP relay on 127.0.0.1 to the API server's port, which ``cut`` breaks."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening (connections are refused) and reset every open connection."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers.difference_update((writer, up_writer))


def _requests(metrics: str, verb: str) -> int:
    """The API server's own count of ``verb`` requests for configmaps."""
    total = 0
    for line in metrics.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        if f'verb="{verb}"' in line and 'resource="configmaps"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def _counts(client: kube.KubeClient) -> tuple[int, int]:
    text = await client.get_text("/metrics")
    return _requests(text, "LIST"), _requests(text, "WATCH")


def _as_is(obj: Obj) -> Obj:
    """A ConfigMap needs no model: the cache holds it as the API returned it."""
    return obj


async def _seen(informer: Informer[Obj], name: str, *, timeout: float) -> None:
    async def present() -> bool:
        return f"{NAMESPACE}/{name}" in informer.cache.objects

    await kube.wait_for(present, timeout=timeout, interval=0.1, what=f"{name} in the informer")


async def _resume_then_relist(plane: ControlPlane) -> None:
    async with kube.KubeClient.from_config(str(plane.kubeconfig)) as direct:
        with contextlib.suppress(kube.Conflict):
            await direct.create(
                kube.path("", "v1", "namespaces"), {"metadata": {"name": NAMESPACE}}
            )
        relay = Relay(int(direct.server.rsplit(":", 1)[1]))
        await relay.open()
        through = kube.KubeClient.from_config(str(plane.kubeconfig))
        through.server = f"https://127.0.0.1:{relay.port}"
        informer: Informer[Obj] = Informer(
            through, CONFIGMAPS, parse=_as_is, on_change=lambda: None, name="test"
        )
        informer.start()
        try:
            await asyncio.wait_for(informer.synced.wait(), 30)
            await direct.create(CONFIGMAPS, {"metadata": {"name": "before"}})
            await _seen(informer, "before", timeout=30)
            lists, watches = await _counts(direct)

            # The connection fails while the server lives on: resume, no list.
            await relay.cut()
            await direct.create(CONFIGMAPS, {"metadata": {"name": "during-cut"}})
            await asyncio.sleep(2)  # a resume or two is refused meanwhile
            await relay.open()
            await _seen(informer, "during-cut", timeout=30)
            await direct.create(CONFIGMAPS, {"metadata": {"name": "after-cut"}})
            await _seen(informer, "after-cut", timeout=30)
            lists_after, watches_after = await _counts(direct)
            print(
                f"cut: informer lists {informer.lists} resumes {informer.resumes}; "
                f"API server LIST +{lists_after - lists} WATCH +{watches_after - watches}"
            )
            assert informer.lists == 1
            assert informer.resumes >= 1
            assert lists_after == lists, "the informer listed again after a connection failure"
            assert watches_after > watches, "no watch was opened again"

            # A restarted API server's watch cache starts at etcd's current revision. Once
            # something else has moved that revision past the informer's resourceVersion, the
            # old one is Gone (410) there and the informer must list, once.
            await relay.cut()
            await direct.create(
                kube.path("", "v1", "configmaps", namespace="default"),
                {"metadata": {"name": "elsewhere"}},
            )
            await asyncio.to_thread(plane.restart, "apiserver")
            await direct.create(CONFIGMAPS, {"metadata": {"name": "after-restart"}})
            await relay.open()
            await _seen(informer, "after-restart", timeout=60)
            print(f"restart: informer lists {informer.lists} resumes {informer.resumes}")
            assert informer.lists == 2
            names = {key.split("/", 1)[1] for key in informer.cache.objects}
            assert names == {"before", "during-cut", "after-cut", "after-restart"}
        finally:
            await informer.stop()
            await through.close()
            await relay.cut()


def test_informer_resumes_from_its_resource_version_after_a_connection_failure(
    plane: ControlPlane,
) -> None:
    asyncio.run(_resume_then_relist(plane))
