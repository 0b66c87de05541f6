"""LocalRegistry: the bundle fetched once and checked, and the real registry (the session's)
speaking Confluent's API to confluent-kafka's client: our schemas, compatibility, auth, TLS."""

from __future__ import annotations

import hashlib
import io
import json
import re
import signal
import subprocess
import sys
import tarfile
import threading
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

import stream.local.registry as local_registry
from stream.core.errors import LocalRegistryError
from stream.intake.avro import schemas_dir
from stream.local.demo import demo_calls
from stream.local.jvm import port_open
from tests.support import free_port, poll_until
from tests.support.cli import clean_env
from tests.support.harness import stopped_records
from tests.support.registry import CLIENT_TIMEOUT, Registry

JAR = f"apicurio-registry-app-{local_registry.VERSION}-runner.jar"


class _Quiet(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def central(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A Maven Central of our own on loopback (its files under the returned directory), and an
    empty cache."""
    root = tmp_path / "central"
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Quiet.requests = []
    monkeypatch.setattr(local_registry, "MAVEN_CENTRAL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("KLAVIYO_STREAM_CACHE", str(tmp_path / "cache"))
    try:
        yield root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _publish(root: Path, sha1: str | None = None) -> bytes:
    """A small bundle (the runner jar and lib/) where Maven Central has it, with its .sha1."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as bundle:
        for name, data in ((JAR, b"runner"), ("lib/a.jar", b"a")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    path = root / local_registry.BUNDLE
    path.parent.mkdir(parents=True)
    path.write_bytes(buf.getvalue())
    digest = sha1 or hashlib.sha1(buf.getvalue(), usedforsecurity=False).hexdigest()
    path.with_name(path.name + ".sha1").write_text(digest)
    return buf.getvalue()


def test_the_bundle_is_fetched_once_by_its_maven_path_checked_and_cached(central: Path) -> None:
    _publish(central)
    heard: list[str] = []
    jar = local_registry.ensure_bundle(heard.append)
    assert jar.read_bytes() == b"runner" and (jar.parent / "lib" / "a.jar").is_file()
    assert jar.is_relative_to(local_registry.cache_dir())
    assert _Quiet.requests == [f"/{local_registry.BUNDLE}.sha1", f"/{local_registry.BUNDLE}"]
    assert heard and "Maven Central" in heard[0]
    assert local_registry.ensure_bundle() == jar
    assert len(_Quiet.requests) == 2, "fetched again although cached"
    assert not list(local_registry.cache_dir().glob("*.part")), "the download was left behind"


def test_a_bundle_that_does_not_match_its_sha1_is_refused_and_nothing_is_kept(
    central: Path,
) -> None:
    _publish(central, sha1="0" * 40)
    with pytest.raises(LocalRegistryError, match="SHA-1 .* is not the published 0000"):
        local_registry.ensure_bundle()
    left = {p.name for p in local_registry.cache_dir().iterdir()}
    assert left <= {".lock"}, left


def test_an_unreachable_maven_central_is_one_error_naming_the_url(
    central: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_registry, "MAVEN_CENTRAL", "http://127.0.0.1:9")
    with pytest.raises(LocalRegistryError, match=r"fetching http://127.0.0.1:9/io/apicurio/.*sha1"):
        local_registry.ensure_bundle()


SHIPPED = sorted(schemas_dir().glob("*.avsc")) + sorted((schemas_dir() / "history").glob("*.avsc"))


def test_every_shipped_schema_registers_and_is_served_back_by_id(registry: Registry) -> None:
    """Apicurio refused schemas with a "{}" string default (422 on register, 400 by id)."""
    with registry.client() as client:
        for path in SHIPPED:
            text = path.read_text()
            schema_id = client.register_schema(f"shipped-{path.name}", Schema(text, "AVRO"))
            served = client.get_schema(schema_id)
            assert json.loads(served.schema_str) == json.loads(text), path.name


def _track(*extra: dict) -> str:
    schema = json.loads((schemas_dir() / "track.avsc").read_text())
    schema["fields"] += list(extra)
    return json.dumps(schema)


def test_backward_compatibility_refuses_a_field_without_a_default_with_409(
    registry: Registry,
) -> None:
    subject = "compat-io.klaviyostream.calls.Track"
    with registry.client() as client:
        first = client.register_schema(subject, Schema(_track(), "AVRO"))
        added = _track({"name": "channel", "type": "string", "default": "web"})
        second = client.register_schema(subject, Schema(added, "AVRO"))
        assert second != first and client.get_versions(subject) == [1, 2]
        with pytest.raises(SchemaRegistryError) as refused:
            client.register_schema(subject, Schema(_track({"name": "x", "type": "int"}), "AVRO"))
        assert refused.value.http_status_code == 409
        assert "Incompatible" in refused.value.error_message
        assert client.lookup_schema(subject, Schema(added, "AVRO")).schema_id == second
        assert registry.server.request("GET", "/config") == {"compatibilityLevel": "BACKWARD"}


@pytest.mark.parametrize(
    ("user", "status"), [("reader", 200), ("wrong", 401), ("missing", 401), ("nobody", 403)]
)
def test_basic_auth_right_wrong_missing_and_without_a_role(
    registry: Registry, user: str, status: int
) -> None:
    conf = {"url": registry.url, "timeout": CLIENT_TIMEOUT}
    if user == "wrong":
        conf["basic.auth.user.info"] = "reader:not-the-password"
    elif user != "missing":
        conf["basic.auth.user.info"] = registry.user_info(user)
    with SchemaRegistryClient(conf) as client:
        try:
            client.get_subjects()
            answered = 200
        except SchemaRegistryError as exc:
            answered = exc.http_status_code
    assert answered == status


def test_a_reader_may_read_but_not_register(registry: Registry) -> None:
    with registry.client("reader") as client, pytest.raises(SchemaRegistryError) as refused:
        client.register_schema("reader-may-not", Schema(_track(), "AVRO"))
    assert refused.value.http_status_code == 403


def test_https_verified_with_the_ca_and_refused_without(registry: Registry) -> None:
    tls = {"url": registry.server.tls_url, "basic.auth.user.info": registry.user_info("reader")}
    with SchemaRegistryClient({**tls, "ssl.ca.location": str(registry.ca)}) as client:
        assert isinstance(client.get_subjects(), list)
    with (
        SchemaRegistryClient({**tls, "timeout": CLIENT_TIMEOUT, "max.retries": 0}) as client,
        pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"),
    ):
        client.get_subjects()


def _started(args: list[str], log: Path, **settings: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stream", *args],
            env=clean_env(**settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _said(log: Path, pattern: str) -> re.Match[str] | None:
    return re.search(pattern, log.read_text(errors="replace"))


def test_klaviyo_stream_registry_serves_confluents_api_until_sigterm(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "registry.log"
    proc = _started(["registry", "--port", str(port)], log)
    try:
        poll_until(lambda: _said(log, r"ready at (\S+)") is not None or proc.poll() is not None,
                   timeout=120, what="the ready line")
        found = _said(log, r"ready at (\S+)")
        assert found is not None, log.read_text()
        url = found.group(1)
        assert url == f"http://127.0.0.1:{port}/apis/ccompat/v7"
        with SchemaRegistryClient({"url": url, "timeout": CLIENT_TIMEOUT}) as client:
            assert client.get_compatibility() == "BACKWARD"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert not port_open(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_local_registry_publishes_through_the_registry_and_delivers(tmp_path: Path) -> None:
    """The demo as a newcomer runs it: a broker, the sandbox and a registry of its own; the
    demo's calls are registered and published in Confluent's wire format, then delivered."""
    log = tmp_path / "demo.log"
    demo = demo_calls(120)
    proc = _started(["run", "--local", "--registry", "--sample", "120"], log, metrics_port="0")
    try:
        poll_until(lambda: _said(log, r"published \d+ more") is not None
                   or proc.poll() is not None, timeout=180, what="the demo's second part")
        registry = _said(log, r"local Schema Registry \(Apicurio [\d.]+\) at (\S+)")
        sandbox = _said(log, r"Klaviyo sandbox at (\S+)")
        assert registry is not None and sandbox is not None, log.read_text()

        def deleted() -> bool:  # the demo's last call: its deletion reached Klaviyo
            with urllib.request.urlopen(sandbox.group(1) + "/sandbox/stats", timeout=5) as resp:
                return bool(json.loads(resp.read())["deleted_profiles"] == 1)

        poll_until(deleted, timeout=120, what="the demo's deletion")
        with urllib.request.urlopen(registry.group(1) + "/subjects", timeout=5) as resp:
            subjects = json.loads(resp.read())
        assert "analytics-io.klaviyostream.calls.Track" in subjects, subjects
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        [stopped] = stopped_records(log.read_text())
        assert stopped["consumed"] == len(demo.first) + len(demo.later), stopped
        assert stopped["dead_lettered"] == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
