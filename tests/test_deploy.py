"""deploy/compose.yaml, the production recipe, checked without Docker (no image registry here, so it
cannot be started in CI): it parses, the services are there and wired to each other, every MMRAG_*
variable it sets is one the code reads and README's Configuration table documents, and no secret is
written in it (all come from ${...} interpolation, filled from deploy/.env)."""

from __future__ import annotations

import ast
import difflib
import itertools
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
CODE_DIRS = ("mmrag", "mmrag_assets", "mmrag_resources", "schedules")

SERVICES = {"etcd", "minio", "milvus", "vllm", "postgres", "dagster-init", "dagster-daemon",
            "dagster-webserver", "api", "ui"}
MMRAG_SERVICES = {"dagster-init", "dagster-daemon", "dagster-webserver", "api", "ui"}

NAME = re.compile(r"MMRAG_[A-Z0-9_]+")
# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
SECRET_KEY = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|PG_URL")


# -- what the code reads ------------------------------------------------------------------------------
def code_env_names(root: Path = REPO, dirs=CODE_DIRS) -> tuple[set[str], list[str]]:
    """The MMRAG_* names the code spells as string constants (`env.get("MMRAG_X")`,
    `PG_URL_VAR = "MMRAG_X"`), and the places that build such a name at run time instead
    (f"MMRAG_{x}", "MMRAG_" + x, "MMRAG_%s" % x), whose names this scan cannot know."""
    names: set[str] = set()
    dynamic: list[str] = []
    for d in dirs:
        for path in sorted((root / d).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            rel = path.relative_to(root)
            for node in ast.walk(tree):
                where = f"{rel}:{getattr(node, 'lineno', '?')}"
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if NAME.fullmatch(node.value):
                        names.add(node.value)
                    elif re.fullmatch(r"MMRAG_[A-Z0-9_]*(\{[^}]*\}|%[sd])[A-Z0-9_{}%]*", node.value):
                        dynamic.append(f"{where}: {node.value!r}")
                elif isinstance(node, ast.JoinedStr) and node.values:
                    head = node.values[0]
                    if (isinstance(head, ast.Constant) and re.fullmatch(r"MMRAG_[A-Z0-9_]*", str(head.value))
                            and len(node.values) > 1 and isinstance(node.values[1], ast.FormattedValue)):
                        dynamic.append(f"{where}: f-string {head.value!r}...")
                elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
                    left = node.left
                    if (isinstance(left, ast.Constant) and isinstance(left.value, str)
                            and re.fullmatch(r"MMRAG_[A-Z0-9_]*", left.value)):
                        dynamic.append(f"{where}: {left.value!r} + ...")
    return names, dynamic


def readme_config_names(readme: Path = REPO / "README.md") -> set[str]:
    """The MMRAG_* names in the first column of README's "## Configuration" table."""
    text = readme.read_text()
    start = text.index("\n## Configuration")
    end = text.find("\n## ", start + 1)
    names: set[str] = set()
    for line in text[start:end if end > 0 else None].splitlines():
        if line.startswith("|"):
            names |= set(NAME.findall(line.split("|")[1]))
    return names


# -- what compose sets --------------------------------------------------------------------------------
def load_compose(path: Path | None = None) -> dict:
    return yaml.safe_load((path or COMPOSE).read_text())


def environments(compose: dict) -> dict[str, dict[str, str | None]]:
    """Each service's `environment`, dict or list form ("KEY=VALUE"; a bare "KEY" passes the shell's
    value through: None), as {service: {key: value}}."""
    out: dict[str, dict[str, str | None]] = {}
    for name, svc in (compose.get("services") or {}).items():
        env = (svc or {}).get("environment") or {}
        if isinstance(env, list):
            pairs = (item.split("=", 1) if "=" in item else (item, None) for item in env)
            env = {k: v for k, v in pairs}
        out[name] = {str(k): None if v is None else str(v) for k, v in env.items()}
    return out


def unknown_mmrag_vars(envs: dict[str, dict], known: set[str]) -> list[str]:
    """One line per MMRAG_* variable a service sets that the code does not read, with the nearest
    name it does read."""
    problems = []
    for service, env in sorted(envs.items()):
        for key in sorted(env):
            if key.startswith("MMRAG_") and key not in known:
                near = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                problems.append(f"{service}: {key} is not read by the code{hint}")
    return problems


def literal_secrets(envs: dict[str, dict]) -> list[str]:
    """One line per secret-looking variable (…KEY…, …TOKEN…, …PASSWORD…, …SECRET…, …PG_URL) whose
    value carries a credential written in the file: the whole value must be one ${VAR} (a URL: its
    password part), and no ${VAR:-default} may supply a non-empty default."""
    problems = []
    for service, env in sorted(envs.items()):
        for key, value in sorted(env.items()):
            if not SECRET_KEY.search(key) or not value:
                continue  # None: passed through from the shell; "": nothing
            where = f"{service}: {key}"
            for var, op, arg in INTERPOLATION.findall(value):
                if op in ("-", ":-") and arg:
                    problems.append(f"{where}: ${{{var}{op}...}} supplies a literal default")
            if "://" in value:  # a URL: only its password may be secret
                userinfo = value.split("://", 1)[1].split("@", 1)[0] if "@" in value else ""
                password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
                if password and not INTERPOLATION.fullmatch(password):
                    problems.append(f"{where}: the URL's password is written in the file")
            elif not INTERPOLATION.fullmatch(value):
                problems.append(f"{where}: the value is written in the file, not ${{...}} interpolated")
    return problems


def strings(node) -> list[str]:
    """Every string value in a parsed YAML document (what compose interpolates; not its comments)."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(k) + strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def interpolated(compose: dict) -> dict[str, set[str]]:
    """{variable: its operators} for every ${...} in the file's values ("" for a plain ${VAR})."""
    out: dict[str, set[str]] = {}
    for s in strings(compose):
        for var, op, _ in INTERPOLATION.findall(s):
            out.setdefault(var, set()).add(op)
    return out


def required_vars(compose: dict) -> set[str]:
    """Variables the file needs from deploy/.env or the shell: ${VAR:?...} / ${VAR?...}."""
    return {var for var, ops in interpolated(compose).items() if ops & {"?", ":?"}}


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _host(url: str) -> str:
    return re.match(r"\w+://([^:/]+)", url).group(1)


# -- the tests ----------------------------------------------------------------------------------------
def test_services_present():
    compose = load_compose()
    assert SERVICES <= set(compose["services"]), f"missing services: {sorted(SERVICES - set(compose['services']))}"


def test_mmrag_variables_are_read_by_the_code():
    known, dynamic = code_env_names()
    assert not dynamic, ("the code builds MMRAG_* names at run time, so this test cannot list what it reads; "
                         f"teach code_env_names those names: {dynamic}")
    assert {"MMRAG_HOME", "MMRAG_MILVUS_URI", "MMRAG_API_KEY"} <= known  # the scan itself works
    envs = environments(load_compose())
    assert not (problems := unknown_mmrag_vars(envs, known)), "\n".join(problems)


def test_mmrag_variables_are_documented():
    documented = readme_config_names()
    envs = environments(load_compose())
    missing = sorted({f"{svc}: {key}" for svc, env in envs.items() for key in env
                      if key.startswith("MMRAG_") and key not in documented})
    assert not missing, f"set in deploy/compose.yaml but not in README's Configuration table: {missing}"


def test_no_literal_secrets():
    compose = load_compose()
    assert not (problems := literal_secrets(environments(compose))), "\n".join(problems)
    for name, svc in compose["services"].items():  # nor as a command-line option
        cmd = svc.get("command") or []
        args = cmd.split() if isinstance(cmd, str) else [str(a) for a in cmd]
        for flag, value in itertools.pairwise(args):
            if re.match(r"--?[\w-]*(key|token|password|secret)", flag, re.IGNORECASE):
                assert INTERPOLATION.fullmatch(value), f"{name}: {flag} {value!r} is written in the file"


def test_env_example_names_what_compose_requires():
    compose = load_compose()
    example = env_file(ENV_EXAMPLE)
    missing = required_vars(compose) - set(example)
    assert not missing, f"required by compose, not in .env.example: {sorted(missing)}"
    stale = set(example) - set(interpolated(compose))
    assert not stale, f"in .env.example, not used by compose: {sorted(stale)}"
    for key, value in example.items():  # placeholders, never something that looks like a real secret
        if SECRET_KEY.search(key) and value:
            assert value.startswith("change-me"), f".env.example: {key} should be a change-me placeholder"


def test_wiring():
    compose = load_compose()
    services = compose["services"]
    envs = environments(compose)
    for svc in MMRAG_SERVICES:
        env = envs[svc]
        assert env["MMRAG_HOME"] == "/data" and "mmrag-data:/data" in services[svc]["volumes"], svc
        assert _host(env["MMRAG_MILVUS_URI"]) == "milvus" and _host(env["MMRAG_LLM_URL"]) == "vllm", svc
    # Runs, API and chat page index and query with the same settings (models and chunking make the
    # config fingerprint that status compares); only these may differ between them.
    own = {"DAGSTER_HOME", "MMRAG_API_KEY", "MMRAG_DAGSTER_PG_URL", "MMRAG_AUTOMATION", "MMRAG_SENSOR_INTERVAL_S",
           "MMRAG_WATCH"}
    shared = {svc: {k: v for k, v in envs[svc].items() if k not in own} for svc in sorted(MMRAG_SERVICES)}
    for svc, env in shared.items():
        differ = sorted(k for k in env.keys() | shared["api"].keys() if env.get(k) != shared["api"].get(k))
        assert not differ, f"{svc} and api set these differently: {differ}"
    # Milvus standalone on its etcd and MinIO.
    milvus = services["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert envs["milvus"]["ETCD_ENDPOINTS"].split(":")[0] in services
    assert envs["milvus"]["MINIO_ADDRESS"].split(":")[0] in services
    # vLLM on a GPU, serving the model names mmrag asks for.
    vllm = services["vllm"]
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)
    served = vllm["command"][vllm["command"].index("--served-model-name") + 1:]
    for svc in MMRAG_SERVICES:
        assert {envs[svc]["MMRAG_LLM_MODEL"], envs[svc]["MMRAG_VLM_MODEL"]} <= set(served), svc
    # Dagster: the init step writes $MMRAG_HOME/dagster/dagster.yaml (DAGSTER_HOME unset), the others use it.
    assert "DAGSTER_HOME" not in envs["dagster-init"]
    for svc in MMRAG_SERVICES - {"dagster-init"}:
        assert envs[svc]["DAGSTER_HOME"] == envs[svc]["MMRAG_HOME"] + "/dagster", svc
    for svc in ("dagster-init", "dagster-daemon", "dagster-webserver"):
        assert "MMRAG_DAGSTER_PG_URL" in envs[svc], svc
    assert envs["dagster-daemon"]["MMRAG_AUTOMATION"] == "on"
    # The API binds a public address, which mmrag refuses without MMRAG_API_KEY.
    assert "0.0.0.0" in services["api"]["command"] and envs["api"]["MMRAG_API_KEY"]
    # Every dependency exists; one waited on as healthy has a healthcheck.
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep, cond in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond.get("condition") == "service_healthy":
                assert (services[dep].get("healthcheck") or {}).get("test"), \
                    f"{name} waits for {dep} to be healthy; it has no healthcheck"


def test_the_checks_catch_mistakes():
    """A typo in a variable name, a literal secret, a literal default and a password in a URL are
    each named (what the checks above would report on a broken compose file)."""
    known = {"MMRAG_MILVUS_URI", "MMRAG_API_KEY"}
    broken = yaml.safe_load("""
services:
  api:
    environment:
      MMRAG_MILVUS_URL: http://milvus:19530
      MMRAG_API_KEY: s3cret
  ui:
    environment:
      - MMRAG_MILVUS_URI=http://milvus:19530
      - MMRAG_API_KEY=${MMRAG_API_KEY:-s3cret}
      - HF_TOKEN
  daemon:
    environment:
      MMRAG_DAGSTER_PG_URL: postgresql://dagster:s3cret@postgres:5432/dagster
""")
    envs = environments(broken)
    assert envs["ui"] == {"MMRAG_MILVUS_URI": "http://milvus:19530", "MMRAG_API_KEY": "${MMRAG_API_KEY:-s3cret}",
                          "HF_TOKEN": None}
    assert unknown_mmrag_vars(envs, known) == [
        "api: MMRAG_MILVUS_URL is not read by the code (did you mean MMRAG_MILVUS_URI?)",
        "daemon: MMRAG_DAGSTER_PG_URL is not read by the code"]
    assert literal_secrets(envs) == [
        "api: MMRAG_API_KEY: the value is written in the file, not ${...} interpolated",
        "daemon: MMRAG_DAGSTER_PG_URL: the URL's password is written in the file",
        "ui: MMRAG_API_KEY: ${MMRAG_API_KEY:-...} supplies a literal default"]
    fine = {"svc": {"MMRAG_API_KEY": "${MMRAG_API_KEY:?set it}", "HF_TOKEN": "${HF_TOKEN:-}",
                    "MMRAG_DAGSTER_PG_URL": "postgresql://dagster:${POSTGRES_PASSWORD:?x}@postgres:5432/dagster"}}
    assert literal_secrets(fine) == []
    assert required_vars({"a": "${A:?x}", "b": ["${B:-1}", "${C?y}"]}) == {"A", "C"}


def test_the_scan_reports_names_built_at_run_time(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        'import os\n'
        'A = os.environ.get("MMRAG_ALPHA")\n'
        'B = os.environ.get(f"MMRAG_{A}")\n'
        'C = os.environ.get("MMRAG_" + A)\n'
        'D = "MMRAG_ALPHA is not set"  # a message, not a name\n')
    names, dynamic = code_env_names(tmp_path, ("pkg",))
    assert names == {"MMRAG_ALPHA"}
    assert dynamic == ["pkg/m.py:3: f-string 'MMRAG_'...", "pkg/m.py:4: 'MMRAG_' + ..."]
