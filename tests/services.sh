# Sourced by tests/run and tests/mutants: finds or starts the services the tests talk to
# (see tests/run's header for what each is and which variables point elsewhere).
# shellcheck shell=bash

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"

say() { printf 'tests/run: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else say "need root to run: $*"; return 1
  fi
}

reachable() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  local port=$1 what=$2
  for _ in $(seq 1 60); do
    reachable "$port" && return 0
    sleep 0.5
  done
  say "$what did not come up on 127.0.0.1:$port"
  return 1
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  reachable 5432 && return 0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    say "PostgreSQL is not installed: installing it from Debian's packages"
    apt_install postgresql
    fresh_install=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  say "PostgreSQL is not reachable on 127.0.0.1:5432: starting cluster $version/main"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for 5432 PostgreSQL
  if [ "${fresh_install:-0}" -eq 1 ]; then
    # Debian's default wants a password over TCP: give the postgres user one for the tests.
    say "setting a password for the postgres user (fresh install)"
    as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\""
    export TEST_DATABASE_URL="postgres://postgres:postgres@127.0.0.1:5432/postgres"
  fi
}

ensure_redis() {
  reachable 6379 && return 0
  if ! command -v redis-server >/dev/null 2>&1; then
    say "Redis is not installed: installing it from Debian's packages"
    apt_install redis-server
  fi
  say "Redis is not reachable on 127.0.0.1:6379: starting redis-server"
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_for 6379 Redis
}

# moto's server speaks SQS (FIFO groups, visibility timeouts, redrive) on loopback.
ensure_sqs() {
  if [ -n "${TEST_SQS_ENDPOINT:-}" ]; then return 0; fi
  if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c "import flask, moto" >/dev/null 2>&1; then
    say "moto's server is not installed: pip install 'moto[server]'"
    python3 -m pip install -q "moto[server]"
    hash -r
  fi
  local port
  port=$(free_port)
  say "starting moto_server (SQS) on 127.0.0.1:$port"
  moto_server -H 127.0.0.1 -p "$port" >"${TMPDIR:-/tmp}/seance-moto-$port.log" 2>&1 &
  moto_pid=$!
  wait_for "$port" moto_server
  export TEST_SQS_ENDPOINT="http://127.0.0.1:$port"
}

# ElastiCache Serverless is TLS-only and cluster-only: a TLS redis-server with a
# self-signed CA, and a one-node TLS cluster holding every slot (it refuses cross-slot
# commands as ElastiCache does). Both on free ports, stopped at the end.
ensure_redis_tls_and_cluster() {
  if [ -n "${TEST_REDIS_TLS_URL:-}" ] && [ -n "${TEST_REDIS_CLUSTER_URL:-}" ] &&
    [ -n "${TEST_TLS_SERVER_CERT:-}" ]; then return 0; fi
  if ! command -v openssl >/dev/null 2>&1; then
    say "openssl is not installed: installing it from Debian's packages"
    apt_install openssl
  fi
  redis_tls_dir=$(mktemp -d "${TMPDIR:-/tmp}/seance-redis-tls.XXXXXX")
  local dir=$redis_tls_dir
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=seance-test-ca" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$dir/server.key" -out "$dir/server.csr" >/dev/null 2>&1
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/san.ext" -out "$dir/server.pem" >/dev/null 2>&1
  local tls_port cluster_port
  tls_port=$(free_port)
  cluster_port=$(free_port)
  local tls_args=(--tls-cert-file "$dir/server.pem" --tls-key-file "$dir/server.key"
    --tls-ca-cert-file "$dir/ca.pem" --tls-auth-clients no --save "" --appendonly no
    --daemonize yes --dir "$dir")
  say "starting a TLS redis-server on 127.0.0.1:$tls_port and a one-node TLS cluster on 127.0.0.1:$cluster_port"
  redis-server --bind 127.0.0.1 --port 0 --tls-port "$tls_port" --pidfile "$dir/tls.pid" "${tls_args[@]}" >/dev/null
  # The cluster bus gets a port of its own (the default, port + 10000, may not exist).
  redis-server --bind 127.0.0.1 --port 0 --tls-port "$cluster_port" --tls-cluster yes \
    --cluster-enabled yes --cluster-port "$(free_port)" --cluster-config-file "$dir/nodes.conf" \
    --pidfile "$dir/cluster.pid" "${tls_args[@]}" >/dev/null
  cleanup_redis_tls() {
    for pidfile in "$redis_tls_dir/tls.pid" "$redis_tls_dir/cluster.pid"; do
      [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    rm -rf "$redis_tls_dir"
  }
  wait_for "$tls_port" "the TLS redis-server"
  wait_for "$cluster_port" "the cluster node"
  local cli=(redis-cli --tls --cacert "$dir/ca.pem" -h 127.0.0.1 -p "$cluster_port")
  "${cli[@]}" CLUSTER ADDSLOTSRANGE 0 16383 >/dev/null
  for _ in $(seq 1 60); do
    "${cli[@]}" CLUSTER INFO | grep -q 'cluster_state:ok' && break
    sleep 0.25
  done
  export TEST_REDIS_TLS_URL="rediss://127.0.0.1:$tls_port"
  export TEST_REDIS_CLUSTER_URL="rediss://127.0.0.1:$cluster_port"
  export TEST_REDIS_CA_FILE="$dir/ca.pem"
  # The same certificate serves tests/aws_tls.rs's HTTPS endpoint.
  export TEST_TLS_SERVER_CERT="$dir/server.pem" TEST_TLS_SERVER_KEY="$dir/server.key"
}

# Schema-driven REST tests (tests/schemathesis.rs) run schemathesis's `st` from PyPI.
ensure_schemathesis() {
  if ! command -v st >/dev/null 2>&1 || ! st --version 2>/dev/null | grep -q 'version 4'; then
    say "schemathesis 4 is not installed: pip install 'schemathesis>=4,<5'"
    python3 -m pip install -q "schemathesis>=4,<5"
    hash -r
  fi
}

# The browser suite (tests/browser.rs): Node.js and npm, the npm packages pinned by
# tests/browser/package-lock.json (playwright-core, axe-core, typescript, @asyncapi/parser)
# and Debian's chromium, which playwright-core drives (it downloads no browser).
ensure_browser() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "Node.js is not installed: installing nodejs and npm from Debian's packages"
    apt_install nodejs npm
  fi
  if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
    say "chromium is not installed: installing it from Debian's packages"
    apt_install chromium
  fi
  local stamp=tests/browser/node_modules/.seance-installed-from
  if ! cmp -s tests/browser/package-lock.json "$stamp" 2>/dev/null; then
    say "installing the browser suite's npm packages (npm ci in tests/browser)"
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
    cp tests/browser/package-lock.json "$stamp"
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cleanup() {
  [ -n "${moto_pid:-}" ] && kill "$moto_pid" 2>/dev/null || true
  declare -F cleanup_redis_tls >/dev/null && cleanup_redis_tls
  return 0
}
trap cleanup EXIT

