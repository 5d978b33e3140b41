"""Real CNCF Distribution (``docker-registry``) instances on loopback for tests.

Every registry is two processes sharing one storage directory:

* the *front door* (``Registry.url``), with the TLS / auth configuration under test;
* the *backdoor* (``Registry.backdoor_url``), plain HTTP and no auth, used by tests to seed
  images and to read results back independently of the auth under test.

Neither process uses a blob-descriptor cache, so what one writes the other sees at once.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import bcrypt

from tests.support.tls import generate_tls

if TYPE_CHECKING:
    from tests.support.tokenserver import TokenServer

__all__ = [
    "REGISTRY_BINARY",
    "AuthMode",
    "Registry",
    "RegistryFactory",
    "free_port",
    "start_registry",
    "write_docker_config",
]

REGISTRY_BINARY = os.environ.get("IBW_TEST_REGISTRY_BINARY", "/usr/bin/docker-registry")
AuthMode = Literal["none", "basic", "token"]

_BCRYPT_COST = 5  # what `htpasswd -B` uses
_READY_TIMEOUT = 20.0
_HTTP_SECRET = "image-backup-webhook-tests-fixed-http-secret"  # shared by both processes

_live: set[subprocess.Popen[bytes]] = set()


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    _live.discard(proc)


@atexit.register
def _kill_all() -> None:  # last resort if a fixture finalizer did not run
    for proc in list(_live):
        _kill(proc)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind to port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_docker_config(path: str | os.PathLike[str], logins: Mapping[str, tuple[str, str]]) -> str:
    """Write a docker ``config.json`` with ``{host: (username, password)}`` logins."""
    auths = {
        host: {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
        for host, (username, password) in logins.items()
    }
    with open(path, "w") as f:
        json.dump({"auths": auths}, f, indent=2)
    os.chmod(path, 0o600)
    return str(path)


def _config(
    *,
    port: int,
    storage_dir: str,
    tls: tuple[str, str] | None,
    auth: dict[str, Any] | None,
    access_log: bool = False,
) -> dict[str, Any]:
    http: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": _HTTP_SECRET}
    if tls is not None:
        http["tls"] = {"certificate": tls[0], "key": tls[1]}
    cfg: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "error", "formatter": "text", "accesslog": {"disabled": not access_log}},
        "storage": {
            # no "cache" key: no blobdescriptor cache, the two processes stay consistent
            "filesystem": {"rootdirectory": storage_dir},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if auth is not None:
        cfg["auth"] = auth
    return cfg


def _env() -> dict[str, str]:
    # REGISTRY_* variables override the config file: never inherit them.
    return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}


def _tail(path: str, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode(errors="replace")
    except OSError as e:
        return f"<no log: {e}>"


def _probe(url: str, ctx: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/", timeout=2, context=ctx) as resp:
            return int(resp.status) == 200
    except urllib.error.HTTPError as e:
        return e.code == 401
    except (OSError, ssl.SSLError):
        return False


@dataclass
class _Proc:
    name: str
    config_file: str
    log_file: str
    url: str
    ssl_context: ssl.SSLContext | None
    process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", self.config_file],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(),
                close_fds=True,
            )
        finally:
            log.close()
        _live.add(self.process)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"registry {self.name} ({self.url}) exited with {self.process.returncode}; "
                    f"log tail ({self.log_file}):\n{_tail(self.log_file)}"
                )
            if _probe(self.url, self.ssl_context):
                return
            if time.monotonic() > deadline:
                _kill(self.process)
                raise RuntimeError(
                    f"registry {self.name} ({self.url}) not ready after {timeout:.0f}s; "
                    f"log tail ({self.log_file}):\n{_tail(self.log_file)}"
                )
            time.sleep(0.02)

    def kill(self) -> None:
        _kill(self.process)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Registry:
    """A running registry (front door + backdoor sharing ``storage_dir``)."""

    host: str  # "127.0.0.1:PORT" - what clients address
    url: str  # "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT"
    backdoor_url: str  # plain HTTP, no auth, same storage
    ca_file: str | None  # CA that signed the front door's certificate (None for plain HTTP)
    username: str | None
    password: str | None
    auth: AuthMode
    docker_config: str  # docker config.json with credentials for `host` (empty auths if none)
    storage_dir: str
    workdir: str
    log_file: str  # front-door log
    backdoor_log_file: str
    service: str | None = None  # token auth: the `service` the registry expects in tokens
    token_server: TokenServer | None = field(default=None, repr=False)
    _main: _Proc | None = field(default=None, repr=False)
    _backdoor: _Proc | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @property
    def running(self) -> bool:
        """Whether the front-door process is alive."""
        return self._main is not None and self._main.running

    def stop(self) -> None:
        """Kill the front-door process (SIGKILL); the backdoor stays up ("target down")."""
        if self._main is not None:
            self._main.kill()

    def restart(self, timeout: float = _READY_TIMEOUT) -> None:
        """Start the front door again on the same port (after :meth:`stop`)."""
        assert self._main is not None
        self._main.kill()
        self._main.spawn()
        self._main.wait_ready(timeout)

    def close(self) -> None:
        """Kill both processes (the storage directory is left for the caller to remove)."""
        if self._main is not None:
            self._main.kill()
        if self._backdoor is not None:
            self._backdoor.kill()

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting the front door (None for plain HTTP)."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None

    def log_tail(self, limit: int = 4000) -> str:
        return _tail(self.log_file, limit)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RegistryFactory(Protocol):
    """Type of the ``registry_factory`` fixture (``**kw`` as for :func:`start_registry`)."""

    def __call__(
        self,
        *,
        tls: bool = False,
        auth: AuthMode = "none",
        token_server: TokenServer | None = None,
        **kw: Any,
    ) -> Registry: ...


def _write_json(path: str, data: dict[str, Any]) -> None:
    # JSON is valid YAML; Distribution parses it with its YAML loader.
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def start_registry(
    workdir: str,
    *,
    tls: bool,
    auth: AuthMode,
    token_server: TokenServer | None = None,
    username: str | None = None,
    password: str | None = None,
    tls_dir: str | None = None,
    service: str | None = None,
    timeout: float = _READY_TIMEOUT,
    access_log: bool = False,
) -> Registry:
    """Start a registry (front door + backdoor) with state under ``workdir``.

    * ``tls``: serve the front door over HTTPS with a certificate from :func:`generate_tls`
      (``tls_dir`` picks the directory of the CA; default ``workdir/tls``).
    * ``auth="basic"``: htpasswd (bcrypt cost 5) with ``username``/``password``
      (defaults: ``tester`` / a random password).
    * ``auth="token"``: token auth against ``token_server``; ``username``/``password``
      default to the token server's first user, and those go into ``docker_config``.
    * ``access_log``: the front door logs every request (combined log format) to
      ``log_file``, for tests that count what reached the registry.
    """
    if shutil.which(REGISTRY_BINARY) is None:
        raise RuntimeError(f"{REGISTRY_BINARY} not found (apt-get install docker-registry)")
    os.makedirs(workdir, exist_ok=True)
    workdir = os.path.abspath(workdir)
    storage_dir = os.path.join(workdir, "storage")
    os.makedirs(storage_dir, exist_ok=True)

    tls_pair: tuple[str, str] | None = None
    ca_file: str | None = None
    client_ctx: ssl.SSLContext | None = None
    if tls:
        files = generate_tls(tls_dir or os.path.join(workdir, "tls"))
        tls_pair = (files.cert_file, files.key_file)
        ca_file = files.ca_file
        client_ctx = ssl.create_default_context(cafile=ca_file)

    auth_cfg: dict[str, Any] | None = None
    if auth == "basic":
        username = username or "tester"
        password = password or secrets.token_urlsafe(12)
        htpasswd = os.path.join(workdir, "htpasswd")
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=_BCRYPT_COST)).decode()
        with open(htpasswd, "w") as f:
            f.write(f"{username}:{hashed}\n")
        auth_cfg = {"htpasswd": {"realm": "test-registry", "path": htpasswd}}
    elif auth == "token":
        if token_server is None:
            raise ValueError("auth='token' needs a token_server")
        if username is None and token_server.users:
            username = next(iter(token_server.users))
        if username is not None and password is None:
            password = token_server.users.get(username)
        service = service or f"test-registry-{secrets.token_hex(4)}"
        auth_cfg = {
            "token": {
                "realm": token_server.realm,
                "service": service,
                "issuer": token_server.issuer,
                "rootcertbundle": token_server.signing_cert_file,
            }
        }
    elif auth == "none":
        username = password = None
    else:
        raise ValueError(f"unknown auth mode {auth!r}")

    scheme = "https" if tls else "http"
    last_error: Exception | None = None
    for _attempt in range(3):  # bind-to-0 ports can race with other processes
        port, bport = free_port(), free_port()
        while bport == port:
            bport = free_port()
        main_cfg = os.path.join(workdir, "config.yml")
        back_cfg = os.path.join(workdir, "backdoor.yml")
        _write_json(
            main_cfg,
            _config(
                port=port,
                storage_dir=storage_dir,
                tls=tls_pair,
                auth=auth_cfg,
                access_log=access_log,
            ),
        )
        _write_json(back_cfg, _config(port=bport, storage_dir=storage_dir, tls=None, auth=None))
        main = _Proc(
            "front door",
            main_cfg,
            os.path.join(workdir, "registry.log"),
            f"{scheme}://127.0.0.1:{port}",
            client_ctx,
        )
        back = _Proc(
            "backdoor",
            back_cfg,
            os.path.join(workdir, "backdoor.log"),
            f"http://127.0.0.1:{bport}",
            None,
        )
        main.spawn()
        back.spawn()
        try:
            main.wait_ready(timeout)
            back.wait_ready(timeout)
        except RuntimeError as e:
            main.kill()
            back.kill()
            last_error = e
            if "address already in use" in str(e):
                continue
            raise
        host = f"127.0.0.1:{port}"
        return Registry(
            host=host,
            url=main.url,
            backdoor_url=back.url,
            ca_file=ca_file,
            username=username,
            password=password,
            auth=auth,
            docker_config=write_docker_config(
                os.path.join(workdir, "docker-config.json"),
                {host: (username, password)} if username and password else {},
            ),
            storage_dir=storage_dir,
            workdir=workdir,
            log_file=main.log_file,
            backdoor_log_file=back.log_file,
            service=service,
            token_server=token_server,
            _main=main,
            _backdoor=back,
        )
    assert last_error is not None
    raise last_error
