#!/usr/bin/env bash
# Starts a private PostgreSQL, a private Redis and (when TM_TANSU names the tansu binary) a
# Kafka-protocol broker for the tests, on loopback ports of their own, with their data in a
# temporary directory; prints the addresses as shell assignments:
#   eval "$(tests/services.sh start)"   → TM_POSTGRES_URL, TM_REDIS_URL, TM_KAFKA_BROKERS, TM_SERVICES_DIR
#   tests/services.sh stop "$TM_SERVICES_DIR"
# Needs Debian's postgresql and redis-server packages and tansu 0.6.0 from crates.io
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

start() {
  local dir bin pg_port redis_port as_pg=()
  dir="$(mktemp -d /tmp/tm-services.XXXXXX)"
  chmod 755 "$dir"
  bin="$(pg_bin)"
  pg_port="$(free_port)"
  redis_port="$(free_port)"
  # initdb refuses to run as root: the cluster belongs to the postgres user.
  if [ "$(id -u)" -eq 0 ]; then
    as_pg=(runuser -u postgres --)
    mkdir -p "$dir/pg"
    chown postgres "$dir/pg"
  fi
  "${as_pg[@]}" "$bin/initdb" -D "$dir/pg/data" -U trailmark --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w \
    -o "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200" start >/dev/null \
    || { cat "$dir/pg/server.log" >&2; exit 1; }
  "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U trailmark trailmark
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid"
  for _ in $(seq 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "TM_SERVICES_DIR=$dir"
  echo "TM_POSTGRES_URL=postgres://trailmark@127.0.0.1:$pg_port/trailmark"
  echo "TM_REDIS_URL=redis://127.0.0.1:$redis_port"
  echo "export TM_SERVICES_DIR TM_POSTGRES_URL TM_REDIS_URL"
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

stop() {
  local dir="$1" bin as_pg=()
  bin="$(pg_bin)"
  [ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)
  [ -f "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
  [ -f "$dir/tansu.pid" ] && kill "$(cat "$dir/tansu.pid")" 2>/dev/null || true
  [ -d "$dir/pg/data" ] && "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/pg/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:?services dir}" ;;
  *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
