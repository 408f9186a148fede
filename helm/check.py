#!/usr/bin/env python3
"""Checks of the Helm chart and the compose file, for a machine without a helm binary.

    python3 helm/check.py              # everything
    python3 helm/check.py --no-render  # only the static checks 1-7

The helm binary is not installable on the build machine (not in Debian, PyPI or crates.io).
Checks 1-7 are static; check 8 renders the chart with Helm's own engine, which the PyPI
package helm-python-sdk ships as a shared library (Helm v4 built as libhelm_c.so):

  1. values.schema.json is a valid JSON Schema (draft-07), every object in it either
     lists its properties with additionalProperties: false or types its free-form
     values (labels, annotations), and values.yaml validates against it; a few
     deliberately broken copies of values.yaml must be rejected.
  2. Every non-template YAML file under helm/ and deploy/compose.yaml parses.
  3. Chart.yaml has the fields Helm requires (apiVersion v2, name = directory, SemVer
     version) plus appVersion and type.
  4. Every `.Values.a.b` path a template mentions exists in values.yaml, and every
     `include "x"` names a template defined in the chart.
  5. Templates are balanced: `{{` / `}}`, `/*` / `*/` inside actions, and block
     actions (if/range/with/define/block) against `end`.
  6. Every value in values.yaml has a comment above it and a row in the chart README.
  7. compose.yaml has the three routerd services with health checks, restart policy,
     named volumes and ports published on 127.0.0.1 only.
  8. Helm itself: `helm lint --strict` (as of Kubernetes 1.30) has no warning or error, and
     the chart renders with the default values and with every optional feature switched on;
     every rendered document is YAML with apiVersion, kind and metadata.name; the rendered
     routerd.toml parses and uses only keys routerd's config.rs knows (plus the keys the
     chart expects routerd to add, listed below as "new"), one seed per replica; the
     StatefulSet passes the ROUTERD_* environment and --grace-seconds = grace - 5, and
     projects one TLS Secret per replica; cert-manager mode renders one Certificate per
     replica with URI SAN spiffe://interop-router/node/<i+1>; Helm's schema validation
     refuses bad values.

Installs PyYAML, jsonschema and helm-python-sdk with pip when they are missing.
Exits 1 on any problem.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHART = HERE / "interop-router"
COMPOSE = REPO / "deploy" / "compose.yaml"
ROUTERD_CONFIG_RS = REPO / "crates" / "node" / "src" / "config.rs"
HELM_SDK = "helm-python-sdk==0.2.2"
# routerd.toml keys the chart renders that routerd does not have yet (asked for in the chart README).
NEW_ROUTERD_KEYS = {"cluster.seeds"}
# Environment the StatefulSet must give routerd.
ROUTERD_ENV = {
    "ROUTERD_POD_INDEX", "POD_NAME", "POD_NAMESPACE", "ROUTERD_ADVERTISE_PEER",
    "ROUTERD_ADVERTISE_PROVIDER", "ROUTERD_DATA_DIR", "ROUTERD_TLS_CA", "ROUTERD_TLS_CERT",
    "ROUTERD_TLS_KEY",
}


def need(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        print(f"check: installing {package} with pip", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", package], check=True)
        return importlib.import_module(module)


yaml = need("yaml", "pyyaml")
jsonschema = need("jsonschema", "jsonschema")

problems: list[str] = []
passed: list[str] = []


def problem(msg: str) -> None:
    problems.append(msg)


def ok(msg: str) -> None:
    passed.append(msg)


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


# ---------------------------------------------------------------- 1. schema
def schema_objects(node, path="$"):
    """Yields (path, node) for every object-typed schema node."""
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, child in node.items():
            if key in ("properties", "definitions"):
                for name, sub in child.items():
                    yield from schema_objects(sub, f"{path}.{name}")
            elif key in ("items", "additionalProperties", "if", "then", "else"):
                yield from schema_objects(child, f"{path}[{key}]")
            elif key in ("allOf", "anyOf", "oneOf"):
                for i, sub in enumerate(child):
                    yield from schema_objects(sub, f"{path}[{key}{i}]")


def check_schema(values: dict, schema: dict) -> None:
    v = jsonschema.Draft7Validator
    try:
        v.check_schema(schema)
    except jsonschema.SchemaError as e:
        problem(f"values.schema.json is not a valid draft-07 schema: {e.message}")
        return
    if schema.get("$schema") != "http://json-schema.org/draft-07/schema#":
        problem("values.schema.json: $schema must be draft-07")
    n_objects = 0
    for path, node in schema_objects(schema):
        if path.startswith("$[allOf"):
            continue  # conditional refinements, not value shapes
        n_objects += 1
        ap = node.get("additionalProperties", None)
        if "properties" in node and ap is not False:
            problem(f"values.schema.json {path}: an object with properties needs additionalProperties: false")
        if "properties" not in node and not isinstance(ap, dict):
            problem(f"values.schema.json {path}: a free-form object must type its values (additionalProperties: {{...}})")
    validator = v(schema)
    errors = sorted(validator.iter_errors(values), key=lambda e: list(e.path))
    for e in errors:
        where = ".".join(str(p) for p in e.path) or "(top)"
        problem(f"values.yaml {where}: {e.message}")
    if not errors:
        ok(f"values.yaml validates against values.schema.json ({n_objects} object schemas, all closed)")

    # The schema must also say no to bad input, not just yes to the defaults.
    def broken(mutate, what):
        bad = copy.deepcopy(values)
        mutate(bad)
        if validator.is_valid(bad):
            problem(f"values.schema.json accepts {what}")

    broken(lambda b: b.__setitem__("replicaCunt", 3), "an unknown top-level key")
    broken(lambda b: b["image"].__setitem__("tagg", "x"), "an unknown nested key (image.tagg)")
    broken(lambda b: b["config"]["raft"].__setitem__("heartbeat", 50), "an unknown routerd key (config.raft.heartbeat)")
    broken(lambda b: b.__setitem__("replicaCount", "3"), "replicaCount as a string")
    broken(lambda b: b["service"].__setitem__("type", "Ingress"), "an unknown Service type")
    broken(lambda b: b.__setitem__("terminationGracePeriodSeconds", 3), "a grace period too short for --grace-seconds")
    broken(lambda b: b["podAntiAffinity"].__setitem__("type", "sometimes"), "an unknown anti-affinity type")
    broken(lambda b: b["podAnnotations"].__setitem__("a", 1), "a non-string annotation")

    def cm_without_issuer(b):
        b["tls"]["certManager"]["enabled"] = True
        b["tls"]["certManager"]["issuerRef"]["name"] = ""

    broken(cm_without_issuer, "cert-manager enabled without an issuer")
    ok("values.schema.json rejects 9 deliberately broken value sets")


# ---------------------------------------------------------------- 2. YAML files
def check_yaml_files() -> dict[Path, object]:
    parsed = {}
    files = [p for p in sorted(HERE.rglob("*")) if p.suffix in (".yaml", ".yml") and "templates" not in p.parts]
    files.append(COMPOSE)
    for p in files:
        try:
            parsed[p] = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as e:
            problem(f"{rel(p)}: does not parse as YAML: {e}")
    ok(f"{len(parsed)} YAML files parse: " + ", ".join(rel(p) for p in parsed))
    return parsed


# ---------------------------------------------------------------- 3. Chart.yaml
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


def check_chart(chart: dict) -> None:
    before = len(problems)
    if not isinstance(chart, dict):
        problem("Chart.yaml is not a mapping")
        return
    if chart.get("apiVersion") != "v2":
        problem("Chart.yaml: apiVersion must be v2")
    if chart.get("name") != CHART.name:
        problem(f"Chart.yaml: name must be {CHART.name!r} (the chart directory)")
    if not SEMVER.match(str(chart.get("version", ""))):
        problem("Chart.yaml: version must be SemVer 2")
    if not chart.get("appVersion"):
        problem("Chart.yaml: appVersion is missing")
    if chart.get("type", "application") not in ("application", "library"):
        problem("Chart.yaml: type must be application or library")
    if not chart.get("description"):
        problem("Chart.yaml: description is missing")
    if len(problems) == before:
        ok(f"Chart.yaml: {chart['name']} {chart['version']} (appVersion {chart['appVersion']}, apiVersion v2)")


# ---------------------------------------------------------------- 4./5. templates
ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
INCLUDE = re.compile(r'\b(?:include|template)\s+"([^"]+)"')
DEFINE = re.compile(r'\{\{-?\s*define\s+"([^"]+)"')
OPENERS = {"if", "range", "with", "define", "block"}


def has_path(values: dict, dotted: str) -> bool:
    node = values
    for part in dotted.strip(".").split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_braces(path: Path, text: str) -> None:
    # Walk the text: every "{{" must be closed by "}}" before the next "{{".
    i, line = 0, 1
    depth_ok = True
    while True:
        start = text.find("{{", i)
        close = text.find("}}", i)
        if start == -1:
            if close != -1:
                problem(f"{rel(path)}:{line + text.count(chr(10), i, close)}: '}}}}' without '{{{{'")
                depth_ok = False
            break
        if close != -1 and close < start:
            problem(f"{rel(path)}:{line + text.count(chr(10), i, close)}: '}}}}' without '{{{{'")
            depth_ok = False
            break
        end = text.find("}}", start + 2)
        nxt = text.find("{{", start + 2)
        line += text.count("\n", i, start)
        if end == -1 or (nxt != -1 and nxt < end):
            problem(f"{rel(path)}:{line}: '{{{{' not closed before the next action")
            depth_ok = False
            break
        body = text[start + 2 : end]
        if body.count("/*") != body.count("*/"):
            problem(f"{rel(path)}:{line}: unbalanced /* */ in an action")
            depth_ok = False
        line += text.count("\n", start, end)
        i = end + 2
    if text.count("{{") != text.count("}}"):
        problem(f"{rel(path)}: {text.count('{{')} '{{{{' but {text.count('}}')} '}}}}'")
        depth_ok = False
    if not depth_ok:
        return
    # Block structure.
    stack: list[tuple[str, int]] = []
    for m in ACTION.finditer(text):
        body = m.group(1)
        if body.startswith("/*"):
            continue
        word = body.split(None, 1)[0] if body.split() else ""
        line = text.count("\n", 0, m.start()) + 1
        if word in OPENERS:
            stack.append((word, line))
        elif word == "else":
            if not stack or stack[-1][0] not in ("if", "range", "with"):
                problem(f"{rel(path)}:{line}: 'else' outside if/range/with")
        elif word == "end":
            if not stack:
                problem(f"{rel(path)}:{line}: 'end' without an open block")
            else:
                stack.pop()
    for word, line in stack:
        problem(f"{rel(path)}:{line}: '{word}' is never closed with 'end'")


def check_templates(values: dict) -> None:
    tdir = CHART / "templates"
    templates = sorted(p for p in tdir.iterdir() if p.is_file())
    defined: set[str] = set()
    for p in templates:
        defined.update(DEFINE.findall(p.read_text()))
    n_refs = 0
    before = len(problems)
    for p in templates:
        text = p.read_text()
        check_braces(p, text)
        for m in ACTION.finditer(text):
            for ref in VALUES_REF.findall(m.group(1)):
                n_refs += 1
                if not has_path(values, ref):
                    line = text.count("\n", 0, m.start()) + 1
                    problem(f"{rel(p)}:{line}: .Values{ref} is not in values.yaml")
            for name in INCLUDE.findall(m.group(1)):
                if name not in defined:
                    line = text.count("\n", 0, m.start()) + 1
                    problem(f"{rel(p)}:{line}: include of undefined template {name!r}")
    if len(problems) == before:
        ok(
            f"{len(templates)} templates: braces and blocks balanced, {n_refs} .Values references "
            f"all in values.yaml, {len(defined)} named templates, every include defined"
        )


# ---------------------------------------------------------------- 6. documentation of values
def leaf_paths(values, schema_node, root_schema, prefix=""):
    """Dotted paths of the chart's values, stopping at free-form maps and lists."""
    if "$ref" in schema_node:
        name = schema_node["$ref"].rsplit("/", 1)[-1]
        if name == "labelSelector":  # a Kubernetes selector is one value
            yield prefix
            return
        schema_node = root_schema["definitions"][name]
    props = schema_node.get("properties")
    if isinstance(values, dict) and props:
        for key, sub in values.items():
            yield from leaf_paths(sub, props.get(key, {}), root_schema, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def check_docs(values: dict, schema: dict) -> None:
    leaves = list(leaf_paths(values, schema, schema))
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    commented = set()
    key_re = re.compile(r"^(\s*)([A-Za-z0-9_]+):")
    for idx, raw in enumerate(lines):
        m = key_re.match(raw)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        prev = next((lines[j].strip() for j in range(idx - 1, -1, -1) if lines[j].strip()), "")
        if prev.startswith("#") or "#" in raw.split(":", 1)[1]:
            commented.add(path)
    missing_comment = [p for p in leaves if p not in commented]
    for p in missing_comment:
        problem(f"values.yaml: {p} has no comment above it")
    try:
        readme = (CHART / "README.md").read_text()
    except OSError as e:
        problem(f"helm/interop-router/README.md: {e.strerror}")
        readme = ""
    missing_row = [p for p in leaves if f"| `{p}` |" not in readme]
    for p in missing_row:
        problem(f"helm/interop-router/README.md: no row for value `{p}`")
    if not missing_comment and not missing_row:
        ok(f"{len(leaves)} values: each has a comment in values.yaml and a row in README.md")


# ---------------------------------------------------------------- 7. compose
def check_compose(compose) -> None:
    before = len(problems)
    if not isinstance(compose, dict):
        problem("deploy/compose.yaml is not a mapping")
        return
    services = compose.get("services", {})
    names = [f"router-{n}" for n in (1, 2, 3)]
    if sorted(services) != names:
        problem(f"deploy/compose.yaml: services must be {names}, found {sorted(services)}")
    for name in names:
        svc = services.get(name) or {}
        hc = (svc.get("healthcheck") or {}).get("test", [])
        if hc[:3] != ["CMD", "/usr/local/bin/routerd", "probe"]:
            problem(f"compose {name}: healthcheck must run routerd probe without a shell, found {hc}")
        if svc.get("restart") != "unless-stopped":
            problem(f"compose {name}: restart must be unless-stopped")
        if "interop" not in (svc.get("networks") or {}):
            problem(f"compose {name}: not on network interop")
        vols = svc.get("volumes") or []
        if f"{name}-data:/var/lib/routerd" not in vols:
            problem(f"compose {name}: named volume {name}-data must be mounted at /var/lib/routerd")
        for port in svc.get("ports") or []:
            if not str(port).startswith("127.0.0.1:"):
                problem(f"compose {name}: port {port} is published beyond 127.0.0.1")
        n = name.rsplit("-", 1)[1]
        for src in (f"./.compose/routerd-{n}.toml", f"./.compose/certs/node-{n}.key"):
            if not any(str(v).startswith(src + ":") for v in vols):
                problem(f"compose {name}: {src} is not mounted")
    for name in names:
        if f"{name}-data" not in (compose.get("volumes") or {}):
            problem(f"deploy/compose.yaml: volume {name}-data is not declared")
    if len(problems) == before:
        ok("deploy/compose.yaml: router-1..3 with routerd probe health checks, named volumes, 127.0.0.1-only ports")

# ---------------------------------------------------------------- 8. render with Helm
def routerd_known_keys() -> set[str]:
    """routerd.toml keys, read from the serde structs in crates/node/src/config.rs."""
    sections = {
        "RawConfig": "", "RawListen": "listen.", "RawAdvertise": "advertise.", "RawTls": "tls.",
        "RawCluster": "cluster.", "RawRaft": "raft.", "RawLimits": "limits.", "RawBatching": "batching.",
    }
    text = ROUTERD_CONFIG_RS.read_text()
    keys = set()
    for struct, prefix in sections.items():
        m = re.search(r"pub struct " + struct + r" \{(.*?)\n\}", text, re.S)
        if not m:
            problem(f"{rel(ROUTERD_CONFIG_RS)}: struct {struct} not found (config layout changed?)")
            continue
        keys.update(prefix + f for f in re.findall(r"^\s*pub (\w+):", m.group(1), re.M))
    return keys


def toml_keys(table: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in table.items():
        if isinstance(v, dict):
            out |= toml_keys(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


RENDER_CASES = {
    "defaults": ({}, 3),
    "all features": (
        {
            "replicaCount": 5,
            "listenAddress": "::",
            "tls": {
                "certManager": {"enabled": True, "issuerRef": {"name": "interop-ca", "kind": "ClusterIssuer"}},
                "extraDnsNames": ["router.example.com"],
            },
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "networkPolicy": {
                "enabled": True,
                "provider": {
                    "allowedCIDRs": ["10.0.0.0/8"],
                    "allowedNamespaceSelectors": [{"matchLabels": {"team": "messaging"}}],
                },
            },
            "service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["192.0.2.0/24"],
                        "externalTrafficPolicy": "Local", "annotations": {"example.com/lb": "internal"}},
            "podAntiAffinity": {"type": "hard", "topologyKey": "topology.kubernetes.io/zone"},
            "persistence": {"enabled": False},
            "cluster": {"initialProviders": ["alpha", "beta"]},
            "nodeSelector": {"disktype": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "router", "effect": "NoSchedule"}],
            "imagePullSecrets": ["regcred"],
            "priorityClassName": "critical",
            "resources": {"limits": {"cpu": "2", "memory": ""}},
            "terminationGracePeriodSeconds": 60,
        },
        5,
    ),
    "single node": ({"replicaCount": 1, "podDisruptionBudget": {"enabled": False}}, 1),
}


def check_rendered(case: str, docs: list[dict], replicas: int, overrides: dict, known: set[str]) -> None:
    where = f"render [{case}]"
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        for field in ("apiVersion", "kind"):
            if not d.get(field):
                problem(f"{where}: a document has no {field}: {str(d)[:80]}")
        if not (d.get("metadata") or {}).get("name"):
            problem(f"{where}: a {d.get('kind')} has no metadata.name")
        by_kind.setdefault(d.get("kind"), []).append(d)

    # routerd.toml
    cms = by_kind.get("ConfigMap", [])
    if len(cms) != 1:
        problem(f"{where}: expected 1 ConfigMap, found {len(cms)}")
        return
    try:
        cfg = tomllib.loads(cms[0]["data"]["routerd.toml"])
    except (KeyError, tomllib.TOMLDecodeError) as e:
        problem(f"{where}: routerd.toml does not parse: {e}")
        return
    unknown = toml_keys(cfg) - known - NEW_ROUTERD_KEYS
    if unknown:
        problem(f"{where}: routerd.toml keys routerd does not know: {sorted(unknown)}")
    seeds = cfg.get("cluster", {}).get("seeds", [])
    if len(seeds) != replicas or not all(re.fullmatch(rf"[a-z0-9-]+-{i}\.[a-z0-9-]+-peers\.[a-z0-9-]+\.svc\.[a-z0-9.]+:\d+", s)
                                         for i, s in enumerate(seeds)):
        problem(f"{where}: expected {replicas} seeds <fullname>-<i>.<fullname>-peers.<ns>.svc...:port, got {seeds}")
    if "providers" in str(overrides) and cfg["cluster"].get("initial_providers") != ["alpha", "beta"]:
        problem(f"{where}: initial_providers not rendered: {cfg['cluster'].get('initial_providers')}")

    # StatefulSet
    sts = by_kind.get("StatefulSet", [])
    if len(sts) != 1:
        problem(f"{where}: expected 1 StatefulSet, found {len(sts)}")
        return
    spec = sts[0]["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"] for e in container.get("env", [])}
    if not ROUTERD_ENV <= env:
        problem(f"{where}: StatefulSet lacks env {sorted(ROUTERD_ENV - env)}")
    grace = pod.get("terminationGracePeriodSeconds")
    args = container.get("args", [])
    if "--grace-seconds" not in args or args[args.index("--grace-seconds") + 1] != str(grace - 5):
        problem(f"{where}: --grace-seconds must be terminationGracePeriodSeconds - 5 ({grace} - 5), args {args}")
    if spec.get("replicas") != replicas or spec.get("podManagementPolicy") != "Parallel":
        problem(f"{where}: replicas/podManagementPolicy wrong: {spec.get('replicas')}, {spec.get('podManagementPolicy')}")
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    pod_labels = spec["template"]["metadata"].get("labels") or {}
    if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
        problem(f"{where}: StatefulSet selector {selector} does not match its pod labels {pod_labels}")
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for d in by_kind.get(kind, []):
            sel = d["spec"].get("selector") or d["spec"].get("podSelector") or {}
            sel = sel.get("matchLabels", sel) if kind != "Service" else sel
            if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
                problem(f"{where}: {kind} {d['metadata']['name']} selector {sel} does not select the routerd pods")
    sc = container.get("securityContext", {})
    if not (sc.get("readOnlyRootFilesystem") and sc.get("runAsNonRoot") and sc.get("runAsUser") == 65532
            and sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("allowPrivilegeEscalation") is False):
        problem(f"{where}: container securityContext is not locked down: {sc}")
    probes = {k: container.get(k, {}).get("httpGet", {}).get("path") for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    if probes != {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
        problem(f"{where}: probes wrong: {probes}")
    tls = next((v for v in pod.get("volumes", []) if v["name"] == "tls"), None)
    sources = (tls or {}).get("projected", {}).get("sources", [])
    if len(sources) != replicas:
        problem(f"{where}: expected {replicas} projected TLS Secrets, found {len(sources)}")
    has_claims = bool(spec.get("volumeClaimTemplates"))
    has_data_dir = any(v["name"] == "data" for v in pod.get("volumes", []))
    if has_claims == has_data_dir:
        problem(f"{where}: the data volume must come from exactly one of volumeClaimTemplates or an emptyDir")

    # Services
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    headless = [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
    if len(headless) != 1 or not headless[0]["spec"].get("publishNotReadyAddresses"):
        problem(f"{where}: expected one headless Service with publishNotReadyAddresses")
    elif spec.get("serviceName") != headless[0]["metadata"]["name"]:
        problem(f"{where}: StatefulSet serviceName is not the headless Service")

    # Certificates
    certs = by_kind.get("Certificate", [])
    cm_on = overrides.get("tls", {}).get("certManager", {}).get("enabled", False)
    if cm_on:
        uris = sorted(u for c in certs for u in c["spec"].get("uris", []))
        want = sorted(f"spiffe://interop-router/node/{i + 1}" for i in range(replicas))
        if uris != want or any(len(c["spec"]["uris"]) != 1 for c in certs):
            problem(f"{where}: Certificates must carry one URI SAN each, {want}; got {uris}")
        secret_names = sorted(c["spec"]["secretName"] for c in certs)
        projected = sorted(src["secret"]["name"] for src in sources)
        if secret_names != projected:
            problem(f"{where}: Certificate Secrets {secret_names} differ from projected Secrets {projected}")
    elif certs:
        problem(f"{where}: Certificates rendered with cert-manager disabled")
    for kind, flag in (("ServiceMonitor", "serviceMonitor"), ("NetworkPolicy", "networkPolicy")):
        on = overrides.get(flag, {}).get("enabled", False)
        if bool(by_kind.get(kind)) != on:
            problem(f"{where}: {kind} rendered={bool(by_kind.get(kind))} but {flag}.enabled={on}")
    pdb_on = overrides.get("podDisruptionBudget", {}).get("enabled", True)
    if bool(by_kind.get("PodDisruptionBudget")) != pdb_on:
        problem(f"{where}: PodDisruptionBudget rendered={bool(by_kind.get('PodDisruptionBudget'))}, enabled={pdb_on}")


def check_render() -> None:
    try:
        hp_chart = need("helm_python.chart", HELM_SDK)
    except (subprocess.CalledProcessError, ImportError, OSError) as e:
        problem(f"cannot install {HELM_SDK} to render the chart ({e}); run with --no-render to skip")
        return
    errors = importlib.import_module("helm_python").HelmError
    before = len(problems)
    report = hp_chart.lint(str(CHART), strict=True, kube_version="v1.30.0")
    for msg in report.get("messages", []):
        if msg.get("severity", 0) >= 2:
            problem(f"helm lint: {msg.get('path')}: {msg.get('error')}")
    for err in report.get("errors", []):
        problem(f"helm lint: {err}")
    infos = [m.get("error") for m in report.get("messages", []) if m.get("severity", 0) < 2]
    if len(problems) == before:
        ok("helm lint --strict (Kubernetes 1.30): no warnings or errors" + (f" (info: {'; '.join(infos)})" if infos else ""))

    known = routerd_known_keys()
    chart = hp_chart.Chart.load(str(CHART))
    for case, (overrides, replicas) in RENDER_CASES.items():
        before = len(problems)
        try:
            manifests = chart.render(overrides, name="interop-router", namespace="interop", is_install=True)
        except Exception as e:  # HelmRenderError, HelmValuesError
            problem(f"render [{case}]: {e}")
            continue
        docs = []
        for name, text in manifests.items():
            if name.endswith("NOTES.txt"):
                if "routerctl" not in text:
                    problem(f"render [{case}]: NOTES.txt does not explain routerctl")
                continue
            try:
                docs.extend(d for d in yaml.safe_load_all(text) if d)
            except yaml.YAMLError as e:
                problem(f"render [{case}]: {name} is not YAML: {e}")
        check_rendered(case, docs, replicas, overrides, known)
        if len(problems) == before:
            kinds = sorted({d["kind"] for d in docs})
            ok(f"render [{case}]: {len(docs)} documents ({', '.join(kinds)}) check out")

    refused = 0
    for bad in ({"replicaCount": "3"}, {"service": {"type": "Ingress"}},
                {"tls": {"certManager": {"enabled": True}}}, {"config": {"raft": {"heartbeat": 50}}}):
        try:
            chart.render(bad, name="interop-router", namespace="interop", is_install=True)
            problem(f"Helm rendered the chart with bad values {bad}")
        except errors:
            refused += 1
    if refused == 4:
        ok("Helm refuses 4 bad value sets (schema and template checks)")
    new = sorted(NEW_ROUTERD_KEYS - known)
    if new:
        ok(f"routerd.toml keys the chart needs routerd to add (new): {', '.join(new)}")


def main() -> int:
    parsed = check_yaml_files()
    values = parsed.get(CHART / "values.yaml")
    chart = parsed.get(CHART / "Chart.yaml")
    try:
        schema = json.loads((CHART / "values.schema.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        problem(f"values.schema.json does not parse: {e}")
        schema = None
    if isinstance(values, dict) and schema:
        check_schema(values, schema)
        check_docs(values, schema)
    if chart is not None:
        check_chart(chart)
    if isinstance(values, dict):
        check_templates(values)
    if COMPOSE in parsed:
        check_compose(parsed[COMPOSE])
    if "--no-render" not in sys.argv[1:]:
        check_render()

    for line in passed:
        print(f"  ok    {line}")
    for line in problems:
        print(f"  FAIL  {line}")
    print(
        f"check: {len(passed)} checks passed, {len(problems)} problems"
        + (" (templates NOT rendered: --no-render)" if "--no-render" in sys.argv[1:] else "")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
