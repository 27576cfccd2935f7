#!/usr/bin/env bash
# Starts a private PostgreSQL, a private Redis, a private ClickHouse and (when TM_TANSU names
# the tansu binary) a Kafka-protocol broker for the tests, on loopback ports of their own, with their data in a
# temporary directory; prints the addresses as shell assignments:
#   eval "$(tests/services.sh start)"   → TM_POSTGRES_URL, TM_REDIS_URL, TM_KAFKA_BROKERS, TM_SERVICES_DIR,
#     and for TLS: TM_SERVICES_CA (a test CA made here), TM_POSTGRES_TLS_URL (user trailmark_tls,
#     refused without TLS), TM_REDIS_TLS_URL (a TLS-only port), TM_CLICKHOUSE_URL (HTTP interface)
#   tests/services.sh stop "$TM_SERVICES_DIR"
# Needs Debian's postgresql, redis-server and clickhouse-server packages and tansu 0.6.0 from crates.io
# (./tests/run.sh services installs them).
set -euo pipefail

pg_bin() {
  local v
  v="$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$v" ] || { echo "no PostgreSQL under /usr/lib/postgresql" >&2; exit 1; }
  echo "/usr/lib/postgresql/$v/bin"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# A throwaway CA and a server certificate for 127.0.0.1 and localhost, signed by it.
make_certs() {
  local d="$1"
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=Trailmark test CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
    -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/server.ext" -out "$d/server.pem" 2>/dev/null
  chmod 600 "$d/server.key" "$d/ca.key"
}

start() {
  local dir bin pg_port redis_port redis_tls_port as_pg=()
  dir="$(mktemp -d /tmp/tm-services.XXXXXX)"
  chmod 755 "$dir"
  bin="$(pg_bin)"
  pg_port="$(free_port)"
  redis_port="$(free_port)"
  redis_tls_port="$(free_port)"
  make_certs "$dir/tls"
  mkdir -p "$dir/pg"
  # PostgreSQL wants its key readable by its own user only.
  cp "$dir/tls/server.pem" "$dir/tls/server.key" "$dir/pg/"
  # initdb refuses to run as root: the cluster belongs to the postgres user.
  if [ "$(id -u)" -eq 0 ]; then
    as_pg=(runuser -u postgres --)
    chown -R postgres "$dir/pg"
  fi
  "${as_pg[@]}" "$bin/initdb" -D "$dir/pg/data" -U trailmark --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  # trailmark_tls may only connect over TLS (the TLS tests connect as it).
  { printf 'hostnossl all trailmark_tls 127.0.0.1/32 reject\nhostssl all trailmark_tls 127.0.0.1/32 trust\n'
    cat "$dir/pg/data/pg_hba.conf"; } >"$dir/pg/hba.tmp"
  "${as_pg[@]}" cp "$dir/pg/hba.tmp" "$dir/pg/data/pg_hba.conf"
  "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w \
    -o "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200 -c ssl=on -c ssl_cert_file=$dir/pg/server.pem -c ssl_key_file=$dir/pg/server.key" start >/dev/null \
    || { cat "$dir/pg/server.log" >&2; exit 1; }
  "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U trailmark trailmark
  "$bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U trailmark -d trailmark -c "CREATE ROLE trailmark_tls LOGIN SUPERUSER"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" \
    --tls-port "$redis_tls_port" --tls-cert-file "$dir/tls/server.pem" --tls-key-file "$dir/tls/server.key" \
    --tls-ca-cert-file "$dir/tls/ca.pem" --tls-auth-clients no
  for _ in $(seq 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "TM_SERVICES_DIR=$dir"
  echo "TM_POSTGRES_URL=postgres://trailmark@127.0.0.1:$pg_port/trailmark"
  echo "TM_REDIS_URL=redis://127.0.0.1:$redis_port"
  echo "TM_SERVICES_CA=$dir/tls/ca.pem"
  echo "TM_POSTGRES_TLS_URL='postgres://trailmark_tls@127.0.0.1:$pg_port/trailmark?sslmode=verify-full'"
  echo "TM_REDIS_TLS_URL=rediss://127.0.0.1:$redis_tls_port"
  echo "export TM_SERVICES_DIR TM_POSTGRES_URL TM_REDIS_URL TM_SERVICES_CA TM_POSTGRES_TLS_URL TM_REDIS_TLS_URL"
  start_clickhouse "$dir"
  if [ -n "${TM_TANSU:-}" ]; then
    local kafka_port
    kafka_port="$(free_port)"
    # tansu: an Apache Kafka compatible broker, in memory.
    setsid "$TM_TANSU" broker --listener-url "tcp://127.0.0.1:$kafka_port" \
      --advertised-listener-url "tcp://127.0.0.1:$kafka_port" --storage-engine memory://tansu/ \
      >"$dir/tansu.log" 2>&1 < /dev/null &
    echo $! >"$dir/tansu.pid"
    for _ in $(seq 100); do
      grep -q "ready in" "$dir/tansu.log" 2>/dev/null && break
      sleep 0.1
    done
    grep -q "ready in" "$dir/tansu.log" || { cat "$dir/tansu.log" >&2; exit 1; }
    echo "TM_KAFKA_BROKERS=127.0.0.1:$kafka_port"
    echo "export TM_KAFKA_BROKERS"
  fi
}

# ClickHouse (Debian's 18.16) with a config of its own: loopback ports, data under $dir/ch.
start_clickhouse() {
  local dir="$1" http_port tcp_port
  http_port="$(free_port)"
  tcp_port="$(free_port)"
  mkdir -p "$dir/ch/data" "$dir/ch/tmp"
  cat >"$dir/ch/config.xml" <<EOF
<yandex>
  <logger><level>warning</level><log>$dir/ch/server.log</log><errorlog>$dir/ch/error.log</errorlog></logger>
  <http_port>$http_port</http_port>
  <tcp_port>$tcp_port</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>$dir/ch/data/</path>
  <tmp_path>$dir/ch/tmp/</tmp_path>
  <users_config>/etc/clickhouse-server/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>536870912</mark_cache_size>
</yandex>
EOF
  setsid clickhouse-server --config-file="$dir/ch/config.xml" >"$dir/ch/stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/clickhouse.pid"
  for _ in $(seq 100); do
    [ "$(curl -s "http://127.0.0.1:$http_port/ping" 2>/dev/null)" = "Ok." ] && break
    sleep 0.1
  done
  [ "$(curl -s "http://127.0.0.1:$http_port/ping" 2>/dev/null)" = "Ok." ] \
    || { cat "$dir/ch/stdout.log" "$dir/ch/error.log" >&2 2>/dev/null; exit 1; }
  echo "TM_CLICKHOUSE_URL=http://127.0.0.1:$http_port"
  echo "export TM_CLICKHOUSE_URL"
}

stop() {
  local dir="$1" bin as_pg=()
  bin="$(pg_bin)"
  [ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)
  [ -f "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
  [ -f "$dir/tansu.pid" ] && kill "$(cat "$dir/tansu.pid")" 2>/dev/null || true
  if [ -f "$dir/clickhouse.pid" ]; then
    kill "$(cat "$dir/clickhouse.pid")" 2>/dev/null || true
    # ClickHouse takes a moment to stop; its data directory goes with $dir.
    for _ in $(seq 50); do kill -0 "$(cat "$dir/clickhouse.pid")" 2>/dev/null || break; sleep 0.1; done
  fi
  [ -d "$dir/pg/data" ] && "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/pg/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:?services dir}" ;;
  *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
