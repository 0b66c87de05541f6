"""docker-compose.yml and Dockerfile, checked by parsing: there is no container engine here.

What an engine would refuse or a reviewer would catch: missing services, floating image tags,
unpublished ports, missing healthchecks, a consumer group that is not one group, environment
variables the service does not read (a typo there is silently ignored at run time).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.core.settings import SANDBOX_API_KEY, known_environment_variable, load_settings
from stream.local.registry import API
from stream.local.registry import VERSION as APICURIO

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

EXPECTED_SERVICES = {
    "kafka",
    "schema-registry",
    "schema-registry-init",
    "redis",
    "consumer",
    "sandbox",
    "producer",
    "prometheus",
    "grafana",
}
APP_SERVICES = ("consumer", "sandbox", "producer")
SERVICE_IMAGE = ("consumer", "producer")  # the Dockerfile's default target; sandbox: its own
_VARIABLE = re.compile(r"\$\{(\w+):-([^}]*)\}")


def interpolate(value: object, env: dict[str, str] | None = None) -> str:
    """Compose's `${NAME:-default}` with `env` (empty: every default)."""
    return _VARIABLE.sub(lambda m: (env or {}).get(m.group(1), m.group(2)), str(value))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", ...] form
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _assert_pinned(image: str) -> None:
    name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
    assert name and tag, f"image {image!r} has no tag"
    assert "/" not in tag, f"image {image!r} has no tag (a registry port is not a tag)"
    assert tag != "latest", f"image {image!r} floats on :latest"
    assert re.search(r"\d", tag), f"image {image!r}: tag {tag!r} names no version"


def test_every_expected_service_is_defined(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= EXPECTED_SERVICES


def test_every_image_is_pinned_to_a_version(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "image" in service, f"{name} has no image"
        if "build" in service:
            continue  # our own image, built from ./Dockerfile
        _assert_pinned(service["image"])


def test_third_party_images_are_the_agreed_ones(services: dict[str, dict[str, Any]]) -> None:
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    # the registry the tests run, at the same version
    assert services["schema-registry"]["image"] == f"apicurio/apicurio-registry:{APICURIO}"
    assert services["redis"]["image"].startswith("redis:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_kafka_is_a_single_kraft_node(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "ZOOKEEPER" not in " ".join(env)
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_app_services_are_built_from_the_dockerfile_targets(
    services: dict[str, dict[str, Any]],
) -> None:
    images = {services[name]["image"] for name in SERVICE_IMAGE}
    assert len(images) == 1
    for name in SERVICE_IMAGE:
        assert services[name]["build"] == {"context": ".", "target": "service"}, name
    assert services["sandbox"]["build"] == {"context": ".", "target": "sandbox"}
    assert services["sandbox"]["image"] not in images


def test_published_ports(services: dict[str, dict[str, Any]]) -> None:
    def host_ports(name: str) -> set[str]:
        return {str(p).split(":")[-2] for p in services[name].get("ports", []) if ":" in str(p)}

    assert "9090" in host_ports("prometheus")
    assert "3000" in host_ports("grafana")
    assert "8080" in host_ports("sandbox")
    # Three replicas cannot share a host port: the consumer only exposes 9400 to the network.
    assert "ports" not in services["consumer"]
    assert "9400" in [str(p) for p in services["consumer"]["expose"]]


def test_published_ports_listen_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = [
        (name, str(port)) for name, service in services.items() for port in service.get("ports", [])
    ]
    assert published
    for name, port in published:
        assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_prometheus_lifecycle_api_is_off(services: dict[str, dict[str, Any]]) -> None:
    assert not any("lifecycle" in str(arg) for arg in services["prometheus"]["command"])


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in (
        "kafka",
        "schema-registry",
        "redis",
        "sandbox",
        "consumer",
        "prometheus",
        "grafana",
    ):
        check = services[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
    consumer_test = " ".join(services["consumer"]["healthcheck"]["test"])
    assert "9400/healthz" in consumer_test


def test_consumer_runs_three_replicas_of_one_group(services: dict[str, dict[str, Any]]) -> None:
    consumer = services["consumer"]
    assert interpolate(consumer["deploy"]["replicas"]) == "3"
    assert "container_name" not in consumer  # a fixed name forbids replicas
    env = _env(consumer)
    assert env["KAFKA_GROUP_ID"]
    assert env["STATE_URL"] == "redis://redis:6379/0"  # shared state across replicas
    assert env["KLAVIYO_BASE_URL"] == "http://sandbox:8080"
    assert env["KLAVIYO_ALLOW_HTTP"] == "true"  # on purpose: the sandbox speaks plain http
    assert env["KLAVIYO_API_KEY"] == SANDBOX_API_KEY
    assert env["METRICS_PORT"] == "9400"
    assert list(consumer.get("command", ["run"])) == ["run"]
    assert {"kafka-init", "redis", "sandbox"} <= set(consumer["depends_on"])


def test_the_app_reads_and_publishes_through_the_registry(
    services: dict[str, dict[str, Any]],
) -> None:
    """Confluent's API where Apicurio serves it (the container's port, /apis/ccompat/v7), for
    the consumer and the producer; both start once its compatibility is set (BACKWARD)."""
    registry = services["schema-registry"]
    assert any(str(p).endswith(":8080") for p in registry["ports"])
    for name in ("consumer", "producer"):
        assert _env(services[name])["SCHEMA_REGISTRY_URL"] == f"http://schema-registry:8080{API}"
        waits = services[name]["depends_on"]["schema-registry-init"]
        assert waits == {"condition": "service_completed_successfully"}
    init = services["schema-registry-init"]
    assert init["depends_on"]["schema-registry"] == {"condition": "service_healthy"}
    script = " ".join(init["command"])
    assert f"schema-registry:8080{API}/config" in script and '"BACKWARD"' in script
    assert _env(registry)["APICURIO_STORAGE_KIND"] == "kafkasql"  # schemas survive a restart


def test_sandbox_and_producer_commands(services: dict[str, dict[str, Any]]) -> None:
    assert services["sandbox"]["command"] == ["sandbox", "--host", "0.0.0.0", "--port", "8080"]
    assert services["producer"]["command"] == ["produce", "--sample", "10000"]
    assert services["producer"].get("restart") == "no"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_names_are_settings_fields(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    unknown = {n for n in _env(services[name]) if not known_environment_variable(n)}
    assert not unknown, f"{name}: {sorted(unknown)} are not fields of stream.core.settings.Settings"


@pytest.mark.parametrize("replicas", ["3", "5", "1"])
def test_replicas_never_ask_for_more_than_the_quota(
    services: dict[str, dict[str, Any]], replicas: str
) -> None:
    """The rate share is derived from the replica count: N replicas ask for N × 1/N = 1."""
    env = {} if replicas == "3" else {"CONSUMER_REPLICAS": replicas}
    consumer = services["consumer"]
    count = int(interpolate(consumer["deploy"]["replicas"], env))
    share = interpolate(_env(consumer)["KLAVIYO_RATE_SHARE"], env)
    parsed = load_settings(klaviyo_rate_share=share).klaviyo_rate_share
    assert count == int(replicas)
    assert count * parsed == pytest.approx(1.0)


def test_monitoring_is_mounted(services: dict[str, dict[str, Any]]) -> None:
    prom_volumes = " ".join(services["prometheus"]["volumes"])
    assert "./monitoring:/etc/prometheus" in prom_volumes
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana_volumes = " ".join(services["grafana"]["volumes"])
    assert "./monitoring/grafana/provisioning:/etc/grafana/provisioning" in grafana_volumes
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"mounted path {source} does not exist"


def test_dockerfile_base_image_is_pinned(dockerfile: list[str]) -> None:
    stages = [ln.split() for ln in dockerfile if ln.upper().startswith("FROM ")]
    assert stages, "no FROM"
    names = {parts[3] for parts in stages if len(parts) > 3 and parts[2].upper() == "AS"}
    assert names == {"base", "sandbox", "service"}
    assert stages[-1][3] == "service", "the service is the default (last) target"
    for parts in stages:
        if parts[1] in names:
            continue  # built on an earlier stage
        _assert_pinned(parts[1])
        assert parts[1].startswith("python:3.11")


def test_dockerfile_runs_as_non_root(dockerfile: list[str]) -> None:
    users = [ln.split()[1] for ln in dockerfile if ln.upper().startswith("USER ")]
    assert users, "no USER instruction: the container would run as root"
    final = users[-1].split(":")[0]
    assert final not in ("root", "0")


def test_dockerfile_installs_dependencies_before_copying_source(dockerfile: list[str]) -> None:
    def index(prefix: str) -> int:
        return next(i for i, ln in enumerate(dockerfile) if ln.startswith(prefix))

    assert index("COPY pyproject.toml") < index("COPY stream")
    installs = [ln for ln in dockerfile if "pip install" in ln]
    assert installs and all("--no-cache-dir" in ln for ln in installs)
    assert any(
        re.search(r"pip install --no-cache-dir (--no-deps )?\.(\s|$)", ln) for ln in installs
    )


def test_dockerfile_healthcheck_uses_the_standard_library(dockerfile: list[str]) -> None:
    checks = [ln for ln in dockerfile if ln.upper().startswith("HEALTHCHECK ")]
    assert len(checks) == 2  # one per target: the sandbox's port, the service's /healthz
    assert "urllib" in checks[-1] and "/healthz" in checks[-1]
    assert all("curl" not in check for check in checks)


def test_dockerfile_entrypoint_and_default_command(dockerfile: list[str]) -> None:
    assert 'ENTRYPOINT ["klaviyo-stream"]' in dockerfile
    commands = [ln for ln in dockerfile if ln.startswith("CMD ")]
    assert commands[-1] == 'CMD ["run"]'  # the service target's
    assert 'CMD ["sandbox", "--host", "0.0.0.0", "--port", "8080"]' in commands


def _pinned(lock: str) -> set[str]:
    lines = [
        line.strip() for line in (ROOT / lock).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert all("==" in line for line in lines)
    return {re.split("==", line)[0].lower().replace("_", "-") for line in lines}


def _names(requirements: list[str]) -> set[str]:
    return {
        re.split(r"[\[<>=~! ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in requirements
    }


def test_image_installs_exact_pins_covering_every_dependency() -> None:
    """Reproducible images: the service installs requirements.lock, which pins (==) every
    dependency pyproject.toml declares; the sandbox adds requirements-local.lock, which pins
    the `local` extra. The service's lock holds nothing only the sandbox needs."""
    dockerfile = DOCKERFILE.read_text()
    assert "-r requirements.lock" in dockerfile
    assert "-r /tmp/requirements-local.lock" in dockerfile
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    service, local = _pinned("requirements.lock"), _pinned("requirements-local.lock")
    assert _names(project["dependencies"]) <= service, _names(project["dependencies"]) - service
    extra = _names(project["optional-dependencies"]["local"])
    assert extra <= local and not extra & service
