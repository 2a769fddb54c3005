"""A real Kubernetes control plane (etcd + kube-apiserver) on loopback, started as envtest does.

Used by ``voile controlplane up|down``, by the lab and by the test suite's session fixture. The
binaries are built from pinned Go modules by ``hack/controlplane/build.sh`` and cached under
``$VOILE_CACHE/bin`` (default ``~/.cache/voile/bin``); this module only finds and runs them.

What runs without kube-controller-manager, kube-scheduler and kubelets: the API, admission, RBAC,
CRDs, CEL, the TokenRequest API. What does not: garbage collection of ownerReferences, namespace
deletion, Pods. Nothing here waits for those.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from voile.errors import ControlPlaneError
from voile.processes import alive, terminate

REPO_ROOT = Path(__file__).resolve().parent.parent
HACK_DIR = REPO_ROOT / "hack" / "controlplane"
STATE_FILE = "state.json"


def cache_dir() -> Path:
    return Path(os.environ.get("VOILE_CACHE", Path.home() / ".cache" / "voile"))


def default_state_dir() -> Path:
    """Where ``voile controlplane up`` keeps its files; ``down`` removes this directory."""
    return Path(os.environ.get("VOILE_STATE_DIR", f"/tmp/voile-{os.getuid()}")) / "controlplane"


def _pinned_version(go_mod: Path, module: str) -> str:
    for line in go_mod.read_text().splitlines():
        fields = line.split()
        for i, field in enumerate(fields[:-1]):
            if field == module and fields[i + 1].startswith("v"):
                return fields[i + 1]
    raise ControlPlaneError(f"{go_mod} does not pin {module}")


def binary(name: str) -> Path:
    """The cached binary for the version pinned under hack/controlplane, or a clear error."""
    if name in ("kube-apiserver", "kubelet"):
        version = _pinned_version(HACK_DIR / name / "go.mod", "k8s.io/kubernetes")
    elif name == "etcd":
        version = _pinned_version(HACK_DIR / "etcd" / "go.mod", "go.etcd.io/etcd/server/v3")
    elif name == "crictl":
        version = _pinned_version(HACK_DIR / "crictl" / "go.mod", "sigs.k8s.io/cri-tools")
    else:
        raise ValueError(name)
    path = cache_dir() / "bin" / f"{name}-{version}"
    if not os.access(path, os.X_OK):
        raise ControlPlaneError(
            f"{path} is missing: run `make setup` (or hack/controlplane/build.sh) to build it"
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Endpoints:
    """What a client needs to reach a running control plane."""

    directory: Path
    server: str
    kubeconfig: Path
    etcd_url: str
    etcd_pid: int
    apiserver_pid: int


class ControlPlane:
    """etcd and kube-apiserver with a generated PKI, in one directory that ``stop`` removes.

    ``start`` and ``stop`` are idempotent: starting a running control plane returns its endpoints,
    stopping one that is not running removes whatever files are left.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        address: str = "127.0.0.1",
        extra_sans: tuple[str, ...] = (),
        ready_timeout: float = 120.0,
    ) -> None:
        self.directory = (directory or default_state_dir()).resolve()
        self.address = address
        self.extra_sans = extra_sans
        self.ready_timeout = ready_timeout

    # -- state ---------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def _read_state(self) -> Endpoints | None:
        try:
            raw = json.loads((self.directory / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return Endpoints(
            directory=self.directory,
            server=raw["server"],
            kubeconfig=Path(raw["kubeconfig"]),
            etcd_url=raw["etcd_url"],
            etcd_pid=raw["etcd_pid"],
            apiserver_pid=raw["apiserver_pid"],
        )

    def running(self) -> Endpoints | None:
        """The endpoints of this directory's control plane when both live and it is ready."""
        state = self._read_state()
        if state is None or not (alive(state.etcd_pid) and alive(state.apiserver_pid)):
            return None
        try:
            if self._get(state.server + "/readyz", timeout=5) == "ok":
                return state
        except OSError:
            return None
        return None

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> Endpoints:
        """Start etcd and kube-apiserver and wait for /readyz. Idempotent."""
        current = self.running()
        if current is not None:
            return current
        self.stop()  # a half-started or crashed one: clear it first
        etcd_bin, apiserver_bin = binary("etcd"), binary("kube-apiserver")
        self.directory.mkdir(parents=True, exist_ok=True)
        pki = self.directory / "pki"
        pki.mkdir(exist_ok=True)
        self._write_pki(pki)

        etcd_port, etcd_peer = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd_log = self.directory / "etcd.log"
        argv: dict[str, list[str]] = {}
        argv["etcd"] = [
            str(etcd_bin),
            f"--data-dir={self.directory / 'etcd-data'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync=true",
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ]
        etcd = _spawn(argv["etcd"], etcd_log)
        server_port = free_port(self.address)
        server = f"https://{self.address}:{server_port}"
        self._save_state(server, etcd_url, etcd.pid, 0, argv=argv)
        self._wait(lambda: self._get(etcd_url + "/health", timeout=2), "etcd", etcd, etcd_log)

        apiserver_log = self.directory / "kube-apiserver.log"
        argv["apiserver"] = [
            str(apiserver_bin),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={self.address}",
            f"--secure-port={server_port}",
            f"--advertise-address={self.address}",
            "--endpoint-reconciler-type=none",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'serving.crt'}",
            f"--tls-private-key-file={pki / 'serving.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=198.18.255.0/24",
            f"--service-account-issuer={server}/",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            # For kubelets (logs, exec, port-forward): the API server reaches a Node at its
            # InternalIP (a lab node's hostname resolves nowhere) and shows the admin
            # certificate, which a kubelet's webhook authorizer allows (system:masters).
            f"--kubelet-client-certificate={pki / 'admin.crt'}",
            f"--kubelet-client-key={pki / 'admin.key'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--enable-priority-and-fairness=false",
            "--max-requests-inflight=1600",
            "--max-mutating-requests-inflight=800",
            "--v=1",
        ]
        apiserver = _spawn(argv["apiserver"], apiserver_log)
        self._save_state(server, etcd_url, etcd.pid, apiserver.pid, argv=argv)
        self._write_kubeconfig(server, pki)
        self._wait(
            lambda: self._get(server + "/readyz", timeout=5),
            "kube-apiserver",
            apiserver,
            apiserver_log,
        )
        state = self._read_state()
        assert state is not None
        return state

    def _save_state(
        self,
        server: str,
        etcd_url: str,
        etcd_pid: int,
        apiserver_pid: int,
        *,
        argv: dict[str, list[str]],
    ) -> None:
        state = {
            "server": server,
            "kubeconfig": str(self.kubeconfig),
            "etcd_url": etcd_url,
            "etcd_pid": etcd_pid,
            "apiserver_pid": apiserver_pid,
            "argv": argv,  # to start one of them again (restart)
        }
        (self.directory / STATE_FILE).write_text(json.dumps(state, indent=2))

    # -- faults (voile lab restart/pause/resume controlplane) ------------------------------------

    def pid(self, component: str) -> int:
        """The pid of ``etcd`` or ``apiserver``."""
        state = self._read_state()
        if state is None:
            raise ControlPlaneError(f"no control plane in {self.directory}")
        return state.etcd_pid if component == "etcd" else state.apiserver_pid

    def restart(self, component: str, sig: int = signal.SIGTERM) -> int:
        """Stop ``etcd`` or ``apiserver`` by ``sig`` and start it again with the same command
        line (same ports, data and certificates); wait until it is ready. The new pid."""
        raw = json.loads((self.directory / STATE_FILE).read_text())
        if component not in ("etcd", "apiserver") or component not in raw.get("argv", {}):
            raise ControlPlaneError(f"cannot restart {component!r} of {self.directory}")
        key = f"{component}_pid"
        old = int(raw[key])
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGCONT)  # a paused one must be able to die
        terminate(old, sig)
        name = "kube-apiserver" if component == "apiserver" else "etcd"
        log = self.directory / f"{name}.log"
        proc = _spawn(raw["argv"][component], log)
        raw[key] = proc.pid
        (self.directory / STATE_FILE).write_text(json.dumps(raw, indent=2))
        if component == "etcd":
            url = raw["etcd_url"] + "/health"
            self._wait(lambda: self._get(url, timeout=2), "etcd", proc, log)
        else:
            url = raw["server"] + "/readyz"
            self._wait(lambda: self._get(url, timeout=5), name, proc, log)
        return proc.pid

    def _wait(
        self, probe: Callable[[], str], what: str, proc: subprocess.Popen[bytes], log: Path
    ) -> None:
        deadline = time.monotonic() + self.ready_timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{what} exited with code {proc.returncode}; see {log}:\n{_tail(log)}"
                )
            try:
                if probe() == "ok":
                    return
            except (OSError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.25)
        raise ControlPlaneError(
            f"{what} did not become ready within {self.ready_timeout:.0f}s (last: {last}); "
            f"see {log}:\n{_tail(log)}"
        )

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self.directory / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def _get(self, url: str, *, timeout: float) -> str:
        ctx = self._ssl_context() if url.startswith("https:") else None
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
                body: bytes = resp.read()
        except urllib.error.HTTPError as exc:
            raise OSError(f"HTTP {exc.code} from {url}") from exc
        text = body.decode().strip()
        if url.endswith("/health"):
            return "ok" if json.loads(text).get("health") == "true" else text
        return text

    # -- node credentials ----------------------------------------------------------------------

    def issue_node_kubeconfig(self, node: str, out: Path, *, server: str | None = None) -> Path:
        """Credentials for a kubelet named ``node``, written into ``out``: a client certificate
        (CN=system:node:<node>, O=system:nodes) signed by this control plane's CA, the CA itself
        (``ca.crt``, also the kubelet's ``clientCAFile``) and ``kubeconfig`` with both embedded,
        so the files outlive nothing but the CA. ``server`` defaults to the running API server's
        URL. Returns the kubeconfig's path. Idempotent: a second call issues a fresh certificate.

        RBAC-only authorization gives the group system:nodes no rights by itself: bind the
        ClusterRole ``system:node`` to it (or to the user) before the kubelet starts."""
        pki = self.directory / "pki"
        state = self._read_state()
        if server is None:
            if state is None:
                raise ControlPlaneError(f"no control plane state in {self.directory}")
            server = state.server
        try:
            ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
            ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise ControlPlaneError(f"cannot read the CA in {pki}: {exc}") from exc
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ControlPlaneError(f"{pki / 'ca.key'} is not the EC key this module writes")
        out.mkdir(parents=True, exist_ok=True)
        self._leaf(
            out, "node", ca_cert, ca_key, f"system:node:{node}", "system:nodes", [], server=False
        )
        shutil.copyfile(pki / "ca.crt", out / "ca.crt")

        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        user = f"system:node:{node}"
        ca_data = b64(pki / "ca.crt")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "voile",
                    "cluster": {"server": server, "certificate-authority-data": ca_data},
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": b64(out / "node.crt"),
                        "client-key-data": b64(out / "node.key"),
                    },
                }
            ],
            "contexts": [{"name": "voile", "context": {"cluster": "voile", "user": user}}],
            "current-context": "voile",
        }
        kubeconfig = out / "kubeconfig"
        kubeconfig.write_text(json.dumps(config, indent=2))
        kubeconfig.chmod(0o600)
        return kubeconfig

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop both processes and remove the directory. Idempotent: nothing running is fine."""
        state = self._read_state()
        if state is not None:
            for pid in (state.apiserver_pid, state.etcd_pid):
                terminate(pid)
        if self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- PKI -----------------------------------------------------------------------------------

    def _write_pki(self, pki: Path) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voile-controlplane-ca")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_cert(pki / "ca.crt", ca_cert)
        _write_key(pki / "ca.key", ca_key)

        sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
        for name in ("127.0.0.1", self.address, *self.extra_sans):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        self._leaf(pki, "serving", ca_cert, ca_key, "kube-apiserver", None, sans, server=True)
        self._leaf(pki, "admin", ca_cert, ca_key, "voile-admin", "system:masters", [], server=False)

        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(pki / "sa.key", sa_key)
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    @staticmethod
    def _leaf(
        pki: Path,
        stem: str,
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        common_name: str,
        organization: str | None,
        sans: list[x509.GeneralName],
        *,
        server: bool,
    ) -> None:
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        _write_cert(pki / f"{stem}.crt", builder.sign(ca_key, hashes.SHA256()))
        _write_key(pki / f"{stem}.key", key)

    def _write_kubeconfig(self, server: str, pki: Path) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "voile",
                    "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": "voile-admin",
                    "user": {
                        "client-certificate": str(pki / "admin.crt"),
                        "client-key": str(pki / "admin.key"),
                    },
                }
            ],
            "contexts": [{"name": "voile", "context": {"cluster": "voile", "user": "voile-admin"}}],
            "current-context": "voile",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `voile controlplane up`; not hit by the shell's ^C
        )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
