"""The deployment files in deploy/ agree with the server they deploy.

Nothing here starts a cluster, a container or systemd: the manifests, the Dockerfile and the
unit are read as data and checked against the code, for what would otherwise break only at
deploy time or silently (a probe on a path that is not a route, a renamed setting, a body
limit the proxy enforces lower than the server, a grace period shorter than gunicorn's).
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import importlib.util
import re
import shlex
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from heserve.server.service.auth import APIKeys
from heserve.server.service.config import ENV_PREFIX, ServerConfig
from heserve.server.web import gunicorn_conf
from heserve.server.web.app import create_app

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
# Settings the key-store work adds to ServerConfig: the manifests rely on them.
REDIS_SETTINGS = {"HESERVE_KEY_STORE", "HESERVE_REDIS_URL", "HESERVE_REDIS_TIMEOUT_SECONDS"}


# ---------------------------------------------------------------------------- helpers


def load_all(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def only(name: str, kind: str) -> dict:
    found = [doc for doc in load_all(name) if doc["kind"] == kind]
    assert len(found) == 1, f"{name}: expected one {kind}, found {len(found)}"
    return found[0]


def deployment() -> dict:
    return only("deployment.yaml", "Deployment")


def pod_spec() -> dict:
    return deployment()["spec"]["template"]["spec"]


def server_container() -> dict:
    (container,) = [c for c in pod_spec()["containers"] if c["name"] == "heserve"]
    return container


def configmap_env() -> dict[str, str]:
    return {k: str(v) for k, v in only("configmap.yaml", "ConfigMap")["data"].items()}


def deployment_env() -> dict[str, dict]:
    return {item["name"]: item for item in server_container().get("env", [])}


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of an environment file (systemd EnvironmentFile= syntax, no quoting used)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def gunicorn_env_names() -> set[str]:
    """The HESERVE_* variables gunicorn_conf.py reads itself (HESERVE_THREADS, HESERVE_ACCESS_LOG, ...)."""
    source = Path(gunicorn_conf.__file__).read_text()
    return set(re.findall(r"os\.environ\.get\(\s*[\"'](HESERVE_[A-Z0-9_]+)[\"']", source))


def known_env_names() -> set[str]:
    return {ENV_PREFIX + f.name.upper() for f in fields(ServerConfig)} | gunicorn_env_names()


def config_from(environ: dict[str, str]) -> ServerConfig:
    """What the server makes of these variables (raises on a value it would refuse at start)."""
    return ServerConfig.from_env({k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)})


def nginx_size(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value.strip())
    assert match, f"not an nginx size: {value!r}"
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]


def k8s_quantity(value: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", str(value))
    assert match, f"not a quantity: {value!r}"
    scale = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    scale.update({"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40})
    return float(match.group(1)) * scale[match.group(2)]


def redis_size(value: str) -> int:
    match = re.fullmatch(r"(\d+)(b|k|kb|m|mb|g|gb)?", value.strip().lower())
    assert match, f"not a redis size: {value!r}"
    units = {None: 1, "b": 1, "k": 1000, "kb": 1024, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}
    return int(match.group(1)) * units[match.group(2)]


def redis_directives(text: str) -> dict[str, str]:
    directives = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            directives[name.lower()] = value.strip()
    return directives


def flag(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)", line)
            assert match, f"{path.name}: not an exact pin: {line!r}"
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The real Flask app, with API keys on: probes must answer without one."""
    config = ServerConfig(
        keys_dir=tmp_path_factory.mktemp("deploy") / "keys",
        models_dir=REPO_ROOT / "models",
        api_keys="probe-check:not-a-real-key",
    )
    return create_app(config)


# ---------------------------------------------------------------------------- kubernetes


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, f"listed but missing: {listed - present}; present but not listed: {present - listed}"
    for name in present:
        for doc in load_all(name):
            assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), name


def test_probe_paths_are_routes_that_answer_without_credentials(app):
    adapter = app.url_map.bind("localhost")
    container = server_container()
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # A Redis outage must make pods unready, never restart them: only readiness may depend on it.
    assert probes["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    client = app.test_client()
    for kind, probe in probes.items():
        path = probe["httpGet"]["path"]
        adapter.match(path, method="GET")  # raises NotFound / MethodNotAllowed if it is no route
        assert client.get(path).status_code == 200, f"{kind} {path} needs credentials or fails"
    scrape_path = deployment()["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    adapter.match(scrape_path, method="GET")
    healthcheck = re.search(r"^HEALTHCHECK .*?(/v2/health/\w+)", (DEPLOY / "Dockerfile").read_text(), re.M | re.S)
    assert healthcheck and healthcheck.group(1) == "/v2/health/live"
    adapter.match(healthcheck.group(1), method="GET")


def test_ports_agree():
    container = server_container()
    (port,) = container["ports"]
    assert port["containerPort"] == 8000 and port["name"] == "http"
    assert int(flag(container["command"], "--port")) == port["containerPort"]
    assert flag(container["command"], "--host") == "0.0.0.0"
    assert container["command"][:1] == ["heserve-server"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[kind]["httpGet"]["port"] in (port["name"], port["containerPort"]), kind
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]
    service = only("service.yaml", "Service")
    assert service["spec"]["type"] == "ClusterIP"
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == 80
    assert service_port["targetPort"] in (port["name"], port["containerPort"])
    for rule in only("ingress.yaml", "Ingress")["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"].get("name") == service_port["name"] or backend["port"].get("number") == 80
    assert re.search(r"^EXPOSE 8000$", (DEPLOY / "Dockerfile").read_text(), re.M)
    # HESERVE_PORT would be overridden by --port anyway: if set, it must not contradict it.
    for environ in (configmap_env(), {k: v.get("value") for k, v in deployment_env().items()}):
        assert environ.get("HESERVE_PORT") in (None, str(port["containerPort"]))


def test_selectors_pick_the_right_pods():
    template_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment()["spec"]["selector"]["matchLabels"], template_labels)
    assert matches(only("service.yaml", "Service")["spec"]["selector"], template_labels)
    assert matches(only("pdb.yaml", "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], template_labels)
    redis_set = only("redis.yaml", "StatefulSet")
    redis_labels = redis_set["spec"]["template"]["metadata"]["labels"]
    assert matches(only("redis.yaml", "Service")["spec"]["selector"], redis_labels)
    assert not matches(only("service.yaml", "Service")["spec"]["selector"], redis_labels)
    policy = only("networkpolicy.yaml", "NetworkPolicy")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], redis_labels)
    allowed = [peer["podSelector"]["matchLabels"] for rule in policy["ingress"] for peer in rule["from"]]
    assert any(matches(selector, template_labels) for selector in allowed), "heserve pods cannot reach Redis"


def test_env_names_are_real_settings_and_values_parse():
    configmap, env = configmap_env(), deployment_env()
    names = {n for n in [*configmap, *env] if n.startswith(ENV_PREFIX)}
    unknown = names - known_env_names()
    assert not unknown, f"not read by the server or gunicorn_conf.py: {sorted(unknown)}"
    # Required by this deployment (and fields of ServerConfig once the Redis key store is in).
    assert REDIS_SETTINGS <= names
    assert env["HESERVE_KEY_STORE"]["value"] == "redis", "two replicas need the shared key store"
    literal = {name: item["value"] for name, item in env.items() if "value" in item}
    config = config_from({**configmap, **literal})
    assert config.key_store == "redis"
    assert config.auth_exempt_health, "the kubelet's probes carry no API key"
    assert config.api_keys_file is not None


def test_workers_follow_the_cpu_limit():
    container = server_container()
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert k8s_quantity(requests["cpu"]) == k8s_quantity(limits["cpu"])
    assert k8s_quantity(requests["memory"]) == k8s_quantity(limits["memory"])
    cpus = int(-(-k8s_quantity(limits["cpu"]) // 1))
    workers = deployment_env()["HESERVE_WORKERS"]
    if "value" in workers:
        assert int(workers["value"]) == cpus
    else:
        ref = workers["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == "limits.cpu" and ref.get("containerName", "heserve") == "heserve"
        assert str(ref.get("divisor", "1")) == "1"
    # ~2 GiB per worker: see the sizing note at the top of deployment.yaml.
    assert k8s_quantity(limits["memory"]) >= cpus * 2 * 2**30


def test_graceful_shutdown_fits_in_the_grace_period():
    spec, container = pod_spec(), server_container()
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    # The preStop sleep counts against the grace period, before gunicorn sees SIGTERM.
    assert spec["terminationGracePeriodSeconds"] > int(sleep[1]) + gunicorn_conf.graceful_timeout


def test_liveness_waits_at_least_a_worker_timeout():
    probe = server_container()["livenessProbe"]
    timeout = config_from(configmap_env()).timeout_seconds
    assert probe["periodSeconds"] * probe["failureThreshold"] >= timeout
    readiness = server_container()["readinessProbe"]
    assert readiness["timeoutSeconds"] > 2 * config_from(configmap_env()).redis_timeout_seconds


def test_pod_security():
    spec, container = pod_spec(), server_container()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "heserve-server writes its metrics directory in /tmp"
    keys_dir = configmap_env().get("HESERVE_KEYS_DIR") or deployment_env()["HESERVE_KEYS_DIR"]["value"]
    assert any(Path(keys_dir).is_relative_to(path) for path in mounts), "the disk key store would be read-only"
    user = re.search(r"^USER (\d+)(?::(\d+))?$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert user and int(user.group(1)) == spec["securityContext"]["runAsUser"]


def test_api_keys_secret_is_mounted_where_the_server_reads_it(tmp_path):
    secret = only("secret-example.yaml", "Secret")
    (item,) = secret["stringData"]
    keys_file = Path(deployment_env()["HESERVE_API_KEYS_FILE"]["value"])
    container, spec = server_container(), pod_spec()
    (mount,) = [m for m in container["volumeMounts"] if keys_file.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert keys_file == Path(mount["mountPath"]) / item
    example = tmp_path / "api-keys"
    example.write_text(secret["stringData"][item])
    assert APIKeys.load(example).enabled  # the format the server parses at start
    assert "sha256:" in example.read_text() and "PLACEHOLDER" in (K8S / "secret-example.yaml").read_text()


def test_ingress_limits_match_the_server():
    annotations = only("ingress.yaml", "Ingress")["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    body = nginx_size(annotations[prefix + "proxy-body-size"])
    assert body == ServerConfig().max_body_bytes == 512 * 1024**2
    assert body == config_from(configmap_env()).max_body_bytes
    timeout = config_from(configmap_env()).timeout_seconds
    assert int(annotations[prefix + "proxy-read-timeout"]) > timeout, "nginx would cut a long batch first"
    assert int(annotations[prefix + "proxy-send-timeout"]) >= 60
    # The controller's 60 s upstream keepalive outlives gunicorn's: no upstream keepalive at all.
    assert annotations[prefix + "proxy-http-version"] == "1.0"


def test_redis_keeps_keys_across_restarts():
    conf = redis_directives(only("redis.yaml", "ConfigMap")["data"]["redis.conf"])
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"
    statefulset = only("redis.yaml", "StatefulSet")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    data = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]]
    assert conf["dir"] in data.values() and any(data.get(claim) == conf["dir"] for claim in claims)
    config_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "config")
    assert container["command"][-1] == f"{config_mount}/redis.conf"
    # Room beside the data for an AOF rewrite's fork and the replies in flight.
    assert redis_size(conf["maxmemory"]) <= k8s_quantity(container["resources"]["limits"]["memory"]) * 0.6
    # The same persistence and eviction choices as the configuration for plain machines.
    plain_machine = DEPLOY / "redis" / "redis.conf"
    if plain_machine.exists():
        plain = redis_directives(plain_machine.read_text())
        for name in ("appendonly", "appendfsync", "save", "maxmemory-policy", "proto-max-bulk-len"):
            assert conf.get(name) == plain.get(name), name


def test_redis_url_names_the_redis_service():
    url = configmap_env()["HESERVE_REDIS_URL"]
    match = re.fullmatch(r"redis://([^:/@]+):(\d+)/\d+", url)
    assert match, url
    service = only("redis.yaml", "Service")
    (port,) = service["spec"]["ports"]
    assert match.group(1) == service["metadata"]["name"] and int(match.group(2)) == port["port"]
    (container,) = only("redis.yaml", "StatefulSet")["spec"]["template"]["spec"]["containers"]
    (redis_port,) = container["ports"]
    assert port["targetPort"] in (redis_port["name"], redis_port["containerPort"])


# ---------------------------------------------------------------------------- image


def test_server_requirements_pin_what_requirements_txt_pins():
    full = requirement_pins(REPO_ROOT / "requirements.txt")
    server = requirement_pins(DEPLOY / "requirements-server.txt")
    for name in server.keys() & full.keys():
        assert server[name] == full[name], f"{name}: {server[name]} in deploy/, {full[name]} in requirements.txt"
    assert not server.keys() & {"torch", "pytest", "ruff", "hypothesis", "schemathesis"}
    assert {"gunicorn", "redis"} <= server.keys()  # gunicorn is exec'd, redis imported lazily


def imported_modules(path: Path) -> set[tuple[str, int, str | None]]:
    """(module, level, imported name) for every import statement of a file, nested ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name, 0, None) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found |= {(node.module or "", node.level, alias.name) for alias in node.names}
    return found


def module_file(name: str) -> Path | None:
    """The source of a module, None for a name that is not one (an attribute `from x import name`)."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def server_third_party_imports() -> tuple[set[str], set[str]]:
    """Top-level third-party modules reachable from heserve.server, and the heserve packages it uses."""
    queue = ["heserve.server.__main__", "heserve.server.web.app", "heserve.server.web.gunicorn_conf"]
    queue += [f"heserve.server.{p.parent.name}.{p.stem}" for p in (REPO_ROOT / "server").glob("*/*.py")]
    seen: set[str] = set()
    third_party: set[str] = set()
    local: set[str] = set()
    while queue:
        module_name = queue.pop()
        path = module_file(module_name)
        if module_name in seen or path is None:
            continue
        seen.add(module_name)
        package = module_name.split(".") if path.name == "__init__.py" else module_name.split(".")[:-1]
        for module, level, name in imported_modules(path):
            parts = [*package[: len(package) - level + 1], *module.split(".")] if level else module.split(".")
            parts = [p for p in parts if p]
            if parts[0] != "heserve":
                if parts[0] not in sys.stdlib_module_names and parts[0] != "__future__":
                    third_party.add(parts[0])
                continue
            if len(parts) > 1:
                local.add(parts[1])
            queue.append(".".join(parts))
            if name:
                queue.append(".".join([*parts, name]))
    return third_party, local


def test_server_image_has_every_package_the_server_imports():
    third_party, local = server_third_party_imports()
    assert "client" not in local, "the server imports the client SDK"
    assert {"server", "engine", "protocol", "models"} >= local, local
    distributions = importlib.metadata.packages_distributions()
    needed = {canonical(distributions.get(module, [module])[0]) for module in third_party}
    missing = needed - requirement_pins(DEPLOY / "requirements-server.txt").keys()
    assert not missing, f"imported by the server but not installed in the image: {sorted(missing)}"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for package in local | {"heserve"}:
        folder = "heserve" if package == "heserve" else package
        assert re.search(rf"^COPY {folder}/ /src/{folder}/$", dockerfile, re.M), f"{folder}/ is not copied"


def test_dockerfile_installs_the_server_subset_only():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert "COPY deploy/requirements-server.txt " in dockerfile
    installed = re.findall(r"\s-r\s+(\S+)", dockerfile)
    assert installed and all(Path(f).name == "requirements-server.txt" for f in installed), installed
    assert "COPY requirements.txt" not in dockerfile, "requirements.txt brings torch into the image"
    assert re.search(r"^USER \d+", dockerfile, re.M)
    for source in re.findall(r"^COPY (\S+) \S+$", dockerfile, re.M):
        assert (REPO_ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd and yaml.safe_load(cmd.group(1)) == ["heserve-server"]


# ---------------------------------------------------------------------------- systemd


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((SYSTEMD / "heserve@.service").read_text())
    return parser


def test_systemd_unit_runs_the_server_per_port():
    service = unit()["Service"]
    command = shlex.split(service["ExecStart"])
    assert command[0].endswith("/bin/heserve-server")
    assert flag(command, "--port") == "%i", "the instance name is the port"
    assert service["EnvironmentFile"].lstrip("-") == "/etc/heserve/heserve.env"
    assert service["Restart"] == "on-failure"
    for setting, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "KillMode": "mixed",
    }.items():
        assert service.get(setting) == value, setting
    # The disk key store lives in the StateDirectory, the only writable place but /tmp.
    state = service["StateDirectory"]
    keys_dir = unit_environment_defaults()["HESERVE_KEYS_DIR"]
    assert keys_dir.startswith((f"%S/{state}/", f"/var/lib/{state}/"))
    assert int(service["TimeoutStopSec"].rstrip("s")) > gunicorn_conf.graceful_timeout


def unit_environment_defaults() -> dict[str, str]:
    """Every Environment= line of the unit (configparser keeps only the last of repeated keys)."""
    values = {}
    for line in (SYSTEMD / "heserve@.service").read_text().splitlines():
        if line.startswith("Environment="):
            values.update(item.split("=", 1) for item in shlex.split(line[len("Environment=") :]))
    return values


def test_systemd_environment_example_is_valid():
    example = env_file(SYSTEMD / "heserve.env.example")
    names = {n for n in example if n.startswith(ENV_PREFIX)}
    assert not names - known_env_names(), sorted(names - known_env_names())
    assert "HESERVE_PORT" not in example, "the port is the instance name"
    config = config_from(example)
    assert config.max_body_bytes == ServerConfig().max_body_bytes
    assert unit_environment_defaults().keys() - {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"} <= known_env_names()
