# shellcheck shell=bash
# Shared by scripts/test: Debian's Chromium for the status page's browser test
# (tests/e2e/test_status_page.py, skipped where no browser is installed).
#
#   source scripts/_browser.sh
#   browser_ensure      # installs it when root and apt-get are there; quietly does nothing else
#
# Measured on this project's CI machine: about 20 s (download and unpack); the test itself
# takes about 25 s.  LOGBOOK_NO_BROWSER=1 skips the install.

browser_ensure() {
    if [ -n "${LOGBOOK_NO_BROWSER:-}" ] || command -v chromium >/dev/null 2>&1 \
        || command -v chromium-browser >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        return 0
    fi
    echo "scripts: installing Debian's chromium for the status page test (LOGBOOK_NO_BROWSER=1 skips it)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
        || echo "scripts: could not install chromium; the browser test will be skipped" >&2
}
