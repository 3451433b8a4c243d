#!/usr/bin/env bash
# Install the browser the browser tests (tests/browser/) drive: Debian's own Chromium at
# /usr/bin/chromium, with apt, when it is missing and we are root. Idempotent: does nothing
# when Chromium is already there. Playwright never downloads a browser of its own: the tests
# launch /usr/bin/chromium through Playwright's driver, which ships with the Python package.
# Uses only the machine's Debian apt repositories.
set -euo pipefail
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

CHROMIUM="${NOROSHI_CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "${CHROMIUM}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # chromium pulls in its libraries; fonts so that pages (and screenshots) render text
        apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
    else
        echo "browser: ${CHROMIUM} is missing; install Debian's chromium package (needs root)" >&2
        echo "browser: the browser tests skip without it (and fail under CI=true)" >&2
        exit 0
    fi
fi
echo "browser: $("${CHROMIUM}" --version 2>/dev/null || echo chromium) at ${CHROMIUM}"
