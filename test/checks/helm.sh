#!/usr/bin/env bash
# Checks the Helm chart in helm/herald. Installs nothing; exits non-zero on any failure.
#
# Helm: there is no `helm` binary requirement. The checks drive the Helm v4 Go SDK
# through the Python package helm-python-sdk (module helm_python, which binds its
# bundled libhelm_c.so with ctypes): helm_python.lint() is `helm lint --strict`,
# Chart.render() is `helm template`. Manifests are validated with kubernetes-validate
# (pip package kubernetes-validate) in strict mode against Kubernetes $KUBE_VERSION.
#
# For the default values and each helm/herald/ci/*-values.yaml:
#   - helm lint (strict, kube version $KUBE_VERSION): no error or warning;
#   - helm template; every manifest but the monitoring.coreos.com ones (ServiceMonitor,
#     PrometheusRule: CRDs that kubernetes-validate has no schema for; they are
#     skipped explicitly and reported) is validated with kubernetes-validate --strict;
#   - content assertions (adapter variables, grace period, probes, the apps config,
#     the dashboard being byte-identical to docs/grafana/herald.json, ...).
# And:
#   - values with typo keys (top level and nested) are REJECTED by values.schema.json;
#   - every object in values.schema.json has additionalProperties false (or a typed
#     map for user-keyed maps such as labels and annotations);
#   - every key of values.yaml outside example list items has a comment above it.
set -euo pipefail

cd "$(dirname "$0")/../.."
KUBE_VERSION=${KUBE_VERSION:-1.30.0}
PYTHON=${PYTHON:-python3}

missing=0
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "helm.sh: ERROR: $PYTHON not found (needed for the pip packages helm-python-sdk and kubernetes-validate)" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import helm_python' >/dev/null 2>&1; then
    echo "helm.sh: ERROR: Python module helm_python missing: pip install helm-python-sdk" >&2
    missing=1
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
    echo "helm.sh: ERROR: kubernetes-validate missing: pip install kubernetes-validate" >&2
    missing=1
fi
if ! "$PYTHON" -c 'import yaml' >/dev/null 2>&1; then
    echo "helm.sh: ERROR: Python module yaml missing: pip install PyYAML (a dependency of kubernetes-validate)" >&2
    missing=1
fi
[ "$missing" = 0 ] || exit 2

export KUBE_VERSION
# The SDK logs each symlink it follows (the dashboard) on stderr; keep the rest.
exec "$PYTHON" - 2> >(grep -v "found symbolic link in path" >&2) <<'PY'
import json, os, re, subprocess, sys, tempfile
import yaml
import helm_python as helm

CHART = "helm/herald"
KUBE = os.environ["KUBE_VERSION"]
failures = []

def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}")

def ok(msg):
    print(f"ok:   {msg}")

helm.disable_logging()  # the SDK logs every symlink it follows at INFO
chart = helm.Chart.load(CHART)

def load_values(path):
    if path is None:
        return None
    with open(path) as f:
        return helm.values_from_yaml(f.read())

def lint(name, values):
    report = helm.lint(CHART, values, strict=True, kube_version="v" + KUBE)
    bad = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    seen = set()
    for m in bad:
        if m["error"] not in seen:
            seen.add(m["error"])
            fail(f"[{name}] helm lint: {m.get('path', '')}: {m['error'].strip()}")
    if not bad:
        ok(f"[{name}] helm lint --strict (kube v{KUBE})")

def render(values):
    out = chart.render(values, name="herald", namespace="herald", is_install=True)
    docs = []
    for tpl, text in sorted(out.items()):
        if tpl.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((tpl, doc))
    return docs

def kube_validate(name, docs):
    with tempfile.TemporaryDirectory() as d:
        files = []
        for i, (tpl, doc) in enumerate(docs):
            if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
                print(f"skip: [{name}] {doc['kind']}/{doc['metadata']['name']}: monitoring.coreos.com CRD, "
                      "no schema in kubernetes-validate (not validated)")
                continue
            p = os.path.join(d, f"{i:02d}-{doc['kind']}.yaml")
            with open(p, "w") as f:
                yaml.safe_dump(doc, f)
            files.append(p)
        r = subprocess.run(["kubernetes-validate", "--strict", "--quiet", "-k", KUBE] + files,
                           capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"[{name}] kubernetes-validate --strict -k {KUBE}:\n{r.stdout}{r.stderr}")
        else:
            ok(f"[{name}] kubernetes-validate --strict -k {KUBE}: {len(files)} manifests")

def by_kind(docs):
    out = {}
    for _, d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out

def check(name, cond, msg):
    if cond:
        ok(f"[{name}] {msg}")
    else:
        fail(f"[{name}] {msg}")

with open("docs/grafana/herald.json") as f:
    DASHBOARD = f.read()
with open(os.path.join(CHART, "files/alerts.yml")) as f:
    ALERT_GROUPS = yaml.safe_load(f)["groups"]

def assertions(name, values, docs):
    merged = chart.merge_values(values)
    k = by_kind(docs)
    dep = k["Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    cm = next(d for d in k["ConfigMap"] if d["metadata"]["name"].endswith("-env"))["data"]
    env = {e["name"]: e for e in c.get("env", [])}
    check(name, c["name"] == "herald" and {p["containerPort"] for p in c["ports"]} == {6001, 9601}, "container herald, ports 6001 + 9601")
    check(name, c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "ws"} and c["livenessProbe"]["httpGet"] == {"path": "/up", "port": "ws"}, "readiness /ready, liveness /up on 6001")
    grace, sg = pod["terminationGracePeriodSeconds"], merged["herald"]["shutdownGrace"]
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    check(name, grace > sg + sleep and cm["HERALD_SHUTDOWN_GRACE"] == str(sg), f"terminationGracePeriodSeconds {grace} > shutdownGrace {sg} + preStop {sleep}")
    dw = merged["herald"].get("drainWindow")
    check(name, cm.get("HERALD_DRAIN_WINDOW") == (None if dw is None else str(dw)), f"HERALD_DRAIN_WINDOW {dw} (unset when null)")
    check(name, cm["HERALD_MAX_CONNECTIONS_PER_IP"] == str(merged["herald"]["maxConnectionsPerIp"])
          and cm["HERALD_TRUST_FORWARDED_FOR"] == str(merged["herald"]["trustForwardedFor"]).lower(), "per-IP cap settings")
    sc = c["securityContext"]
    check(name, sc["runAsNonRoot"] and sc["runAsUser"] == 10001 and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
          and sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault", "restricted securityContext")
    tsc = pod.get("topologySpreadConstraints", [])
    check(name, tsc and tsc[0]["topologyKey"] == "kubernetes.io/hostname" and tsc[0]["whenUnsatisfiable"] == "ScheduleAnyway", "topology spread by hostname, ScheduleAnyway")
    check(name, env["HERALD_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", "HERALD_NODE_ID from the pod name")
    check(name, c["envFrom"][0]["configMapRef"]["name"].endswith("-env"), "settings from the ConfigMap via envFrom")
    adapter = merged["adapter"]
    check(name, cm["HERALD_ADAPTER"] == adapter, f"HERALD_ADAPTER={adapter}")
    if adapter == "redis":
        if merged["redis"]["existingSecret"]:
            ref = env["HERALD_REDIS_URL"]["valueFrom"]["secretKeyRef"]
            check(name, ref == {"name": merged["redis"]["existingSecret"], "key": merged["redis"]["existingSecretKey"]} and "HERALD_REDIS_URL" not in cm,
                  "HERALD_REDIS_URL from redis.existingSecret")
        else:
            check(name, cm["HERALD_REDIS_URL"] == merged["redis"]["url"], "HERALD_REDIS_URL from redis.url")
    for key, var, field in (("redisCluster", "HERALD_REDIS_CLUSTER_NODES", "nodes"), ("nats", "HERALD_NATS_SERVERS", "servers")):
        if adapter != {"redisCluster": "redis-cluster", "nats": "nats"}[key]:
            continue
        if merged[key]["existingSecret"]:
            ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef")
            check(name, ref == {"name": merged[key]["existingSecret"], "key": merged[key]["existingSecretKey"]} and var not in cm,
                  f"{var} from {key}.existingSecret")
        else:
            check(name, cm[var] == ",".join(merged[key][field]), f"{var} comma-joined")
    if adapter != "local":
        check(name, cm["HERALD_ADAPTER_PREFIX"] == merged["adapterPrefix"]
              and cm["HERALD_REQUEST_TIMEOUT_MS"] == str(merged["requestTimeoutMs"])
              and cm["HERALD_HEARTBEAT_INTERVAL_MS"] == str(merged["heartbeatIntervalMs"])
              and cm["HERALD_NODE_TIMEOUT_MS"] == str(merged["nodeTimeoutMs"]), "adapter prefix and cluster timings")
    # apps config
    secrets = [d for d in k.get("Secret", [])]
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    if merged["existingSecret"]:
        check(name, not secrets and vols["config"]["secret"]["secretName"] == merged["existingSecret"] and env["HERALD_CONFIG"]["value"] == "/etc/herald/herald.toml",
              "herald.toml from existingSecret")
    elif merged["apps"]:
        toml = secrets[0]["stringData"]["herald.toml"]
        try:
            import tomllib
            parsed = tomllib.loads(toml)
            check(name, parsed["apps"] == merged["apps"], "herald.toml parses back to the apps values")
        except Exception as e:
            fail(f"[{name}] herald.toml is not valid TOML: {e}\n{toml}")
        mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
        check(name, mount["readOnly"] and vols["config"]["secret"]["secretName"] == secrets[0]["metadata"]["name"] and env["HERALD_CONFIG"]["value"] == "/etc/herald/herald.toml",
              "apps Secret mounted read-only, HERALD_CONFIG set")
    else:
        check(name, not secrets and "HERALD_CONFIG" not in env, "no apps: no config Secret, no HERALD_CONFIG")
    # services
    svcs = {s["metadata"]["name"]: s for s in k["Service"]}
    check(name, svcs["herald"]["spec"]["type"] == merged["service"]["type"] and svcs["herald-metrics"]["spec"]["clusterIP"] == "None", "Service + headless metrics Service")
    # dashboard
    if merged["grafanaDashboard"]["enabled"]:
        dash = next(d for d in k["ConfigMap"] if d["metadata"]["name"].endswith("-dashboards"))
        check(name, dash["metadata"]["labels"].get("grafana_dashboard") == "1" and dash["data"]["herald.json"] == DASHBOARD,
              "dashboard ConfigMap labelled grafana_dashboard=1, byte-identical to docs/grafana/herald.json")
    for kind, key in (("Ingress", "ingress"), ("HorizontalPodAutoscaler", "autoscaling"), ("ServiceMonitor", "serviceMonitor"), ("PrometheusRule", "prometheusRule")):
        check(name, (kind in k) == bool(merged[key]["enabled"]), f"{kind} rendered iff {key}.enabled")
    if "Ingress" in k:
        ann = k["Ingress"][0]["metadata"]["annotations"]
        check(name, ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout") == "3600", "Ingress keeps WebSockets open (nginx timeouts)")
    if "HorizontalPodAutoscaler" in k:
        ms = k["HorizontalPodAutoscaler"][0]["spec"]["metrics"]
        check(name, "replicas" not in dep["spec"] and any(m["type"] == "Pods" and m["pods"]["metric"]["name"] == "herald_connections" for m in ms) == merged["autoscaling"]["connections"]["enabled"],
              "HPA owns replicas; herald_connections pods metric iff connections.enabled")
    if "PrometheusRule" in k:
        check(name, k["PrometheusRule"][0]["spec"]["groups"] == ALERT_GROUPS, "PrometheusRule groups == files/alerts.yml")

# ---- every values set
scenarios = [("default", None)] + [
    (os.path.basename(p), p) for p in sorted(
        os.path.join(CHART, "ci", f) for f in os.listdir(os.path.join(CHART, "ci")) if f.endswith("-values.yaml"))]
for name, path in scenarios:
    values = load_values(path)
    lint(name, values)
    try:
        docs = render(values)
    except helm.HelmError as e:
        fail(f"[{name}] helm template: {e}")
        continue
    ok(f"[{name}] helm template: " + ", ".join(f"{d['kind']}/{d['metadata']['name']}" for _, d in docs))
    kube_validate(name, docs)
    try:
        assertions(name, values, docs)
    except (KeyError, IndexError, StopIteration, TypeError) as e:
        fail(f"[{name}] rendered manifests lack an expected field: {e!r}")

# ---- typos are refused by the schema
typos = {
    "replicaCont: 2": {"replicaCont": 2},
    "image.tagg": {"image": {"tagg": "x"}},
    "herald.shutdownGrase": {"herald": {"shutdownGrase": 5}},
    "apps[0].max_conection": {"apps": [{"id": "a", "key": "k", "secret": "s", "max_conection": 1}]},
    "adapter: reddis": {"adapter": "reddis"},
}
for label, values in typos.items():
    try:
        chart.validate_schema(values)
        fail(f"schema ACCEPTED a typo ({label})")
        continue
    except helm.HelmValuesError:
        pass
    try:
        chart.render(values, name="herald", namespace="herald")
        fail(f"helm template ACCEPTED a typo ({label})")
    except helm.HelmError:
        ok(f"schema rejects typo ({label}) in validation and in helm template")

# ---- settings Herald would refuse at start are refused by helm template
refused = {
    "redis-cluster without nodes": {"adapter": "redis-cluster"},
    "drainWindow > shutdownGrace": {"herald": {"shutdownGrace": 4, "drainWindow": 5}},
    "nodeTimeoutMs <= 2 x heartbeatIntervalMs": {"adapter": "nats", "heartbeatIntervalMs": 5000, "nodeTimeoutMs": 10000},
    "3 pods on the local adapter": {"replicaCount": 3},
}
for label, values in refused.items():
    try:
        chart.render(values, name="herald", namespace="herald")
        fail(f"helm template ACCEPTED {label}")
    except helm.HelmError as e:
        ok(f"helm template refuses {label}: {str(e).split('): ')[-1].strip()}")

# ---- additionalProperties false at every object level
with open(os.path.join(CHART, "values.schema.json")) as f:
    schema = json.load(f)
loose = []
def walk(node, where):
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            ap = node.get("additionalProperties", True)
            if ap is True or (ap is not False and not isinstance(ap, dict)):
                loose.append(where or "/")
            if isinstance(ap, dict) and "properties" in node:
                loose.append(where + " (properties plus open additionalProperties)")
        for k, v in node.items():
            walk(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, f"{where}[{i}]")
walk(schema, "")
if schema.get("$schema") != "http://json-schema.org/draft-07/schema#":
    fail("values.schema.json is not draft-07")
if loose:
    fail("schema objects without additionalProperties false: " + ", ".join(loose))
else:
    ok("values.schema.json (draft-07): every object closed (additionalProperties false, or a typed map)")
try:
    chart.validate_schema(chart.values)
    ok("values.yaml validates against values.schema.json")
except helm.HelmValuesError as e:
    fail(f"values.yaml fails its own schema: {e}")

# ---- a comment above every key of values.yaml
undocumented = []
with open(os.path.join(CHART, "values.yaml")) as f:
    lines = f.read().split("\n")
prev, list_indent = "", None
for n, line in enumerate(lines, 1):
    s = line.strip()
    if not s:
        continue
    ind = len(line) - len(line.lstrip())
    if list_indent is not None and (ind > list_indent or (ind == list_indent and s.startswith("- "))):
        prev = s
        continue
    list_indent = None
    if s.startswith("- "):
        list_indent = ind
    elif not s.startswith("#") and re.match(r'^[A-Za-z0-9_."/-]+:', s) and not prev.startswith("#"):
        undocumented.append(f"line {n}: {s}")
    prev = s
if undocumented:
    fail("values.yaml keys without a comment above: " + "; ".join(undocumented))
else:
    ok("values.yaml: a comment above every key")

# ---- the dashboard file is the docs one
link = os.path.join(CHART, "files/dashboards/herald.json")
if os.path.islink(link) and os.path.realpath(link) == os.path.realpath("docs/grafana/herald.json"):
    ok("files/dashboards/herald.json is a symlink to docs/grafana/herald.json (followed by helm)")
else:
    with open(link) as f:
        if f.read() != DASHBOARD:
            fail("files/dashboards/herald.json differs from docs/grafana/herald.json")

print()
if failures:
    print(f"helm.sh: {len(failures)} check(s) FAILED")
    sys.exit(1)
print("helm.sh: all chart checks passed")
PY
