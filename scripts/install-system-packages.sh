#!/usr/bin/env bash
# Debian packages the tests and deployments use: redis-server (the shared key registry), nginx
# (the load balancer), npm (which installs Node 22 and node-seal for the SEAL 4.1 client
# tests from js/package-lock.json) and chromium (the headless browser that drives the web page
# in tests/test_web_page.py, through Playwright). Nothing is done when all are already installed.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

if have redis-server && have nginx && have npm && have chromium; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: redis-server, nginx, npm and chromium are needed; install them with your system's package manager" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "error: installing redis-server, nginx, npm and chromium needs root (apt-get); run as root or install them first" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# nginx-light: the core proxy modules only. The tests start their own redis-server and nginx
# on free loopback ports; the packages' system services are not used.
$SUDO apt-get install -y -qq --no-install-recommends redis-server nginx-light >/dev/null
have npm || $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
# Debian's own Chromium (/usr/bin/chromium): Playwright drives it as it is (no `playwright install`).
have chromium || $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
