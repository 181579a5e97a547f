#!/usr/bin/env bash
# The test command: installs everything the suite needs (Debian and Python
# packages), then runs pytest, which also runs ruff and shellcheck.
# Extra arguments go to pytest: scripts/test.sh -k crash -x
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(util-linux mount e2fsprogs shellcheck umockdev gir1.2-umockdev-1.0 python3-gi prometheus systemd python3-venv fuse3)

install_debian_packages() {
    local missing=() pkg
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "test.sh: missing Debian packages (${missing[*]}); run as root to install them" >&2
        return 1
    fi
    echo "test.sh: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

if command -v apt-get >/dev/null 2>&1; then
    install_debian_packages
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

exec .venv/bin/python -m pytest "$@"
