"""The Helm chart deploy/helm/neo-exporter: rendered by Helm itself, checked offline.

`helm template` (Helm v4, installed by tests/install_helm.sh) renders the chart with the
default values and with ci/everything-on-values.yaml, once per module. The core objects
are validated against the Kubernetes 1.35 schemas that kubernetes-validate ships (strict:
an unknown field fails); ServiceMonitor and PrometheusRule, whose CRDs are not in those
schemas, against tests/fixtures/prometheus-operator.schema.json, a schema of the
Prometheus Operator fields a chart may set, written for these tests. The rules the
everything-on values render (another selector, other thresholds) pass promtool's unit tests
in tests/fixtures/selector.rules-test.yml.
"""

from __future__ import annotations

import base64
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy_files import load_module, promql_selectors

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "neo-exporter"
EVERYTHING_ON = CHART / "ci" / "everything-on-values.yaml"
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
KUBERNETES_VERSION = "1.35"
RELEASE = "neo-exporter"
# Labels only Helm puts on objects (release bookkeeping); the kustomize base has none.
HELM_LABELS = frozenset(
    {
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by",
        "helm.sh/chart",
    }
)

Objects = dict[tuple[str, str], dict[str, Any]]


def helm() -> str:
    """The helm binary tests/install_helm.sh installs; fail (not skip) when missing."""
    installed = ROOT / ".tools" / "bin" / "helm"
    found = str(installed) if installed.exists() else shutil.which("helm")
    if found is None:
        pytest.fail("helm not found: run bash tests/install_helm.sh (tests/run.sh does)")
    return found


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def template(*arguments: str) -> subprocess.CompletedProcess[str]:
    return run(helm(), "template", RELEASE, str(CHART), "--namespace", "neo", *arguments)


def by_kind_and_name(text: str) -> Objects:
    documents = [doc for doc in yaml.safe_load_all(text) if doc]
    objects = {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}
    assert len(objects) == len(documents), "two objects share a kind and name"
    return objects


@pytest.fixture(scope="module")
def default_objects() -> Objects:
    done = template()
    assert done.returncode == 0, done.stderr
    return by_kind_and_name(done.stdout)


@pytest.fixture(scope="module")
def everything_objects() -> Objects:
    done = template("--values", str(EVERYTHING_ON))
    assert done.returncode == 0, done.stderr
    return by_kind_and_name(done.stdout)


@pytest.fixture(scope="module")
def kustomize_objects() -> Objects:
    kubectl = Path(sys.executable).parent / "kubectl"
    done = run(str(kubectl), "kustomize", str(KUSTOMIZE))
    assert done.returncode == 0, done.stderr
    return by_kind_and_name(done.stdout)


def operator_schema(kind: str) -> dict[str, Any]:
    schema = json.loads((FIXTURES / "prometheus-operator.schema.json").read_text())
    return {**schema, "$ref": f"#/definitions/{kind}"}


def validate(document: dict[str, Any]) -> None:
    """Against the Kubernetes schemas, or the Prometheus Operator fields for its CRDs."""
    if document["apiVersion"].startswith("monitoring.coreos.com/"):
        jsonschema.validate(document, operator_schema(document["kind"]))
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def rule(objects: Objects, name: str) -> dict[str, Any]:
    """The rule recording or alerting *name* in the rendered PrometheusRule."""
    groups = next(doc for (kind, _), doc in objects.items() if kind == "PrometheusRule")
    return next(
        r
        for g in groups["spec"]["groups"]
        for r in g["rules"]
        if name in (r.get("record"), r.get("alert"))
    )


# --- rendering and schemas -------------------------------------------------------------


def test_default_values_render_the_kustomize_objects(
    default_objects: Objects, kustomize_objects: Objects
) -> None:
    assert set(default_objects) == set(kustomize_objects)


def test_everything_on_adds_secret_dashboard_and_network_policy(
    everything_objects: Objects,
) -> None:
    assert sorted(everything_objects) == [
        ("ConfigMap", "neo-dashboard"),
        ("Deployment", "neo"),
        ("NetworkPolicy", "neo"),
        ("PersistentVolumeClaim", "neo-state"),
        ("PrometheusRule", "neo"),
        ("Secret", "neo"),
        ("Service", "neo"),
        ("ServiceMonitor", "neo"),
    ]


@pytest.mark.parametrize("values", ["default", "everything"])
def test_rendered_objects_pass_the_schemas(values: str, request: pytest.FixtureRequest) -> None:
    objects: Objects = request.getfixturevalue(f"{values}_objects")
    for document in objects.values():
        validate(document)


def test_schemas_refuse_a_misplaced_field(default_objects: Objects) -> None:
    """The validation can fail: an unknown field, core or CRD, is an error."""
    deployment = json.loads(json.dumps(default_objects[("Deployment", RELEASE)]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    monitor = json.loads(json.dumps(default_objects[("ServiceMonitor", RELEASE)]))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


@pytest.mark.parametrize("values", [(), ("--values", str(EVERYTHING_ON))])
def test_helm_lint_strict_passes(values: tuple[str, ...]) -> None:
    done = run(helm(), "lint", "--strict", str(CHART), *values)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout


# --- the chart against the kustomize base ----------------------------------------------


def without_helm_bookkeeping(value: Any) -> Any:
    """*value* less the release's labels, its namespace and the PVC's keep policy."""
    if isinstance(value, dict):
        return {
            key: without_helm_bookkeeping(item)
            for key, item in value.items()
            if key not in HELM_LABELS
            and key != "namespace"
            and not (key == "annotations" and item == {"helm.sh/resource-policy": "keep"})
        }
    if isinstance(value, list):
        return [without_helm_bookkeeping(item) for item in value]
    return value


def test_default_values_render_what_the_kustomize_base_builds(
    default_objects: Objects, kustomize_objects: Objects
) -> None:
    """Object for object, field for field, once Helm's release labels are set aside."""
    for key, built in kustomize_objects.items():
        assert without_helm_bookkeeping(default_objects[key]) == built, key


def test_release_labels_keep_two_releases_apart(default_objects: Objects) -> None:
    deployment = default_objects[("Deployment", RELEASE)]["spec"]
    service = default_objects[("Service", RELEASE)]["spec"]
    for selector in (deployment["selector"]["matchLabels"], service["selector"]):
        assert selector["app.kubernetes.io/instance"] == RELEASE


# --- values ----------------------------------------------------------------------------


def test_everything_on_values_reach_the_objects(everything_objects: Objects) -> None:
    pod = everything_objects[("Deployment", "neo")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    secret = everything_objects[("Secret", "neo")]
    volume = next(v for v in pod["volumes"] if "secret" in v)
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert volume["secret"]["secretName"] == "neo"
    assert env["NEO_EXPORTER_API_TOKEN_FILE"] == f"{mount['mountPath']}/api-token"
    assert {key: base64.b64decode(value).decode() for key, value in secret["data"].items()} == {
        "api-token": "neo_token_for_the_chart_tests"
    }
    assert "NEO_EXPORTER_API_KEY_FILE" not in env
    assert env["NEO_EXPORTER_POLL_INTERVAL"] == "120"
    assert env["TZ"] == "UTC"
    assert container["image"] == "registry.example.com/neo-exporter:0.1.0-rc1"
    assert pod["terminationGracePeriodSeconds"] == 120
    claim = everything_objects[("PersistentVolumeClaim", "neo-state")]["spec"]
    assert (claim["storageClassName"], claim["resources"]["requests"]["storage"]) == (
        "fast-ssd",
        "5Gi",
    )
    assert everything_objects[("Service", "neo")]["spec"]["ports"][0]["port"] == 9100
    monitor = everything_objects[("ServiceMonitor", "neo")]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["interval"] == "1m"


def test_existing_secret_and_claim_are_used_not_created() -> None:
    done = template(
        "--set", "credentials.existingSecret=neo-key,credentials.secretKey=key",
        "--set", "persistence.existingClaim=old-ledger",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    objects = by_kind_and_name(done.stdout)
    assert {kind for kind, _ in objects} == {
        "Deployment", "Service", "ServiceMonitor", "PrometheusRule",
    }  # fmt: skip
    pod = objects[("Deployment", RELEASE)]["spec"]["template"]["spec"]
    volumes = {next(iter(set(v) - {"name"})): v for v in pod["volumes"]}
    assert volumes["secret"]["secret"]["secretName"] == "neo-key"
    assert volumes["persistentVolumeClaim"]["persistentVolumeClaim"]["claimName"] == "old-ledger"
    env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
    assert env["NEO_EXPORTER_API_KEY_FILE"] == "/etc/neo-exporter/secret/key"


def test_network_policy_admits_only_prometheus_to_the_metrics_port(
    everything_objects: Objects,
) -> None:
    policy = everything_objects[("NetworkPolicy", "neo")]["spec"]
    pod_labels = everything_objects[("Deployment", "neo")]["spec"]["template"]["metadata"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    [rule_] = policy["ingress"]
    assert rule_["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    [source] = rule_["from"]
    assert source["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert source["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
    }


def test_dashboard_configmap_carries_the_dashboard_for_the_sidecar(
    everything_objects: Objects,
) -> None:
    config_map = everything_objects[("ConfigMap", "neo-dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Neo"}
    shipped = json.loads((ROOT / "grafana" / "neo-exporter-dashboard.json").read_text())
    assert json.loads(config_map["data"]["neo-exporter-dashboard.json"]) == shipped


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("serviceMonitor.enabeld=false", "additional properties 'enabeld' not allowed"),
        ("persistence.enabled=yes", "/persistence/enabled"),
        ("service.port=0", "/service/port"),
        ("credentials.type=apikey", "/credentials/type"),
        ("prometheusRule.selector=job=neo", "/prometheusRule/selector"),
        ("serviceMonitor.interval=30", "/serviceMonitor/interval"),
    ],
)
def test_values_schema_rejects_a_mistyped_value(setting: str, complaint: str) -> None:
    done = template("--set", setting)
    assert done.returncode != 0, f"{setting} was accepted"
    assert complaint in done.stderr


# --- rules -----------------------------------------------------------------------------


def test_rules_read_every_series_through_the_selector(everything_objects: Objects) -> None:
    """Every series an expression reads is either a recorded one or carries the selector."""
    groups = everything_objects[("PrometheusRule", "neo")]["spec"]["groups"]
    unselected = [
        (r.get("record") or r.get("alert"), name)
        for g in groups
        for r in g["rules"]
        for name, matchers in promql_selectors(r["expr"])
        if ":" not in name and not matchers.startswith('{job="neo",namespace="billing"')
    ]
    assert unselected == []
    assert not any("neo-exporter" in r["expr"] for g in groups for r in g["rules"])


def test_chart_and_generator_swap_the_selector_alike(everything_objects: Objects) -> None:
    """The chart's rules are the generator's for the same selector, but for the values'
    thresholds and runbook page."""
    generator = load_module(KUSTOMIZE / "generate_prometheusrule.py", "generate_prometheusrule")
    selector = 'job="neo",namespace="billing"'
    expected = generator.with_selector(generator.rule_groups(), selector)
    rendered = everything_objects[("PrometheusRule", "neo")]["spec"]["groups"]
    values = yaml.safe_load(EVERYTHING_ON.read_text())["prometheusRule"]
    default_url = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"][
        "runbookUrl"
    ]
    thresholds = {
        "neo:usd_per_credit": "vector(12.5)",
        "neo:settings:hourly_budget_credits": "vector(20)",
        "neo:settings:daily_budget_credits": "vector(250)",
        "neo:settings:low_balance_credits": "vector(50)",
        "neo:settings:unreconciled_credits": "vector(2.5)",
    }
    for group in expected:
        for r in group["rules"]:
            if r.get("record") in thresholds:
                r["expr"] = thresholds[r["record"]]
            if "runbook_url" in r.get("annotations", {}):
                url = r["annotations"]["runbook_url"]
                r["annotations"]["runbook_url"] = url.replace(default_url, values["runbookUrl"])
    assert rendered == expected


def test_default_rules_select_the_service_name_as_job() -> None:
    done = template("--set", "fullnameOverride=neo-prod")
    assert done.returncode == 0, done.stderr
    objects = by_kind_and_name(done.stdout)
    assert rule(objects, "NeoExporterDown")["expr"].startswith('up{job="neo-prod"}')
    assert ("Service", "neo-prod") in objects


@pytest.mark.prometheus
def test_rules_rendered_with_another_selector_pass_promtool_unit_tests(
    everything_objects: Objects, tmp_path: Path
) -> None:
    groups = everything_objects[("PrometheusRule", "neo")]["spec"]["groups"]
    (tmp_path / "neo.rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    tests = shutil.copy(FIXTURES / "selector.rules-test.yml", tmp_path)
    promtool = shutil.which("promtool")
    assert promtool is not None, "install the Debian package prometheus (tests/run.sh does)"
    done = run(promtool, "test", "rules", str(tests))
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_install_command_renders() -> None:
    """The README's `helm install` line, as `helm template`, renders the chart."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Helm", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    command = next(line for line in section.replace("\\\n", " ").splitlines() if "helm " in line)
    words = shlex.split(command)
    assert words[:4] == ["helm", "install", RELEASE, "deploy/helm/neo-exporter"]
    done = run(helm(), "template", *words[2:3], str(ROOT / words[3]), *words[4:])
    assert done.returncode == 0, done.stderr
    objects = by_kind_and_name(done.stdout)
    monitor = objects[("ServiceMonitor", RELEASE)]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["namespace"] == "neo"
