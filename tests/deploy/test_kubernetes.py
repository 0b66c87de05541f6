"""deploy/kubernetes/: valid against Kubernetes' own schemas, and consistent with the service.

There is no cluster here: `kubernetes-validate` checks every manifest against the published
OpenAPI schemas of the oldest and newest Kubernetes it knows (strict: an unknown field is an
error). What a schema cannot see is checked by reading the manifests: every environment
variable is a setting the service reads, the values load as valid settings, selectors and port
names meet, the probes hit /healthz and /readyz, and the replicas never ask Klaviyo for more
than the account's quota.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from stream.core.settings import known_environment_variable, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
VERSIONS = sorted(set(all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))
CHECKED_VERSIONS = [VERSIONS[0], VERSIONS[-1]]
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}  # not in Kubernetes' schemas


def manifests() -> dict[str, dict[str, Any]]:
    """Kind → resource, from every manifest file (kustomization.yaml is not a resource)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in found, f"two {document['kind']}s"
            found[document["kind"]] = document
    return found


RESOURCES = manifests()


def container() -> dict[str, Any]:
    [only] = RESOURCES["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    return only


def env_values() -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container()["env"]}


@pytest.mark.parametrize("version", CHECKED_VERSIONS)
@pytest.mark.parametrize(
    "kind", sorted(k for k, r in RESOURCES.items() if (r["apiVersion"], k) not in CRDS)
)
def test_every_manifest_is_valid_for_kubernetes(kind: str, version: str) -> None:
    kubernetes_validate.validate(RESOURCES[kind], version, strict=True)


def test_only_known_custom_resources() -> None:
    """The CRDs Kubernetes' schemas lack are the ones checked by hand below."""
    custom = {
        (r["apiVersion"], k) for k, r in RESOURCES.items() if "." in r["apiVersion"].split("/")[0]
    }
    assert custom == CRDS


def test_a_broken_manifest_is_caught() -> None:
    """The validator is not a rubber stamp: a misspelt field and a wrong type fail."""
    broken = yaml.safe_load(yaml.safe_dump(RESOURCES["StatefulSet"]))
    broken["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, CHECKED_VERSIONS[-1], strict=True)
    typed = yaml.safe_load(yaml.safe_dump(RESOURCES["Service"]))
    typed["spec"]["ports"][0]["port"] = "metrics"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typed, CHECKED_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == files - {"secret.example.yaml"}


def test_every_environment_variable_is_a_setting_the_service_knows() -> None:
    names = set(RESOURCES["ConfigMap"]["data"]) | set(env_values())
    names |= set(RESOURCES["Secret"]["stringData"])
    unknown = sorted(n for n in names if not known_environment_variable(n))
    assert not unknown, f"not settings of stream/core/settings.py: {unknown}"
    assert not known_environment_variable("KAFKA_TOPIC")  # the check can say no


def test_the_configured_values_load_as_settings() -> None:
    values = {k.lower(): v for k, v in RESOURCES["ConfigMap"]["data"].items()}
    values.update(
        {k.lower(): v["value"] for k, v in env_values().items() if "value" in v}
    )
    values.update({k.lower(): v for k, v in RESOURCES["Secret"]["stringData"].items()})
    settings = load_settings(**values)
    assert str(settings.state_url).startswith("redis")  # replicas share state: not SQLite
    assert settings.metrics_port == container()["ports"][0]["containerPort"]


def test_stable_pod_names_feed_static_membership() -> None:
    ref = env_values()["KAFKA_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]
    assert ref["fieldPath"] == "metadata.name"


def test_secrets_come_from_the_secret() -> None:
    secret = RESOURCES["Secret"]["metadata"]["name"]
    for name in ("KLAVIYO_API_KEY", "STATE_URL"):
        ref = env_values()[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret, "key": name}
        assert name not in RESOURCES["ConfigMap"]["data"]


def test_registry_credentials_come_from_the_secret_when_it_has_them() -> None:
    ref = env_values()["SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"]["valueFrom"]["secretKeyRef"]
    assert ref == {
        "name": RESOURCES["Secret"]["metadata"]["name"],
        "key": "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
        "optional": True,  # no registry, or one without auth: the pod still starts
    }
    configmap = (DEPLOY / "configmap.yaml").read_text()
    assert "# SCHEMA_REGISTRY_URL:" in configmap and "/apis/ccompat/v7" in configmap


def test_probes_resources_and_shutdown() -> None:
    box = container()
    port_names = {p["name"] for p in box["ports"]}
    assert box["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert box["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert box["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert "metrics" in port_names
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(box["resources"][kind])
    grace = RESOURCES["StatefulSet"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > 30  # the service waits up to 30 s for in-flight requests, then commits


def test_replicas_never_ask_for_more_than_the_quota() -> None:
    """Any replica count (kubectl scale included): each takes 1/members of the quota
    (tests/promises/test_rate_share.py shows it follows the group)."""
    share = load_settings(klaviyo_rate_share=env_values()["KLAVIYO_RATE_SHARE"]["value"])
    assert share.klaviyo_rate_share == "auto"


def test_selectors_meet() -> None:
    labels = RESOURCES["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    service = RESOURCES["Service"]
    assert RESOURCES["StatefulSet"]["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"  # headless: one endpoint per replica
    for selector in (
        service["spec"]["selector"],
        RESOURCES["StatefulSet"]["spec"]["selector"]["matchLabels"],
        RESOURCES["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    assert RESOURCES["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_service_monitor_scrapes_the_service() -> None:
    monitor = RESOURCES["ServiceMonitor"]
    service = RESOURCES["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"
    ].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # the alerts select job="klaviyo-stream": the Operator names the job after the Service
    assert service["metadata"]["name"] == "klaviyo-stream"
