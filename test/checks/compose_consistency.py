#!/usr/bin/env python3
"""Check that the pieces of the Docker Compose deployment agree.

Compose itself accepts all of the mistakes checked here, and each of them
breaks the cluster without an error message:

- nodes with different apps, adapter, fabric URL or adapter prefix form
  separate clusters (or refuse each other's clients);
- two nodes with one HERALD_NODE_ID make logs and metrics ambiguous;
- a node missing from prometheus.yml is not scraped, one missing from
  haproxy.cfg gets no clients;
- a Grafana provider path that is not where docs/grafana is mounted shows
  no dashboard.

Usage:
  compose_consistency.py [--root DIR] COMPOSE_FILE [OVERRIDE_FILE ...]

The files are merged the way Compose merges them for what is checked here
(environment maps and volume lists per service, later files win).  Exits 1
and names every problem found.
"""

import argparse
import os
import re
import sys

import yaml

SHARED = (
    "HERALD_APP_ID",
    "HERALD_APP_KEY",
    "HERALD_APP_SECRET",
    "HERALD_ADAPTER",
    "HERALD_ADAPTER_PREFIX",
)
# Fabric addresses that must agree for the adapter in use.
FABRIC_URL = {
    "redis": "HERALD_REDIS_URL",
    "redis-cluster": "HERALD_REDIS_CLUSTER_NODES",
    "nats": "HERALD_NATS_SERVERS",
}
# Herald's built-in defaults (docs/configuration.md).
DEFAULTS = {
    "HERALD_APP_ID": "app-id",
    "HERALD_APP_KEY": "app-key",
    "HERALD_APP_SECRET": "app-secret",
    "HERALD_ADAPTER": "local",
    "HERALD_ADAPTER_PREFIX": "herald",
    "HERALD_PORT": "6001",
    "HERALD_METRICS_PORT": "9601",
    "HERALD_REDIS_URL": "redis://127.0.0.1:6379",
    "HERALD_NATS_SERVERS": "nats://127.0.0.1:4222",
}

PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
HAPROXY_CONFIG = "/usr/local/etc/haproxy/haproxy.cfg"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"

problems = []


def problem(msg):
    problems.append(msg)


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def env_map(env):
    """Compose environment: a map or a list of KEY=VALUE."""
    if env is None:
        return {}
    if isinstance(env, list):
        out = {}
        for item in env:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    return {k: "" if v is None else str(v) for k, v in env.items()}


def interpolate(value):
    """Resolve ${VAR}, ${VAR:-default} and ${VAR-default} like Compose."""

    def repl(m):
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        if op == ":-":
            return os.environ.get(name) or default
        if op == "-":
            return os.environ.get(name, default)
        return os.environ.get(name, "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", repl, value)


def volume_pairs(volumes, base_dir, root):
    """(source relative to root, or the named volume; container target)."""
    out = []
    for v in volumes or []:
        if isinstance(v, dict):
            source, target = v.get("source", ""), v.get("target", "")
        else:
            parts = str(v).split(":")
            if len(parts) == 1:
                source, target = "", parts[0]
            else:
                source, target = parts[0], parts[1]
        if source.startswith((".", "/")):
            source = os.path.relpath(os.path.normpath(os.path.join(base_dir, source)), root)
        out.append((source, target.rstrip("/") or "/"))
    return out


def merge(files, root):
    services = {}
    for path in files:
        doc = load_yaml(path)
        base_dir = os.path.dirname(os.path.abspath(path))
        for name, svc in (doc.get("services") or {}).items():
            svc = svc or {}
            cur = services.setdefault(name, {"environment": {}, "volumes": {}, "image": None, "build": None})
            cur["environment"].update(env_map(svc.get("environment")))
            for source, target in volume_pairs(svc.get("volumes"), base_dir, root):
                cur["volumes"][target] = source
            cur["image"] = svc.get("image", cur["image"])
            cur["build"] = svc.get("build", cur["build"])
    for svc in services.values():
        svc["environment"] = {k: interpolate(v) for k, v in svc["environment"].items()}
    return services


def herald_services(services):
    return sorted(name for name, svc in services.items() if any(k.startswith("HERALD_") for k in svc["environment"]))


def setting(svc, key):
    value = svc["environment"].get(key, "")
    return value if value != "" else DEFAULTS.get(key, "")


def mounted(services, service, target, root):
    """The repository file mounted at target in service, or None."""
    svc = services.get(service)
    if svc is None:
        problem(f"no `{service}` service")
        return None
    source = svc["volumes"].get(target)
    if source is None:
        problem(f"service `{service}` mounts nothing at {target}")
        return None
    path = os.path.join(root, source)
    if not os.path.exists(path):
        problem(f"service `{service}` mounts {source} at {target}, which does not exist")
        return None
    return source


def check_nodes(services, nodes):
    if len(nodes) < 2:
        problem(f"expected at least 2 Herald services (with HERALD_* environment), found {nodes}")
        return
    keys = list(SHARED)
    adapters = {setting(services[n], "HERALD_ADAPTER") for n in nodes}
    keys += [FABRIC_URL[a] for a in sorted(adapters) if a in FABRIC_URL]
    for key in keys:
        values = {n: setting(services[n], key) for n in nodes}
        if len(set(values.values())) != 1:
            detail = ", ".join(f"{n}={v!r}" for n, v in values.items())
            problem(f"{key} differs between Herald nodes: {detail}")
    if adapters == {"local"}:
        problem("the Herald nodes use HERALD_ADAPTER=local: they would not form a cluster")
    ids = {}
    for n in nodes:
        node_id = services[n]["environment"].get("HERALD_NODE_ID", "")
        if not node_id:
            problem(f"{n} has no HERALD_NODE_ID")
        ids.setdefault(node_id, []).append(n)
    for node_id, owners in ids.items():
        if node_id and len(owners) > 1:
            problem(f"HERALD_NODE_ID {node_id!r} is used by {', '.join(owners)}")


def check_prometheus(services, nodes, root):
    source = mounted(services, "prometheus", PROMETHEUS_CONFIG, root)
    if source is None:
        return
    doc = load_yaml(os.path.join(root, source))
    targets = set()
    for job in doc.get("scrape_configs") or []:
        for sc in job.get("static_configs") or []:
            targets.update(sc.get("targets") or [])
    for n in nodes:
        want = f"{n}:{setting(services[n], 'HERALD_METRICS_PORT')}"
        if want not in targets:
            problem(f"{source}: no scrape target {want} for Herald service {n}")
    for t in sorted(targets):
        host = t.rsplit(":", 1)[0]
        if host not in services:
            problem(f"{source}: scrape target {t} is not a compose service")
    rules = services["prometheus"]["volumes"].get("/etc/prometheus/rules")
    globs = doc.get("rule_files") or []
    if not any(g.startswith("/etc/prometheus/rules/") for g in globs):
        problem(f"{source}: rule_files does not load /etc/prometheus/rules/*.yml")
    if rules is None:
        problem("prometheus: deploy/prometheus/rules is not mounted at /etc/prometheus/rules")


def check_haproxy(services, nodes, root):
    source = mounted(services, "haproxy", HAPROXY_CONFIG, root)
    if source is None:
        return
    servers = {}  # address -> backend
    section = None
    checked = {"tunnel": False, "httpchk": False}
    with open(os.path.join(root, source), encoding="utf-8") as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            if words[0] in ("global", "defaults", "frontend", "backend", "listen", "resolvers", "peers"):
                section = " ".join(words[:2])
                continue
            if words[0] == "server" and len(words) >= 3:
                servers[words[2]] = section
            if words[:2] == ["timeout", "tunnel"]:
                checked["tunnel"] = True
            if words[:3] == ["option", "httpchk", "GET"] and len(words) >= 4 and words[3] == "/ready":
                checked["httpchk"] = True
    for n in nodes:
        want = f"{n}:{setting(services[n], 'HERALD_PORT')}"
        if want not in servers:
            problem(f"{source}: no `server ... {want}` for Herald service {n}")
    for addr in sorted(servers):
        host = addr.rsplit(":", 1)[0]
        if host not in services:
            problem(f"{source}: server {addr} is not a compose service")
    if not checked["tunnel"]:
        problem(f"{source}: no `timeout tunnel` (WebSockets would be cut at the server/client timeout)")
    if not checked["httpchk"]:
        problem(f"{source}: no `option httpchk GET /ready`")


def check_grafana(services, root):
    svc = services.get("grafana")
    if svc is None:
        problem("no `grafana` service")
        return
    dash_targets = [t for t, s in svc["volumes"].items() if s == "docs/grafana"]
    if not dash_targets:
        problem("grafana does not mount docs/grafana")
    prov = mounted(services, "grafana", GRAFANA_PROVISIONING, root)
    if prov is None:
        return
    pdir = os.path.join(root, prov, "dashboards")
    paths = []
    for fname in sorted(os.listdir(pdir)) if os.path.isdir(pdir) else []:
        if fname.endswith((".yml", ".yaml")):
            for p in load_yaml(os.path.join(pdir, fname)).get("providers") or []:
                paths.append(((p.get("options") or {}).get("path", ""), f"{prov}/dashboards/{fname}"))
    if not paths:
        problem(f"{prov}/dashboards has no dashboard provider")
    for path, where in paths:
        if path.rstrip("/") not in dash_targets:
            problem(f"{where}: provider path {path!r} is not where docs/grafana is mounted ({dash_targets})")
    ddir = os.path.join(root, prov, "datasources")
    uids = {}
    for fname in sorted(os.listdir(ddir)) if os.path.isdir(ddir) else []:
        if fname.endswith((".yml", ".yaml")):
            for d in load_yaml(os.path.join(ddir, fname)).get("datasources") or []:
                uids[d.get("uid")] = (d.get("url", ""), f"{prov}/datasources/{fname}")
    if "prometheus" not in uids:
        problem(f"{prov}/datasources: no datasource with uid `prometheus`")
    else:
        url, where = uids["prometheus"]
        m = re.match(r"https?://([^:/]+)", url)
        if not m or m.group(1) not in services:
            problem(f"{where}: datasource url {url!r} is not a compose service")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", help="repository root (default: the first file's directory)")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    root = os.path.abspath(args.root or os.path.dirname(os.path.abspath(args.files[0])))
    services = merge(args.files, root)
    nodes = herald_services(services)
    check_nodes(services, nodes)
    check_prometheus(services, nodes, root)
    check_haproxy(services, nodes, root)
    check_grafana(services, root)
    label = " + ".join(os.path.relpath(f, root) for f in args.files)
    if problems:
        print(f"compose consistency FAILED for {label}:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    adapter = setting(services[nodes[0]], "HERALD_ADAPTER")
    print(f"compose consistency ok for {label}: {len(nodes)} Herald nodes ({', '.join(nodes)}) on {adapter}, "
          "same apps and prefix, distinct node ids; Prometheus, HAProxy and Grafana agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
