#!/usr/bin/env bash
# What `make test` needs beyond Python packages: a Redis server to start when none
# answers, Prometheus + promtool (the dashboard tests run a real Prometheus), and
# Chromium at /usr/bin/chromium (Playwright drives it through /dashboard: tests/test_live.py).
# Installs them from Debian's packages when it can (root, or passwordless sudo, and
# apt-get); otherwise says exactly what is missing and how to get it, and lets the
# suite run (the tests that need a missing tool then fail with the same message).
set -u

missing=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  as_root=none
fi

if [ "${as_root[*]}" = none ] || ! command -v apt-get >/dev/null; then
  echo "make test: ${missing[*]} not installed, and this user cannot install packages here" \
       "(needs root or passwordless sudo, and apt-get)." >&2
  echo "  install them yourself, e.g.: sudo apt-get install ${missing[*]}" >&2
  echo "  the tests that need them will fail until then; the rest of the suite runs." >&2
  exit 0
fi

echo "make test: installing ${missing[*]} from Debian's packages (tests need them)"
install() {
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
if ! install; then
  echo "make test: refreshing the package lists first" >&2
  "${as_root[@]}" apt-get update -q >/dev/null && install \
    || echo "make test: could not install ${missing[*]}; the tests that need them will fail" >&2
fi
exit 0
