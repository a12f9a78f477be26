"""What ships for deployment, checked statically: the Kubernetes manifests of deploy/kubernetes/
against Kubernetes' own OpenAPI schemas (the ``kubernetes-validate`` package, strict: unknown
fields are errors) and against each other and our config; the Dockerfile parsed instruction by
instruction. Docker itself is not available where the tests run (docs/operations.md "Docker");
tests/integration/test_deploy_artifacts.py runs what can run here (systemd-analyze, haproxy -c,
-validate on every shipped config).
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from coraza_spoa_py import config

PROJECT_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = PROJECT_ROOT / "deploy" / "kubernetes"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
SYSTEM_DEPS = PROJECT_ROOT / "scripts" / "install-system-deps.sh"
KUBERNETES_VERSION = "1.30"
MANIFESTS = sorted(K8S_DIR.glob("*.yaml"))
AGENT_IMAGE = re.compile(r"^coraza-spoa-py:")
AGENT_UID = 10001


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in documents(path)]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def agent_containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return [c for c in containers if AGENT_IMAGE.match(c["image"])]


def config_maps_by_name() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in of_kind(all_documents(), "ConfigMap")}


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


# ---- Kubernetes: schemas ------------------------------------------------------------------


def test_the_expected_manifests_ship() -> None:
    assert [p.name for p in MANIFESTS] == [
        "agent-audit-log.yaml",
        "agent-deployment.yaml",
        "configmap.yaml",
        "haproxy-sidecar.yaml",
    ]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _replicas_as_text(doc: dict[str, Any]) -> None:
    doc["spec"]["replicas"] = "three"


def _misspelt_field(doc: dict[str, Any]) -> None:
    doc["spec"]["replica"] = doc["spec"].pop("replicas")


def _port_as_text(doc: dict[str, Any]) -> None:
    agent_containers(doc)[0]["ports"][0]["containerPort"] = "12345/tcp"


def _container_without_name(doc: dict[str, Any]) -> None:
    del agent_containers(doc)[0]["name"]


@pytest.mark.parametrize(
    "break_it", [_replicas_as_text, _misspelt_field, _port_as_text, _container_without_name]
)
def test_a_broken_manifest_fails_the_validation(break_it) -> None:
    (deployment,) = of_kind(documents(K8S_DIR / "agent-deployment.yaml"), "Deployment")
    broken = copy.deepcopy(deployment)
    break_it(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# ---- Kubernetes: consistent with each other and with the agent -------------------------------


def test_the_agent_deployment_is_three_replicas_behind_a_service_on_12345() -> None:
    docs = documents(K8S_DIR / "agent-deployment.yaml")
    (deployment,) = of_kind(docs, "Deployment")
    (service,) = of_kind(docs, "Service")
    assert deployment["spec"]["replicas"] == 3
    (port,) = service["spec"]["ports"]
    assert port["port"] == 12345
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = agent_containers(deployment)
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[port["targetPort"]] == 12345


@pytest.mark.parametrize(
    "path",
    [p for p in MANIFESTS if of_kind(documents(p), "Deployment")],
    ids=lambda p: p.name,
)
def test_each_agent_container_matches_its_config_probes_and_runs_as_non_root(path: Path) -> None:
    maps = config_maps_by_name()
    for deployment in of_kind(documents(path), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = agent_containers(deployment)
        args = container["args"]
        # the config file the args name is the mounted ConfigMap's key
        config_path = Path(flag_value(args, "-config"))
        (mount,) = [
            m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent)
        ]
        config_map = maps[volumes[mount["name"]]["configMap"]["name"]]
        cfg = config.parse(config_map["data"][config_path.name]).config
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert cfg.bind.port == ports["spop"]
        assert cfg.applications[0].response_check is True
        # the probes ask the -metrics-addr listener: /healthz alive, /readyz ready
        metrics_port = int(flag_value(args, "-metrics-addr").rsplit(":", 1)[1])
        assert ports["metrics"] == metrics_port
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] == "metrics"
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert context["runAsNonRoot"] is True and context["runAsUser"] == AGENT_UID
        assert context["allowPrivilegeEscalation"] is False
        # SIGTERM drains for graceful_timeout_s; Kubernetes must wait longer before killing
        assert pod["terminationGracePeriodSeconds"] > cfg.graceful_timeout_s


def test_the_sidecar_haproxy_uses_the_shipped_coraza_cfg_and_the_local_agent() -> None:
    docs = documents(K8S_DIR / "haproxy-sidecar.yaml")
    (haproxy_files,) = [
        d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == "haproxy-config"
    ]
    shipped = (PROJECT_ROOT / "etc" / "haproxy" / "coraza.cfg").read_text()
    assert haproxy_files["data"]["coraza.cfg"] == shipped
    (deployment,) = of_kind(docs, "Deployment")
    (agent,) = agent_containers(deployment)
    spop = next(p["containerPort"] for p in agent["ports"] if p["name"] == "spop")
    servers = re.findall(r"(?m)^\s+server \S+ (\S+)", haproxy_files["data"]["haproxy.cfg"])
    assert f"127.0.0.1:{spop}" in servers


def test_the_audit_log_variant_shares_the_audit_file_with_its_streaming_container() -> None:
    docs = documents(K8S_DIR / "agent-audit-log.yaml")
    (deployment,) = of_kind(docs, "Deployment")
    (config_map,) = of_kind(docs, "ConfigMap")
    directives = config.parse(config_map["data"]["config.yml"]).config.applications[0].directives
    audit_file = Path(first_group(r"(?m)^SecAuditLog (\S+)$", directives))
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (streamer,) = [c for c in containers if not AGENT_IMAGE.match(c["image"])]
    assert str(audit_file) in streamer["command"]
    for container in containers:
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[str(audit_file.parent)] == "audit-log"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["audit-log"]


# ---- Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def apt_packages(run_arguments: str) -> list[str]:
    words = shlex.split(run_arguments.replace("&&", " && "))
    start = words.index("install")
    packages = []
    for word in words[start + 1 :]:
        if word == "&&":
            break
        if not word.startswith("-"):
            packages.append(word)
    return packages


def first_group(pattern: str, text: str, flags: int = 0) -> str:
    """Group 1 of ``pattern``'s first match in ``text``; no match fails the test."""
    found = re.search(pattern, text, flags)
    assert found is not None, f"{pattern!r} not found"
    return found.group(1)


def system_deps_packages() -> set[str]:
    block = first_group(r"packages=\((.*?)\n\)", SYSTEM_DEPS.read_text(), re.DOTALL)
    return {word for line in block.splitlines() for word in line.split("#")[0].split()}


def test_every_stage_is_debian_bookworm() -> None:
    froms = [args.split()[0] for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert froms and all(image.startswith("debian:bookworm") for image in froms), froms


def test_the_apt_packages_are_those_of_install_system_deps() -> None:
    runs = [args for keyword, args in dockerfile_instructions() if keyword == "RUN"]
    installed = [apt_packages(args) for args in runs if "apt-get install" in args]
    assert len(installed) == 2  # the builder and the image
    allowed = system_deps_packages()
    assert all(set(packages) <= allowed for packages in installed), (installed, allowed)
    image_packages = set(installed[-1])
    assert {"libmodsecurity3", "modsecurity-crs"} <= image_packages
    assert not image_packages & {"gcc", "g++", "python3-dev", "libc6-dev", "libmodsecurity-dev"}


def test_the_image_runs_as_the_non_root_user_it_creates() -> None:
    stage = final_stage()
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0")
    runs = " ".join(args for keyword, args in stage if keyword == "RUN")
    assert re.search(rf"useradd .*--uid {uid}\b", runs)


def test_healthcheck_and_entrypoint_are_in_the_venv_the_image_copies() -> None:
    instructions = dockerfile_instructions()
    stage = final_stage()
    builder_runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    venv = first_group(r"python3 -m venv (\S+)", builder_runs)
    copies = [args for keyword, args in stage if keyword == "COPY"]
    assert f"--from=builder {venv} {venv}" in copies
    (healthcheck,) = [args for keyword, args in stage if keyword == "HEALTHCHECK"]
    command = yaml.safe_load(healthcheck.split(" CMD ", 1)[1])  # exec form: a JSON list
    assert command[0] == f"{venv}/bin/python"
    (entrypoint,) = [yaml.safe_load(args) for keyword, args in stage if keyword == "ENTRYPOINT"]
    assert entrypoint == [f"{venv}/bin/coraza-spoa-py"]
    assert "coraza-spoa-py -version" in builder_runs  # the builder ran the entry point once
    # the health check asks /readyz on the port CMD gives -metrics-addr
    (cmd,) = [yaml.safe_load(args) for keyword, args in stage if keyword == "CMD"]
    metrics_port = flag_value(cmd, "-metrics-addr").rsplit(":", 1)[1]
    assert f"http://127.0.0.1:{metrics_port}/readyz" in command[-1]


def test_the_image_config_listens_on_every_interface_on_an_exposed_port() -> None:
    stage = final_stage()
    (copy_config,) = [a for k, a in stage if k == "COPY" and a.startswith("deploy/docker/")]
    source, target = copy_config.split()
    (cmd,) = [yaml.safe_load(args) for keyword, args in stage if keyword == "CMD"]
    assert flag_value(cmd, "-config") == target
    cfg = config.parse((PROJECT_ROOT / source).read_text()).config
    assert cfg.bind.host in ("0.0.0.0", "")
    exposed = {port for k, a in stage if k == "EXPOSE" for port in a.split()}
    metrics_port = flag_value(cmd, "-metrics-addr").rsplit(":", 1)[1]
    assert {str(cfg.bind.port), metrics_port} <= exposed


def test_the_sidecar_haproxy_has_the_shipped_buffer_size() -> None:
    """coraza.cfg's body cap is sized for the shipped tune.bufsize: the sidecar must match it,
    or HAProxy fails (or, before 3.1, splits) every message whose body reaches the cap."""
    docs = documents(K8S_DIR / "haproxy-sidecar.yaml")
    (haproxy_files,) = [
        d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == "haproxy-config"
    ]
    bufsize = re.compile(r"(?m)^\s*tune\.bufsize\s+(\d+)")
    shipped = (PROJECT_ROOT / "etc" / "haproxy" / "haproxy.cfg").read_text()
    assert bufsize.findall(haproxy_files["data"]["haproxy.cfg"]) == bufsize.findall(shipped)
    assert bufsize.findall(shipped) == ["131072"]
