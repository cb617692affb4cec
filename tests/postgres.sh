#!/usr/bin/env bash
# `make test` needs PostgreSQL for the ledger tests: the server at $SWITCHYARD_TEST_PG_URL
# (default postgresql://postgres@127.0.0.1:5432/postgres; a user that may CREATE DATABASE,
# each run makes a database of its own and drops it). When none answers, start a private
# one (initdb + pg_ctl, trust auth on loopback, data under $TMPDIR) if they are installed;
# otherwise say what is missing, and let the suite run: the ledger tests then fail with
# the same message.
set -u

url="${SWITCHYARD_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
python="${PYTHON:-.venv/bin/python}"

answers() {
  "$python" - "$url" <<'PY' 2>/dev/null
import asyncio, sys
import asyncpg

async def main() -> None:
    conn = await asyncpg.connect(sys.argv[1], timeout=2)
    await conn.close()

asyncio.run(main())
PY
}

answers && exit 0

read -r host port user < <("$python" -c 'import sys; from urllib.parse import urlsplit; u = urlsplit(sys.argv[1]); print(u.hostname or "127.0.0.1", u.port or 5432, u.username or "postgres")' "$url")
bindir=""
for candidate in "$(command -v pg_ctl 2>/dev/null | xargs -r dirname)" /usr/lib/postgresql/*/bin; do
  if [ -n "$candidate" ] && [ -x "$candidate/pg_ctl" ] && [ -x "$candidate/initdb" ]; then bindir="$candidate"; break; fi
done
if [ -z "$bindir" ] || { [ "$host" != 127.0.0.1 ] && [ "$host" != localhost ]; }; then
  echo "make test: no PostgreSQL answers at $url, and pg_ctl/initdb are not installed to start one" \
       "(apt-get install postgresql, or set SWITCHYARD_TEST_PG_URL): the ledger tests will fail" >&2
  exit 0
fi

data="${TMPDIR:-/tmp}/switchyard-test-pg-$port"
as=()
if [ "$(id -u)" = 0 ]; then  # initdb refuses to run as root
  if id postgres >/dev/null 2>&1; then as=(runuser -u postgres --); else
    echo "make test: running as root and no 'postgres' user to run a private PostgreSQL as: the ledger tests will fail" >&2
    exit 0
  fi
fi
mkdir -p "$data"
if [ ${#as[@]} -gt 0 ]; then chown postgres "$data"; fi
if [ ! -f "$data/PG_VERSION" ]; then
  "${as[@]}" "$bindir/initdb" -D "$data" -U "$user" --auth=trust >/dev/null || { echo "make test: initdb failed" >&2; exit 0; }
fi
if "${as[@]}" "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w \
     -o "-h 127.0.0.1 -p $port -k $data" start >/dev/null; then
  echo "started a private PostgreSQL on 127.0.0.1:$port (data in $data)"
else
  echo "make test: could not start PostgreSQL (see $data/server.log): the ledger tests will fail" >&2
fi
exit 0
