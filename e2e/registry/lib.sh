# shellcheck shell=bash
# e2e/registry/lib.sh — shared helpers for the registry test scripts.
#
# Sourced (not run) by e2e/registry/conformance and e2e/registry/clients.
# It starts a registry on a free loopback port with a throw-away data
# directory and stops it again, for two implementations with different CLIs:
#   berth         berth-registry serve --listen ADDR --data DIR [--tls-cert F --tls-key F]
#   distribution  CNCF Distribution v3 (`registry serve CONFIG`), the baseline
# Everything listens on 127.0.0.1 only.
#
# berth_htpasswd_auth BINARY DIR USER PASSWORD (below): writes into DIR an htpasswd
# file (bcrypt), a token key pair and an auth config (mode Htpasswd, USER
# may pull, push and delete everywhere) and sets REGISTRY_ARGS to use it.

# shellcheck disable=SC2034 # used by the scripts that source this file
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BERTH_CACHE="${BERTH_CACHE:-$HOME/.cache/berth}"
export PATH="$BERTH_CACHE/bin:$PATH"

REGISTRY_PID=""
# Extra arguments for `berth-registry serve` (e.g. --auth-config FILE).
REGISTRY_ARGS=()
# Where berth keeps images: fs (the DATA_DIR given to registry_start) or s3
# (after s3_start: the bucket of a versitygw on loopback, under the prefix
# S3_PREFIX, or else DATA_DIR's base name, so each registry started gets its
# own unless they are meant to share).
STORAGE=fs
S3_PREFIX=""

# s3_start DIR: start a real S3 server (versitygw) keeping its files in DIR,
# export its endpoint, bucket and keys, and store berth's images there.
s3_start() {
  eval "$("$REPO_ROOT/e2e/tools/versitygw" start "$1")"
  STORAGE=s3
}

# s3_stop DIR: stop the server s3_start started (safe to repeat).
s3_stop() {
  "$REPO_ROOT/e2e/tools/versitygw" stop "$1"
}

die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }
note() { printf '# %s\n' "$*"; }

# need_tools NAME...: fail early, pointing at the installer.
need_tools() {
  local t missing=()
  for t in "$@"; do command -v "$t" >/dev/null || missing+=("$t"); done
  ((${#missing[@]} == 0)) || die "missing ${missing[*]}: run e2e/tools/install"
}

# free_port: print a TCP port that is free on 127.0.0.1 right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# registry_impl BINARY: print "berth" or "distribution" for a registry binary.
registry_impl() {
  if "$1" --version 2>&1 | grep -q 'distribution/distribution'; then
    echo distribution
  else
    echo berth
  fi
}

# registry_start IMPL BINARY DATA_DIR PORT LOG_FILE [TLS_CERT TLS_KEY]
# Starts the registry in the background, sets REGISTRY_PID, and waits until
# GET /v2/ answers (30 s at most).
registry_start() {
  local impl=$1 bin=$2 data=$3 port=$4 logf=$5 cert=${6:-} key=${7:-}
  local addr="127.0.0.1:$port" scheme=http
  [[ -n $cert ]] && scheme=https
  mkdir -p "$data"
  case $impl in
    berth)
      local args=(serve --listen "$addr" --data "$data" "${REGISTRY_ARGS[@]}")
      if [[ $STORAGE == s3 ]]; then
        args+=(--s3-bucket "$BERTH_S3_BUCKET" --s3-endpoint "$BERTH_S3_ENDPOINT"
          --s3-prefix "${S3_PREFIX:-$(basename "$data")}")
      fi
      [[ -n $cert ]] && args+=(--tls-cert "$cert" --tls-key "$key")
      "$bin" "${args[@]}" >"$logf" 2>&1 &
      ;;
    distribution)
      local conf="$data.yml"
      {
        echo "version: 0.1"
        echo "log: {level: warn}"
        echo "storage:"
        echo "  filesystem: {rootdirectory: \"$data\"}"
        echo "  delete: {enabled: true}"
        echo "http:"
        echo "  addr: \"$addr\""
        echo "  secret: berth-e2e-not-a-secret"
        if [[ -n $cert ]]; then
          echo "  tls: {certificate: \"$cert\", key: \"$key\"}"
        fi
      } >"$conf"
      # Distribution reads any REGISTRY_* variable as a configuration
      # override (skopeo's REGISTRY_AUTH_FILE among them): drop them all.
      # It also exports traces over OTLP unless told not to.
      local unset=() v
      for v in $(compgen -e); do [[ $v == REGISTRY_* ]] && unset+=(-u "$v"); done
      env "${unset[@]}" OTEL_TRACES_EXPORTER=none "$bin" serve "$conf" >"$logf" 2>&1 &
      ;;
    *) die "unknown registry implementation: $impl" ;;
  esac
  REGISTRY_PID=$!
  local curl_tls=()
  [[ -n $cert ]] && curl_tls=(--cacert "${REGISTRY_CA:-$cert}")
  local i code
  for ((i = 0; i < 300; i++)); do
    if ! kill -0 "$REGISTRY_PID" 2>/dev/null; then
      REGISTRY_PID=""
      cat "$logf" >&2
      die "$impl registry exited during start-up (log above)"
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' "${curl_tls[@]}" "$scheme://$addr/v2/" || true)
    if [[ $code == 200 || $code == 401 ]]; then
      return 0
    fi
    sleep 0.1
  done
  cat "$logf" >&2
  die "$impl registry did not answer GET $scheme://$addr/v2/ within 30s"
}

# registry_stop: stop the registry started by registry_start (safe to repeat).
registry_stop() {
  if [[ -n $REGISTRY_PID ]]; then
    kill "$REGISTRY_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do # 10 s to shut down, then SIGKILL
      kill -0 "$REGISTRY_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$REGISTRY_PID" 2>/dev/null || true
    wait "$REGISTRY_PID" 2>/dev/null || true
    REGISTRY_PID=""
  fi
}

berth_htpasswd_auth() {
  local bin=$1 dir=$2 user=$3 password=$4
  mkdir -p "$dir"
  printf '%s\n' "$password" | "$bin" htpasswd "$user" >"$dir/htpasswd"
  "$bin" keygen "$dir/keys"
  cat >"$dir/auth.json" <<EOF
{
  "mode": "Htpasswd",
  "service": "e2e.registry.berth.dev",
  "keysDir": "$dir/keys",
  "htpasswd": {"file": "$dir/htpasswd"},
  "policy": {"authenticated": ["pull", "push", "delete"]}
}
EOF
  REGISTRY_ARGS=(--auth-config "$dir/auth.json")
}

# berth_kubernetes_auth BINARY DIR NAMESPACE: Kubernetes mode against the
# e2e cluster (it must be up: e2e/cluster up). Creates NAMESPACE (if missing)
# with a service account `pusher` bound to a Role that may pull, push and
# delete its repositories, writes token keys and an auth config into DIR,
# sets REGISTRY_ARGS, and KUBE_TOKEN to a one-hour token of `pusher`. The
# registry reviews tokens with the credentials of KUBECONFIG.
berth_kubernetes_auth() {
  local bin=$1 dir=$2 ns=$3
  eval "$("$REPO_ROOT/e2e/cluster" env)"
  export KUBECONFIG
  kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns" >/dev/null
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: pusher, namespace: $ns}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: berth-repositories, namespace: $ns}
rules:
- apiGroups: [berth.dev]
  resources: [repositories]
  verbs: [get, create, update, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: pusher-repositories, namespace: $ns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: berth-repositories}
subjects:
- {kind: ServiceAccount, name: pusher, namespace: $ns}
EOF
  KUBE_TOKEN=$(kubectl create token pusher -n "$ns" --duration 1h)
  mkdir -p "$dir"
  "$bin" keygen "$dir/keys"
  cat >"$dir/auth.json" <<EOF
{
  "mode": "Kubernetes",
  "service": "e2e.registry.berth.dev",
  "keysDir": "$dir/keys",
  "kubernetes": {"audiences": [], "sameNamespacePull": true}
}
EOF
  REGISTRY_ARGS=(--auth-config "$dir/auth.json")
}

# random_password: 24 random characters for a throw-away test user.
random_password() {
  python3 -c 'import secrets; print(secrets.token_urlsafe(18))'
}
