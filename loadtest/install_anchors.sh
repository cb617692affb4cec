#!/usr/bin/env bash
# Installs the gateways Switchyard is compared with, under $ANCHORS_DIR (default /tmp/anchors):
#   litellm-venv/   LiteLLM proxy from PyPI (`litellm[proxy]`)
#   portkey/        Portkey's gateway 1.15.2 from npm; hono and @hono/node-server are held at
#                   the versions of Portkey's own lockfile, since the newest node-server makes
#                   every streaming answer a 500 ("TypeError: immutable")
# and wrk from Debian. Nothing here is committed or vendored; it only fetches from registries.
set -euo pipefail
A=${ANCHORS_DIR:-/tmp/anchors}
mkdir -p "$A"

command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }

if [ ! -x "$A/litellm-venv/bin/litellm" ]; then
  python3 -m venv "$A/litellm-venv"
  "$A/litellm-venv/bin/pip" install --quiet 'litellm[proxy]'
fi

if [ ! -f "$A/portkey/node_modules/@portkey-ai/gateway/build/start-server.js" ]; then
  mkdir -p "$A/portkey"
  printf '%s\n' '{"name": "portkey-for-comparison", "private": true,' \
    ' "dependencies": {"@portkey-ai/gateway": "1.15.2"},' \
    ' "overrides": {"@hono/node-server": "1.13.5", "hono": "4.9.7"}}' > "$A/portkey/package.json"
  (cd "$A/portkey" && npm install --no-audit --no-fund --silent)
fi

echo "litellm $("$A/litellm-venv/bin/pip" show litellm | sed -n 's/^Version: //p'), portkey $(node -p "require('$A/portkey/node_modules/@portkey-ai/gateway/package.json').version")"
