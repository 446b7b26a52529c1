#!/bin/sh
# Make a headless browser available for tests/test_report.py, which opens `prunus report`'s
# page in Chromium and checks every section rendered. Installs the Debian package chromium
# when no browser is found and apt is usable; without it that test is skipped, nothing fails.
set -e
for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then
        exit 0
    fi
done
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    echo "Chromium not found: installing the Debian package chromium (for the report page test)"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null && exit 0
fi
echo "note: Chromium is missing and apt is not usable; tests/test_report.py's browser test will be skipped (install it with 'apt install chromium')" >&2
exit 0
