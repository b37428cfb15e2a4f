#!/usr/bin/env bash
# deploy_manifests (label e2e): validates deploy/ offline against the real
# binary, then brings deploy/local/cluster.sh up, uses it and stops it.
#   tests/deploy_test.sh BIN SOURCE_DIR
# 1. Renders every kustomize overlay (kubectl kustomize, no cluster) and
#    checks every statestream container: each flag is listed by
#    `statestream <role> --help`, each $(VAR) resolves to a declared env var
#    (and every env var is used), env vars from the ConfigMap exist in it,
#    probes and --listen point at a declared containerPort, absolute flag
#    paths lie under a volume mount, images map to a Dockerfile in
#    deploy/docker (or are the known public Redis image); readiness is a
#    native grpc probe and liveness a tcpSocket one for worker roles (their
#    health follows Redis); terminationGracePeriodSeconds covers preStop's
#    sleep + --shutdown-grace + a margin.
#    Needs kubectl with kustomize >= v4 (the manifests use `labels:` and
#    inline `patches:`), which Debian 12's archive lacks: without it part 1
#    is skipped (loudly), part 2 still runs, and the script exits 77 (ctest
#    SKIP_RETURN_CODE) instead of 0.
# 2. cluster.sh up; every gateway answers `session list`; a session created
#    through one gateway is read through the other; cluster.sh stop; no
#    process is left.
# Worst case (every step at its timeout): 10 s + 20 s per overlay + 155 s
# for part 2 + ~20 s cleanup, ~265 s with four overlays.
set -euo pipefail
BIN="$1"
SRC="$2"
[ -x "$BIN" ] || { echo "FAIL: no binary $BIN"; exit 1; }
manifests=1
kustomize_version=""
if command -v kubectl >/dev/null; then
  kustomize_version="$(timeout 10 kubectl version --client 2>/dev/null |
    sed -n 's/^Kustomize Version: v\{0,1\}\([0-9][0-9.]*\).*/\1/p' || true)"
fi
if [ -z "$kustomize_version" ] || [ "${kustomize_version%%.*}" -lt 4 ]; then
  manifests=0
  skip_msg="SKIP: manifest rendering needs kubectl with kustomize >= v4 (not in Debian 12)"
  echo "########################################################################"
  echo "$skip_msg"
  echo "  found: $(command -v kubectl >/dev/null && echo "kubectl, kustomize ${kustomize_version:-version unknown}" || echo "no kubectl")"
  echo "  part 1 (manifest checks) skipped; part 2 (local cluster) still runs"
  echo "########################################################################"
fi
PY=""
if [ "$manifests" = 1 ]; then
  for p in /usr/bin/python3 python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import yaml' 2>/dev/null; then PY="$p"; break; fi
  done
  [ -n "$PY" ] || { echo "FAIL: python3 with yaml (apt install python3-yaml) not found"; exit 1; }
fi

work="$(mktemp -d /tmp/ss-deploy-test.XXXXXX)"
cluster_dir="$work/cluster"
cleanup() {
  "$SRC/deploy/local/cluster.sh" stop --dir "$cluster_dir" >/dev/null 2>&1 || true
  if [ -f "$work/pids.copy" ]; then
    while read -r pid _; do kill -KILL "$pid" 2>/dev/null || true; done <"$work/pids.copy"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# --- 1. manifests -----------------------------------------------------------
if [ "$manifests" = 1 ]; then
for role in gateway worker serve; do
  "$BIN" "$role" --help >"$work/help-$role.txt" 2>&1 || true
  grep -q -- '--listen' "$work/help-$role.txt" || { echo "FAIL: $role --help lists no flags"; exit 1; }
done
overlays=("$SRC"/deploy/k8s/overlays/*/)
[ "${#overlays[@]}" -ge 3 ] || { echo "FAIL: expected overlays cpu, gpu, dev"; exit 1; }
for o in "${overlays[@]}"; do
  name="$(basename "$o")"
  timeout 20 kubectl kustomize "$o" >"$work/$name.yaml" || { echo "FAIL: kubectl kustomize $o"; exit 1; }
done

"$PY" - "$work" "$SRC" "${overlays[@]}" <<'PYEOF'
import os, re, sys, yaml

work, src, overlays = sys.argv[1], sys.argv[2], sys.argv[3:]
errors = []

def help_flags(role):
    text = open(os.path.join(work, f"help-{role}.txt")).read()
    return set(re.findall(r"^  --([A-Za-z0-9_-]+)", text, re.M))

def help_default(role, flag):
    text = open(os.path.join(work, f"help-{role}.txt")).read()
    m = re.search(r"^  --" + re.escape(flag) + r" \(default \"?([^\")]*)\"?\)", text, re.M)
    return m.group(1) if m else None

FLAGS = {r: help_flags(r) for r in ("gateway", "worker", "serve")}
# Seconds margin terminationGracePeriodSeconds must leave beyond preStop's
# sleep and --shutdown-grace (and, for a worker, its drain's commits of
# up to --residency-bytes at DRAIN_BYTES_PER_S: docs/deploy.md).
GRACE_MARGIN = 5
DRAIN_BYTES_PER_S = 50e6
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
UNIT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}

def seconds(text):
    """An absl/Go duration (20s, 500ms, 1m30s) in seconds, else None."""
    if text is None or not re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ns|us|ms|s|m|h))+|0", text):
        return None
    return sum(float(n) * UNIT[u] for n, u in DURATION.findall(text))

def prestop_seconds(c):
    """preStop's sleep in seconds (0 without one), None if not a sleep."""
    pre = c.get("lifecycle", {}).get("preStop")
    if not pre:
        return 0
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    cmd = pre.get("exec", {}).get("command", [])
    if len(cmd) == 2 and os.path.basename(cmd[0]) == "sleep":
        try:
            return float(cmd[1])
        except ValueError:
            return seconds(cmd[1])
    return None

# Images built here, and the public images the manifests may name.
DOCKERFILES = {"cpu": "Dockerfile", "cuda": "Dockerfile.cuda"}
PUBLIC = {"redis:7-bookworm"}

def check_image(where, image):
    if image in PUBLIC:
        return False
    name, _, tag = image.rpartition(":")
    if not name or name.rsplit("/", 1)[-1] != "statestream":
        errors.append(f"{where}: image {image!r} is neither statestream:TAG nor a known public image")
        return False
    df = DOCKERFILES.get(tag)
    if df is None or not os.path.isfile(os.path.join(src, "deploy/docker", df)):
        errors.append(f"{where}: image {image!r}: no deploy/docker Dockerfile for tag {tag!r}")
    return True

# Secrets the operator creates (docs/deploy.md, "Secrets").
EXTERNAL_SECRETS = {"statestream-api-keys", "statestream-internal-token", "statestream-tls"}

VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# Environment variables the binary itself reads (cli/redis_flags.cc).
READ_BY_BINARY = {"STATESTREAM_REDIS_PASSWORD"}

for overlay in overlays:
    oname = os.path.basename(overlay.rstrip("/"))
    docs = [d for d in yaml.safe_load_all(open(os.path.join(work, oname + ".yaml"))) if d]
    kinds = {d["kind"] for d in docs}
    for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
              "ConfigMap", "NetworkPolicy", "PersistentVolumeClaim"):
        if k not in kinds:
            errors.append(f"{oname}: no {k}")
    cms = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    # Only dev renders Secrets (its public development ones); every other
    # overlay expects them created beforehand (docs/deploy.md, "Secrets"):
    # one rendered there would overwrite the real one at each apply.
    if oname == "dev":
        for n in sorted(EXTERNAL_SECRETS - {"statestream-tls"} - secrets):
            errors.append(f"dev: Secret {n} not generated")
    else:
        for n in sorted(secrets):
            errors.append(f"{oname}: renders Secret {n} (an apply would overwrite the real one)")
        secrets = secrets | EXTERNAL_SECRETS
    pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    roles_seen = set()
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        spec = d["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "secret" in v and v["secret"]["secretName"] not in secrets:
                errors.append(f"{oname}/{d['metadata']['name']}: volume secret {v['secret']['secretName']} not rendered")
            if "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] not in pvcs:
                errors.append(f"{oname}/{d['metadata']['name']}: PVC {v['persistentVolumeClaim']['claimName']} not rendered")
        for c in spec["containers"]:
            where = f"{oname}/{d['kind']}/{d['metadata']['name']}/{c['name']}"
            ports = {p["containerPort"] for p in c.get("ports", [])}
            names = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
            for pk in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(pk)
                if not probe:
                    continue
                for kind in ("grpc", "tcpSocket", "httpGet"):
                    if kind in probe:
                        port = probe[kind]["port"]
                        port = names.get(port, port)
                        if port not in ports:
                            errors.append(f"{where}: {pk} port {probe[kind]['port']} is not a containerPort")
            ours = check_image(where, c["image"])
            if not ours:
                continue
            if c.get("command"):
                errors.append(f"{where}: statestream containers use the image ENTRYPOINT, not command")
            env = {}
            for e in c.get("env", []):
                src_ = e.get("valueFrom", {})
                if "configMapKeyRef" in src_:
                    ref = src_["configMapKeyRef"]
                    if ref["name"] not in cms or ref["key"] not in cms[ref["name"]]:
                        errors.append(f"{where}: env {e['name']}: ConfigMap {ref['name']} has no key {ref['key']}")
                        env[e["name"]] = ""
                    else:
                        env[e["name"]] = str(cms[ref["name"]][ref["key"]])
                elif "fieldRef" in src_:
                    env[e["name"]] = "10.0.0.1" if "IP" in src_["fieldRef"]["fieldPath"] else "pod-0"
                else:
                    env[e["name"]] = str(e.get("value", ""))
            used = set()
            def expand(s):
                def sub(m):
                    used.add(m.group(1))
                    if m.group(1) not in env:
                        errors.append(f"{where}: $({m.group(1)}) is not a declared env var")
                        return ""
                    return env[m.group(1)]
                return VAR.sub(sub, s)
            args = [expand(a) for a in c.get("args", [])]
            for e in env:
                # The binary reads flags, and this one variable
                # (docs/deploy.md: the Redis password from a Secret).
                if e not in used and e not in READ_BY_BINARY:
                    errors.append(f"{where}: env {e} is never used (the binary reads flags, not env vars)")
            if not args or args[0] not in FLAGS:
                errors.append(f"{where}: first arg must be a role (gateway, worker, serve), got {args[:1]}")
                continue
            role = args[0]
            roles_seen.add(role)
            mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
            i = 1
            values = {}
            while i < len(args):
                a = args[i]
                if not a.startswith("--"):
                    errors.append(f"{where}: unexpected positional arg {a!r}")
                    i += 1
                    continue
                flag, eq, val = a[2:].partition("=")
                flag = flag.replace("_", "-")
                if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                    val = args[i + 1]
                    i += 1
                if flag not in {f.replace("_", "-") for f in FLAGS[role]}:
                    errors.append(f"{where}: `statestream {role}` has no flag --{flag}")
                values[flag] = val
                if val.startswith("/") and not any(val == m or val.startswith(m.rstrip("/") + "/") for m in mounts):
                    errors.append(f"{where}: --{flag}={val} is not under a volumeMount")
                i += 1
            listen = values.get("listen")
            if not listen:
                errors.append(f"{where}: no --listen (the default is loopback-only)")
            else:
                host, _, port = listen.rpartition(":")
                if host in ("127.0.0.1", "localhost"):
                    errors.append(f"{where}: --listen {listen} is loopback: unreachable in a pod")
                if not port.isdigit() or int(port) not in ports:
                    errors.append(f"{where}: --listen port {port} is not a containerPort")
            if "grpc" not in c.get("readinessProbe", {}):
                errors.append(f"{where}: readinessProbe is not a native grpc probe")
            # Kubernetes' gRPC probes speak plaintext: with --tls-cert on
            # --listen, each must use the --health-listen port.
            if values.get("tls-cert"):
                health = values.get("health-listen", "").rpartition(":")[2]
                for pk in ("startupProbe", "readinessProbe", "livenessProbe"):
                    g = c.get(pk, {}).get("grpc")
                    if g is not None and str(names.get(g["port"], g["port"])) != health:
                        errors.append(f"{where}: {pk} is a gRPC probe of a TLS port (use --health-listen's)")
            live = c.get("livenessProbe", {})
            if role in ("worker", "serve"):
                # Their gRPC health is NOT_SERVING while the state store does
                # not answer: a grpc liveness probe would restart every
                # worker during a Redis outage.
                if "tcpSocket" not in live:
                    errors.append(f"{where}: livenessProbe must be tcpSocket (gRPC health follows Redis)")
                elif listen and str(names.get(live["tcpSocket"]["port"], live["tcpSocket"]["port"])) != \
                        listen.rpartition(":")[2]:
                    errors.append(f"{where}: tcpSocket livenessProbe is not on the --listen port")
            elif "grpc" not in live and "tcpSocket" not in live:
                errors.append(f"{where}: livenessProbe is neither grpc nor tcpSocket")
            # Gateways sit behind a Service: preStop lets it drop the
            # endpoint before SIGTERM. Workers have no Service and leave the
            # registry at SIGTERM, so they need none.
            if role == "gateway" and "preStop" not in c.get("lifecycle", {}):
                errors.append(f"{where}: no preStop")
            if d["kind"] == "Deployment":
                grace = seconds(values.get("shutdown-grace", help_default(role, "shutdown-grace")))
                pre = prestop_seconds(c)
                tgps = spec.get("terminationGracePeriodSeconds", 30)
                drain = 0.0
                if role == "worker":
                    resident = values.get("residency-bytes", help_default(role, "residency-bytes"))
                    drain = float(resident) / DRAIN_BYTES_PER_S if resident and resident.isdigit() else None
                if grace is None:
                    errors.append(f"{where}: cannot read --shutdown-grace")
                elif drain is None:
                    errors.append(f"{where}: cannot read --residency-bytes")
                elif pre is None:
                    errors.append(f"{where}: preStop is not a sleep: cannot check the grace period")
                elif tgps < pre + grace + drain + GRACE_MARGIN:
                    errors.append(f"{where}: terminationGracePeriodSeconds {tgps} < preStop {pre:g}s"
                                  f" + --shutdown-grace {grace:g}s + the drain's commits {drain:.0f}s"
                                  f" + {GRACE_MARGIN}s margin")
            if role == "worker" and oname == "gpu":
                if "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}):
                    errors.append(f"{where}: gpu overlay worker without an nvidia.com/gpu limit")
                if not c["image"].endswith(":cuda"):
                    errors.append(f"{where}: gpu overlay worker not on the cuda image")
                if values.get("device") != "cuda":
                    errors.append(f"{where}: gpu overlay worker without --device=cuda (would fall back to the cpu)")
                if spec.get("nodeSelector", {}).get("nvidia.com/gpu.compute.major") != "9":
                    errors.append(f"{where}: gpu overlay worker not pinned to compute capability 9 (the image is sm_90)")
    for r in ("gateway", "worker"):
        if r not in roles_seen:
            errors.append(f"{oname}: no {r} container")
    if oname == "dev":
        redis = [d for d in docs if d["kind"] == "StatefulSet"]
        rargs = " ".join(" ".join(c.get("args", []))
                         for c in redis[0]["spec"]["template"]["spec"]["containers"]) if redis else ""
        if "appendonly" not in rargs:
            errors.append("dev: no Redis StatefulSet with AOF")
        # Session keys carry TTLs: volatile-* policies evict committed states.
        if "--maxmemory-policy noeviction" not in rargs or "--maxmemory " not in rargs:
            errors.append("dev: Redis without --maxmemory and --maxmemory-policy noeviction")

for e in errors:
    print("FAIL:", e)
if errors:
    sys.exit(1)
print(f"manifests ok: {', '.join(os.path.basename(o.rstrip('/')) for o in overlays)}")
PYEOF
fi

# --- 2. local cluster -------------------------------------------------------
command -v redis-server >/dev/null || { echo "FAIL: redis-server not found"; exit 1; }
if ! timeout 45 "$SRC/deploy/local/cluster.sh" up --dir "$cluster_dir" --bin "$BIN" --timeout 30 \
    >"$work/up.log" 2>&1; then
  cp "$cluster_dir/pids" "$work/pids.copy" 2>/dev/null || true
  echo "FAIL: cluster.sh up"; cat "$work/up.log"; exit 1
fi
cp "$cluster_dir/pids" "$work/pids.copy"
# shellcheck disable=SC1091
source "$cluster_dir/cluster.env"
[ "$(wc -l <"$work/pids.copy")" -eq 6 ] || { echo "FAIL: expected 6 processes"; cat "$work/pids.copy"; exit 1; }
IFS=, read -r -a gws <<<"$GATEWAYS"
[ "${#gws[@]}" -eq 2 ] || { echo "FAIL: expected 2 gateways, got $GATEWAYS"; exit 1; }
for g in "${gws[@]}"; do
  timeout 20 "$BIN" session list --target "$g" --timeout 10s >/dev/null ||
    { echo "FAIL: gateway $g does not answer"; exit 1; }
done
timeout 20 "$BIN" session create deploy-test-1 --target "${gws[0]}" --timeout 10s >/dev/null ||
  { echo "FAIL: session create through ${gws[0]}"; exit 1; }
timeout 20 "$BIN" session get deploy-test-1 --target "${gws[1]}" --timeout 10s | grep -q deploy-test-1 ||
  { echo "FAIL: session made through ${gws[0]} not visible through ${gws[1]}"; exit 1; }

# Three tiers, up to 15 s each.
timeout 60 "$SRC/deploy/local/cluster.sh" stop --dir "$cluster_dir" >/dev/null ||
  { echo "FAIL: cluster.sh stop"; exit 1; }
left=""
while read -r pid name; do
  if kill -0 "$pid" 2>/dev/null; then left="$left $name($pid)"; fi
done <"$work/pids.copy"
[ -z "$left" ] || { echo "FAIL: still running after stop:$left"; exit 1; }
[ ! -f "$cluster_dir/pids" ] || { echo "FAIL: pidfile left behind"; exit 1; }
echo "local cluster ok: 3 workers, 2 gateways, Redis; stopped cleanly"
if [ "$manifests" = 0 ]; then
  echo "$skip_msg"
  exit 77
fi
echo PASS
