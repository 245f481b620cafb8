#!/usr/bin/env bash
# Local stack: moto on 127.0.0.1, resources provisioned from template.yaml, then either
#   stack.sh local   serve the exchange API and demo issuer on loopback until Ctrl-C
#   stack.sh test [FILTER...]   run every test (or those matching FILTER) against it
# moto is always stopped on exit. Nothing listens beyond 127.0.0.1.
set -euo pipefail
mode=${1:?usage: stack.sh local|test|bench}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
venv="$root/.venv"
state="$root/.local"
mkdir -p "$state"

# moto applies one request at a time and copies tables on every transaction, so under a test
# suite's load one call can take seconds; the deployed defaults (1.5 s per attempt, 3 s per call)
# would fire spuriously. Tests that exercise deadlines set their own.
export NHI_AWS_ATTEMPT_TIMEOUT_MS=${NHI_AWS_ATTEMPT_TIMEOUT_MS:-30000}
export NHI_AWS_OPERATION_TIMEOUT_MS=${NHI_AWS_OPERATION_TIMEOUT_MS:-90000}
export NHI_REQUEST_DEADLINE_MS=${NHI_REQUEST_DEADLINE_MS:-29000}

free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

moto_pid=""
stop_moto() {
  if [ -n "$moto_pid" ] && kill -0 "$moto_pid" 2>/dev/null; then
    kill "$moto_pid" 2>/dev/null || true
    wait "$moto_pid" 2>/dev/null || true
  fi
}
trap stop_moto EXIT
trap 'exit 130' INT TERM

start_moto() {
  local port=$1
  # One request at a time, so conditional writes are atomic as in DynamoDB (see moto_serial.py).
  "$venv/bin/python" infra/local/moto_serial.py -H 127.0.0.1 -p "$port" >"$state/moto-$mode.log" 2>&1 &
  moto_pid=$!
  for _ in $(seq 1 100); do
    if "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
      return 0
    fi
    kill -0 "$moto_pid" 2>/dev/null || { echo "moto failed to start; see $state/moto-$mode.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "moto did not become ready on 127.0.0.1:$port" >&2
  exit 1
}

# moto on a free loopback port, provisioned from template.yaml; its environment sourced (exported).
#   start_stack PREFIX ENV_NAME BROKER_ISSUER_URL   (environment in .local/ENV_NAME.env)
start_stack() {
  local prefix=$1 env_file="$state/$2.env" issuer_url=$3 moto_port
  moto_port=${NHI_MOTO_PORT:-$(free_port)}
  start_moto "$moto_port"
  echo "moto (emulated AWS) on http://127.0.0.1:$moto_port"
  "$venv/bin/python" infra/local/provision.py --endpoint "http://127.0.0.1:$moto_port" \
    --prefix "$prefix" --env-file "$env_file" --param "BrokerIssuerUrl=$issuer_url"
  # shellcheck disable=SC1090
  source "$env_file"
}

case "$mode" in
  local)
    port=${NHI_LOCAL_PORT:-8787}
    echo "building nhi-local..."
    cargo build -p nhi-local
    start_stack nhi-local local "http://127.0.0.1:$port"
    export NHI_LOCAL_PORT=$port
    "$root/target/debug/nhi-local" &
    app_pid=$!
    trap 'kill -INT $app_pid 2>/dev/null; wait $app_pid 2>/dev/null; exit 0' INT TERM
    wait "$app_pid"
    ;;
  test)
    start_stack nhi-test test http://127.0.0.1:8787
    cargo test --workspace --lib --bins --tests "${@:2}"
    ;;
  bench)
    # Cold start, warm latency and peak memory of the sam-built functions (make deploy-build first),
    # against two reference binaries built the same way in the same run: a hello-world lambda_http
    # and the same with aws-config and the KMS and DynamoDB clients (infra/bench/baselines).
    PATH="$root/.venv-deploy/bin:$PATH" "$root/.venv-deploy/bin/cargo-lambda" lambda build --release \
      --"${BENCH_ARCH:-x86-64}" -p nhi-bench-baselines
    cargo build -q -p brokerctl
    start_stack nhi-bench bench http://127.0.0.1:8787
    # exchange's first invocation is a real token exchange (registered issuer, grant, subject token).
    "$venv/bin/python" infra/bench/exchange_event.py "$root/target/debug/brokerctl" "$state/bench-exchange-event.json"
    n=${2:-20}
    for binary in target/lambda/hello-http/bootstrap target/lambda/hello-sdk/bootstrap; do
      "$venv/bin/python" infra/bench/coldstart.py "$binary" events/exchange-jwks-request.json "$n"
    done
    "$venv/bin/python" infra/bench/coldstart.py .aws-sam/build/ExchangeFunction/bootstrap "$state/bench-exchange-event.json" "$n"
    for pair in RotateFunction:rotate-scheduled RevokeFanoutFunction:revoke-fanout-retry-scheduled \
      ExpireSweeperFunction:expire-sweeper-scheduled AuditExportFunction:audit-export-stream; do
      "$venv/bin/python" infra/bench/coldstart.py ".aws-sam/build/${pair%%:*}/bootstrap" "events/${pair#*:}.json" "$n"
    done
    ;;
  *)
    echo "usage: stack.sh local|test|bench" >&2
    exit 2
    ;;
esac
