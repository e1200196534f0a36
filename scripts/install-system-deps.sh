#!/bin/sh
# Install the Debian packages gsx's tests need beyond Python: Chromium, which
# renders the feature dashboards headless, and a font for its screenshots.
#
# Idempotent: exits 0 without changes when everything is present. It installs
# with apt-get only as root on a system that has apt-get. Otherwise it prints
# what is missing and exits 0, and the dashboard browser tests skip with that reason.
set -eu

PACKAGES="chromium fonts-dejavu-core"

browser=""
for candidate in chromium chromium-browser google-chrome; do
    if command -v "$candidate" >/dev/null 2>&1; then
        browser=$(command -v "$candidate")
        break
    fi
done

missing=""
for package in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done
if [ -n "$browser" ]; then
    # Another Chromium build (chromium-browser, google-chrome) is as good as Debian's.
    missing=$(echo "$missing" | sed 's/\bchromium\b//')
fi
missing=$(echo "$missing" | xargs)

if [ -z "$missing" ]; then
    echo "install-system-deps: nothing to install (browser: ${browser:-none needed})"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: missing Debian packages: $missing; not root, so not installing them." >&2
    echo "install-system-deps: run 'sudo apt-get install $missing' to enable the dashboard browser test." >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: missing packages: $missing; apt-get not found, install them with the system's package manager." >&2
    exit 0
fi

echo "install-system-deps: installing $missing with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086  # $missing is a space-separated package list.
apt-get install -y -qq --no-install-recommends $missing
echo "install-system-deps: installed $missing"
