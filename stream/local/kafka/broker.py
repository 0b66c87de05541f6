"""A real, local Apache Kafka 4.x broker (KRaft, one combined broker+controller node on loopback).

Why: the tests and `klaviyo-stream kafka` need a real broker without Docker or a tarball download.
The broker's jars come from Maven Central (the `pom.xml` beside this file) and are cached outside
the work tree; the broker runs as a plain `java` child process whose files all live in `work_dir`.

    with LocalKafka() as kafka:          # picks free loopback ports, temp data dir
        produce_to(kafka.bootstrap_servers)
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from stream.core.errors import BrokerError
from stream.local.jvm import (
    HOST,
    JvmProcess,
    cache_root,
    file_lock,
    free_port,
    java,
    port_open,
    run_until_signal,
    tail,
)

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG_CONFIG = HERE / "log4j2.yaml"
_MARKER = ".resolved"
_LOG_NAME = "broker.log"


def kafka_version() -> str:
    """The Kafka version pinned in pom.xml (`kafka.version` property)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not node.text:
        raise BrokerError(f"{POM} has no <kafka.version> property")
    return node.text.strip()


def cache_dir() -> Path:
    """Jar cache: `$KLAVIYO_STREAM_CACHE` or `~/.cache/klaviyo-stream`, then `kafka-<version>`."""
    return cache_root() / f"kafka-{kafka_version()}"


def ensure_jars() -> Path:
    """Return a directory holding every jar the broker needs, resolving it with Maven once.

    A marker file (holding the pom's hash) makes later calls instant; editing the pom re-resolves.
    Maven's own repository stays the default `~/.m2`.
    """
    cache = cache_dir()
    jars = cache / "jars"
    marker = cache / _MARKER
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if marker.is_file() and marker.read_text().strip() == digest:
        return jars
    with file_lock(cache / ".lock"):
        if marker.is_file() and marker.read_text().strip() == digest:
            return jars  # another process resolved while we waited
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("Maven (`mvn`) is not on PATH: it is needed once to fetch Kafka jars")
        marker.unlink(missing_ok=True)
        shutil.rmtree(jars, ignore_errors=True)
        cmd = [
            mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={jars}",
        ]  # fmt: skip
        try:
            done = subprocess.run(  # cwd=cache: nothing Maven writes lands in the work tree
                cmd, cwd=cache, capture_output=True, text=True, timeout=900, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError("resolving Kafka jars with Maven timed out after 900 s") from exc
        if done.returncode != 0 or not any(jars.glob("kafka_2.13-*.jar")):
            last = tail(done.stdout + done.stderr)
            raise BrokerError(f"resolving Kafka jars failed (mvn exit {done.returncode}):\n{last}")
        marker.write_text(digest + "\n")
    return jars


def _java() -> str:
    found = java()
    if found is None:
        raise BrokerError("Java (`java`, 17 or newer) is not on PATH: Kafka 4.x needs it")
    return found


def _random_cluster_id() -> str:
    """A cluster id as `StorageTool random-uuid` makes it (base64url UUIDv4, not starting '-').

    Done in Python to spare a JVM start (~1 s) on every fresh broker.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class LocalKafka(JvmProcess):
    """One local Kafka 4.x node (broker + KRaft controller) listening on 127.0.0.1.

    `port=0` picks free ports (client and controller). Data, config and the broker's log live in
    `work_dir`; a temporary one is made when none is given and removed by `stop()`. `restart()`
    keeps ports and data, so tests can bounce the broker mid-run. `jvm_options` are added to
    the JVM's own (the tests' brokers compile with C1 only: about half the start-up CPU).
    """

    error = BrokerError
    log_name = _LOG_NAME
    temp_prefix = "localkafka-"
    what = "Kafka broker"

    def __init__(
        self,
        work_dir: Path | None = None,
        port: int = 0,
        jars_dir: Path | None = None,
        jvm_options: Sequence[str] = (),
    ) -> None:
        super().__init__(work_dir)
        self._jvm_options = tuple(jvm_options)  # e.g. the tests' C1-only JIT: a faster start
        self._port = port
        self._controller_port = 0
        self._jars_dir = jars_dir

    # -- public API --------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """`127.0.0.1:PORT`; the port is only known once `start()` has picked it."""
        if not self._port:
            raise BrokerError("the broker has not been started, so it has no port yet")
        return f"{HOST}:{self._port}"

    def start(self, timeout: float = 120) -> str:
        """Format storage if needed, launch the JVM and wait until the broker answers metadata.

        Returns the bootstrap servers string. Raises BrokerError if the broker dies or does not
        answer within `timeout` seconds (the broker is then stopped).
        """
        with self._lock:
            if self.is_running():
                return self.bootstrap_servers
            java = _java()
            jars = self._jars_dir or ensure_jars()
            fresh_temp = self._make_work_dir()
        try:
            with self._lock:
                self._launch_broker(java, jars)
            self._wait_ready(timeout)
        except BaseException:
            # A temp dir made by this call holds nothing worth keeping; a restart keeps its data.
            self._stop_process(timeout=10)
            if fresh_temp:
                self.stop()
            raise
        return self.bootstrap_servers

    def restart(self, timeout: float = 120) -> str:
        """Stop and start again on the same ports and data directory."""
        if self._work_dir is None:
            raise BrokerError("restart() needs a broker that was started")
        self._stop_process(timeout=30)
        return self.start(timeout)

    # -- internals ---------------------------------------------------------------------------

    def _launch_broker(self, java: str, jars: Path) -> None:
        """Pick ports, write server.properties, format storage once, then spawn the JVM."""
        assert self._work_dir is not None
        self._work_dir.mkdir(parents=True, exist_ok=True)
        formatted = (self._work_dir / "data" / "meta.properties").is_file()
        if formatted:
            # The formatted quorum names the controller's endpoint: reuse the recorded ports.
            old_port, old_cport = _recorded_ports(self._work_dir / "server.properties")
            self._port = self._port or old_port
            self._controller_port = self._controller_port or old_cport
        self._port = self._port or free_port()
        while not self._controller_port or self._controller_port == self._port:
            self._controller_port = free_port()
        props = self._write_properties()
        classpath = f"{jars}/*"
        if not formatted:
            self._format(java, classpath, props)
        self._spawn(self._java_cmd(java, classpath) + ["kafka.Kafka", str(props)])

    def _write_properties(self) -> Path:
        assert self._work_dir is not None
        cport = self._controller_port
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{HOST}:{cport}",
            "listeners": f"PLAINTEXT://{HOST}:{self._port},CONTROLLER://{HOST}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self._port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dir": str(self._work_dir / "data"),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "num.partitions": "3",
        }
        path = self._work_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        return path

    def _java_cmd(self, java: str, classpath: str) -> list[str]:
        return [
            java, "-Xmx1G", "-Xms1G", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG_CONFIG}", *self._jvm_options, "-cp", classpath,
        ]  # fmt: skip

    def _format(self, java: str, classpath: str, props: Path) -> None:
        """Format the KRaft storage once (`--standalone`: this node is the whole quorum)."""
        cmd = self._java_cmd(java, classpath) + [
            "kafka.tools.StorageTool", "format", "-t", _random_cluster_id(),
            "-c", str(props), "--standalone",
        ]  # fmt: skip
        cmd[1:3] = ["-Xmx256M", "-Xms64M"]  # the formatter needs no 1 GiB heap
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            last = tail(done.stdout + done.stderr)
            raise BrokerError(f"formatting Kafka storage failed (exit {done.returncode}):\n{last}")

    def _wait_ready(self, timeout: float) -> None:
        """Poll until the broker listens and answers a metadata request naming itself."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        admin: AdminClient | None = None
        while True:
            self._check_alive(deadline, timeout)
            remaining = deadline - time.monotonic()
            if admin is None:
                # Connect only once the port accepts, so librdkafka does not log refusals.
                if port_open(self._port):
                    admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
                else:
                    time.sleep(0.1)
                continue
            try:
                meta = admin.list_topics(timeout=min(2.0, max(remaining, 0.1)))
            except KafkaException:
                continue
            if meta.brokers:
                return
            time.sleep(0.1)


def _recorded_ports(props: Path) -> tuple[int, int]:
    """(client, controller) ports from an earlier server.properties; 0 where unknown."""
    found = {"PLAINTEXT": 0, "CONTROLLER": 0}
    text = props.read_text() if props.is_file() else ""
    for line in text.splitlines():
        if line.startswith("listeners="):
            for listener in line.partition("=")[2].split(","):
                name, _, address = listener.partition("://")
                if name in found and ":" in address:
                    found[name] = int(address.rsplit(":", 1)[1])
    return found["PLAINTEXT"], found["CONTROLLER"]


def run_foreground(port: int = 9092, work_dir: Path | None = None) -> None:
    """Run a broker until SIGINT/SIGTERM: what `klaviyo-stream kafka` does.

    Prints `Kafka ready at 127.0.0.1:PORT` once clients can connect, then stops cleanly.
    """
    kafka = LocalKafka(work_dir=work_dir, port=port)

    def ready() -> str:
        return f"Kafka ready at {kafka.bootstrap_servers}"

    run_until_signal(kafka, ready, lambda line: print(line, flush=True))
