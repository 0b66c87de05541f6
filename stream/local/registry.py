"""A real, local Schema Registry: Apicurio Registry 3.0.9, Confluent's REST API under
`/apis/ccompat/v7`, for the tests, `klaviyo-stream registry` and `run --local --registry`.

Why this one: Confluent's registry is not on Maven Central and Karapace is not on PyPI;
Apicurio publishes a runnable bundle there (`io.apicurio:apicurio-registry-app:3.0.9`,
classifier `all`, a 109 MB tar.gz) and runs on the Java 17 the Kafka broker needs. Maven's
resolver refuses the bundle (its parent POM is missing from Central), so it is fetched by its
path in Central's standard layout, checked against its `.sha1`, and unpacked once into the
cache beside the Kafka jars (`ensure_bundle`). The registry runs as a plain `java` child
process whose settings, log and (when `persistent`) H2 database live in `work_dir`; its
storage is otherwise in memory, gone when it stops. Apicurio's global compatibility defaults to
NONE: `start()` sets BACKWARD, as a Confluent registry has it.

    with LocalRegistry() as registry:      # a free loopback port, a temp work dir
        client = SchemaRegistryClient({"url": registry.url})
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from stream.core.errors import LocalRegistryError
from stream.local.jvm import (
    HOST,
    Announce,
    JvmProcess,
    cache_root,
    file_lock,
    java,
    run_until_signal,
)

VERSION = "3.0.9"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
BUNDLE = f"io/apicurio/apicurio-registry-app/{VERSION}/apicurio-registry-app-{VERSION}-all.tar.gz"
API = "/apis/ccompat/v7"  # Confluent's REST API, as Apicurio serves it
ROLES = ("sr-admin", "sr-developer", "sr-readonly")  # admin: config; developer: register
_MARKER = ".resolved"
_LOG_NAME = "registry.log"
_LISTENING = re.compile(r"Listening on: http://[\d.]+:(\d+)(?: and https://[\d.]+:(\d+))?")


def bundle_url() -> str:
    """Where the bundle is in Maven Central (its `.sha1` beside it)."""
    return f"{MAVEN_CENTRAL}/{BUNDLE}"


def cache_dir() -> Path:
    """`<cache root>/apicurio-registry-<version>`, beside `kafka-<version>`."""
    return cache_root() / f"apicurio-registry-{VERSION}"


def ensure_bundle(announce: Announce | None = None) -> Path:
    """The runner jar of the unpacked bundle, fetched and checked once (`announce` hears that
    it is being fetched). A marker holding the `.sha1` makes later calls instant."""
    cache = cache_dir()
    jar = cache / "app" / f"apicurio-registry-app-{VERSION}-runner.jar"
    marker = cache / _MARKER
    if marker.is_file() and jar.is_file():
        return jar
    with file_lock(cache / ".lock"):
        if marker.is_file() and jar.is_file():
            return jar  # another process fetched it while we waited
        if announce is not None:
            announce(f"fetching Apicurio Registry {VERSION} (109 MB) from Maven Central, once")
        expected = _fetch_text(bundle_url() + ".sha1").split()[0].lower()
        if not re.fullmatch(r"[0-9a-f]{40}", expected):
            raise LocalRegistryError(f"{bundle_url()}.sha1 is not a SHA-1: {expected[:60]!r}")
        part = cache / "bundle.tar.gz.part"
        try:
            got = _download(bundle_url(), part)
            if got != expected:
                raise LocalRegistryError(
                    f"{bundle_url()}: SHA-1 {got} is not the published {expected}"
                )
            _unpack(part, cache / "app")
        finally:
            part.unlink(missing_ok=True)
        if not jar.is_file():
            raise LocalRegistryError(f"the bundle holds no {jar.name}")
        marker.write_text(expected + "\n")
    return jar


def _fetch_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return str(resp.read(4096).decode("ascii", errors="replace")).strip()
    except (urllib.error.URLError, OSError) as exc:
        raise LocalRegistryError(f"fetching {url} failed: {exc}") from None


def _download(url: str, target: Path) -> str:
    """Stream `url` into `target`; its SHA-1 (hex)."""
    digest = hashlib.sha1(usedforsecurity=False)  # Maven Central publishes .sha1 files
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, target.open("wb") as out:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        raise LocalRegistryError(f"fetching {url} failed: {exc}") from None
    return digest.hexdigest()


def _unpack(archive: Path, target: Path) -> None:
    """Unpack into a staging directory, then move it into place (never half a bundle)."""
    staging = target.with_name(target.name + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:gz") as bundle:
            bundle.extractall(staging, filter="data")
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise LocalRegistryError(f"unpacking {archive.name} failed: {exc}") from None
    staging.rename(target)


def _java() -> str:
    found = java()
    if found is None:
        raise LocalRegistryError("Java (`java`, 17 or newer) is not on PATH: Apicurio needs it")
    return found


class LocalRegistry(JvmProcess):
    """One Apicurio Registry on 127.0.0.1, speaking Confluent's API at `url`.

    `port=0` picks a free port. `users` (name → (password, role or None)) turns on basic auth
    and role-based access: every request then needs a user, and a role from `ROLES` (none:
    403 on everything). `tls` (certificate, key: PEM files) serves HTTPS too, at `tls_url`.
    `persistent` keeps the storage in `work_dir` (H2 on disk), so that `restart()` (same
    ports) finds every schema again under its id. `compatibility` is set globally at start.
    """

    error = LocalRegistryError
    log_name = _LOG_NAME
    temp_prefix = "localregistry-"
    what = "the registry"

    def __init__(
        self,
        work_dir: Path | None = None,
        port: int = 0,
        *,
        users: Mapping[str, tuple[str, str | None]] | None = None,
        tls: tuple[Path, Path] | None = None,
        persistent: bool = False,
        compatibility: str | None = "BACKWARD",
        jar: Path | None = None,
    ) -> None:
        super().__init__(work_dir)
        self._port = port
        self._tls_port = 0
        self._users = dict(users or {})
        self._tls = tls
        self._persistent = persistent
        self._compatibility = compatibility
        self._jar = jar

    # -- public API --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT/apis/ccompat/v7`: what SCHEMA_REGISTRY_URL takes."""
        if not self._port:
            raise LocalRegistryError("the registry has not been started, so it has no port yet")
        return f"http://{HOST}:{self._port}{API}"

    @property
    def tls_url(self) -> str:
        """The HTTPS twin of `url` (only with `tls`)."""
        if not self._tls_port:
            raise LocalRegistryError("the registry serves no HTTPS (no `tls`), or is not started")
        return f"https://{HOST}:{self._tls_port}{API}"

    def start(self, timeout: float = 120) -> str:
        """Fetch the bundle if needed, launch the JVM, wait until it listens, set the global
        compatibility. Returns `url`; raises LocalRegistryError (the process stopped) if it
        dies or does not listen within `timeout` seconds."""
        with self._lock:
            if self.is_running():
                return self.url
            jar = self._jar or ensure_bundle()
            launcher = _java()
            fresh_temp = self._make_work_dir()
        try:
            offset = self._launch(launcher, jar)
            self._wait_listening(offset, timeout)
            if self._compatibility:
                self.request("PUT", "/config", {"compatibility": self._compatibility})
        except BaseException:
            self._stop_process(timeout=10)
            if fresh_temp:
                self.stop()
            raise
        return self.url

    def restart(self, timeout: float = 120) -> str:
        """Stop and start again on the same ports (and, when `persistent`, the same data)."""
        if self._work_dir is None:
            raise LocalRegistryError("restart() needs a registry that was started")
        self._stop_process(timeout=30)
        return self.start(timeout)

    def request(
        self, method: str, path: str, body: object = None, user: str | None = None
    ) -> object:
        """One call of the Confluent API (`path` under `/apis/ccompat/v7`), as `user` (by
        default the first admin, when there are users); the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        name = user or next((n for n, (_, r) in self._users.items() if r == "sr-admin"), None)
        if name is not None:
            token = base64.b64encode(f"{name}:{self._users[name][0]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                text = resp.read()
        except urllib.error.HTTPError as exc:
            said = exc.read().decode(errors="replace")[:300]
            raise LocalRegistryError(f"{method} {path}: {exc.code} {said}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise LocalRegistryError(f"{method} {path}: {exc}") from None
        return json.loads(text) if text else None

    # -- internals ---------------------------------------------------------------------------

    def _properties(self) -> dict[str, str]:
        """Quarkus and Apicurio settings, written to `config/application.properties` in the
        work dir (Quarkus reads it from there): passwords stay off the command line."""
        assert self._work_dir is not None
        props = {
            "quarkus.http.host": HOST,
            "quarkus.http.port": str(self._port),
            'quarkus.log.category."io.quarkus".level': "INFO",  # the "Listening on" line
        }
        if self._persistent:
            store = self._work_dir / "storage" / "registry"
            props["apicurio.datasource.url"] = f"jdbc:h2:file:{store}"
        if self._users:
            props.update(
                {
                    "quarkus.http.auth.basic": "true",
                    "quarkus.security.users.embedded.enabled": "true",
                    "quarkus.security.users.embedded.plain-text": "true",
                    "apicurio.auth.enabled": "true",
                    "apicurio.auth.role-based-authorization": "true",
                }
            )
            for name, (password, role) in self._users.items():
                props[f"quarkus.security.users.embedded.users.{name}"] = password
                if role:
                    props[f"quarkus.security.users.embedded.roles.{name}"] = role
        if self._tls is not None:
            cert, key = self._tls
            props.update(
                {
                    "quarkus.http.ssl-port": str(self._tls_port),
                    "quarkus.http.ssl.certificate.files": str(cert),
                    "quarkus.http.ssl.certificate.key-files": str(key),
                    "quarkus.http.insecure-requests": "enabled",
                }
            )
        return props

    def _launch(self, launcher: str, jar: Path) -> int:
        """Write the settings and spawn the JVM; the log's size before it (where to read)."""
        assert self._work_dir is not None
        config = self._work_dir / "config" / "application.properties"
        config.parent.mkdir(exist_ok=True)
        config.touch(mode=0o600)
        config.write_text("".join(f"{k}={_escape(v)}\n" for k, v in self._properties().items()))
        with self._lock:
            return self._spawn(
                [
                    launcher, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                    "-Djava.awt.headless=true", "-jar", str(jar),
                ]  # fmt: skip
            )

    def _wait_listening(self, offset: int, timeout: float) -> None:
        """Wait for Quarkus' `Listening on: http://…:PORT [and https://…:PORT]` line."""
        assert self._work_dir is not None
        log = self._work_dir / _LOG_NAME
        deadline = time.monotonic() + timeout
        while True:
            with log.open("rb") as fh:
                fh.seek(offset)
                found = _LISTENING.search(fh.read().decode(errors="replace"))
            if found:
                self._port = int(found.group(1))
                self._tls_port = int(found.group(2) or 0)
                return
            self._check_alive(deadline, timeout)
            time.sleep(0.05)


def _escape(value: str) -> str:
    """A value as a Java properties file reads it back."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def run_foreground(port: int = 8081, announce: Announce = print) -> None:
    """Run a registry until SIGINT/SIGTERM: what `klaviyo-stream registry` does."""
    registry = LocalRegistry(port=port)
    ensure_bundle(announce)

    def ready() -> str:
        return (
            f"Schema Registry (Apicurio Registry {VERSION}) ready at {registry.url}\n"
            "compatibility BACKWARD; storage in memory, gone when it stops"
        )

    run_until_signal(registry, ready, announce)
