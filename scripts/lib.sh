# Shared set-up for scripts/demo and scripts/test: find or start what backstop needs.
# Sourced, not run. Everything it creates lives under .tmp/ in the checkout.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TMP="$ROOT/.tmp"
mkdir -p "$TMP"

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The directory holding initdb/pg_ctl/postgres, installing Debian's postgresql if needed.
pg_bindir() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
    log "installing PostgreSQL from Debian's packages"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >&2
    dir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  fi
  printf '%s\n' "$dir"
}

# Runs a PostgreSQL server binary as a non-root user (initdb and postgres refuse root).
pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Exports PG_URL: a trust-auth superuser connection to a running server. Uses the server at
# 127.0.0.1:5432 when it answers as user postgres without a password; otherwise starts a
# private cluster under .tmp/pg on port 55432 (or reuses it).
ensure_postgres() {
  if [ -n "${BACKSTOP_TEST_DATABASE_URL:-}" ]; then
    PG_URL="$BACKSTOP_TEST_DATABASE_URL"; export PG_URL; return
  fi
  local bindir
  if command -v psql >/dev/null 2>&1 &&
     PGCONNECT_TIMEOUT=3 psql "postgres://postgres@127.0.0.1:5432/postgres" -qAtc 'select 1' >/dev/null 2>&1; then
    PG_URL="postgres://postgres@127.0.0.1:5432/postgres"; export PG_URL; return
  fi
  bindir="$(pg_bindir)"
  if [ -d /etc/postgresql ] && ! "$bindir/pg_isready" -q -h 127.0.0.1 -p 5432; then
    log "starting the system PostgreSQL cluster"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start >&2 || true
    sleep 2
    if PGCONNECT_TIMEOUT=3 "$bindir/psql" "postgres://postgres@127.0.0.1:5432/postgres" -qAtc 'select 1' >/dev/null 2>&1; then
      PG_URL="postgres://postgres@127.0.0.1:5432/postgres"; export PG_URL; return
    fi
  fi
  local data="$TMP/pg" port=55432
  if ! "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    log "starting a private PostgreSQL cluster in $data on port $port (trust auth, loopback only)"
    if [ ! -f "$data/PG_VERSION" ]; then
      rm -rf "$data"; mkdir -p "$data"
      [ "$(id -u)" -eq 0 ] && chown postgres "$data" "$TMP"
      pg_as_owner "$bindir/initdb" -D "$data" -A trust -U postgres >/dev/null
    fi
    pg_as_owner "$bindir/pg_ctl" -D "$data" -l "$data/log" -w \
      -o "-p $port -k /tmp -c listen_addresses=127.0.0.1" start >&2
  fi
  PG_URL="postgres://postgres@127.0.0.1:$port/postgres"; export PG_URL
}

# Builds the release binary once; both scripts use it.
build_release() {
  log "building backstop (release)"
  cargo build --release --locked --quiet
  BACKSTOP="$ROOT/target/release/backstop"; export BACKSTOP
}
