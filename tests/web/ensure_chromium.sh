#!/bin/sh
# The browser tests drive Debian's chromium (Playwright's own browser download is not used):
# install it with apt-get when it is missing and we may, else say in one line what to install.
set -e
for candidate in chromium chromium-browser; do
    if command -v "$candidate" >/dev/null 2>&1; then
        exit 0
    fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests (apt-get install chromium)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
    exit 0
fi
echo "the browser tests need Chromium: run 'sudo apt-get install chromium' (Debian/Ubuntu) and 'make test' again" >&2
exit 1
