#!/usr/bin/env bash
# ApplyCustomChanges.sh: make a fresh CentOS/RHEL 7+ or Debian/Ubuntu machine an mtagent
# master target. Run it once as root from an mtagent source tree (a checkout or a release
# tarball); running it again changes nothing that is already right, and says so.
#
# It installs the packages a master target needs (xfsprogs perl lsscsi rsync wget kexec-tools,
# python3, multipath tooling), writes /etc/multipath.conf blacklisting the root disk's WWID,
# creates the mtagent user and directories, a Python environment with mtagent in
# /opt/mtagent/venv, the man page mtagent(1) and the bash completion of `mtagent`, a commented
# /etc/mtagent/agent.toml (never overwriting one), certificates
# (if there are none), checks that the disks' SCSI UUIDs are visible, and installs and enables
# systemd/mtagent.service. Everything it does goes to the log file too.
#
# Usage: scripts/ApplyCustomChanges.sh [options]
#   --dry-run               print what would be done, change nothing
#   --hostname NAME         a name or address senders use for this machine, for the agent's
#                           certificate (repeatable; default: hostname -f and its addresses)
#   --wheelhouse DIR        install Python packages from DIR only (sites without PyPI access)
#   --root-disk-wwid WWID   the root disk's WWID for multipath.conf (default: looked up)
#   --root DIR              install below DIR instead of / (tests, staging): no package
#                           manager, no systemctl, users written to DIR/etc
#   --sysfs DIR             where to look for disks (default: /sys)
#   -h, --help
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOURCE_DIR="$(dirname "$SCRIPT_DIR")"
ROOT=""
SYSFS="/sys"
DRY_RUN=0
WHEELHOUSE=""
ROOT_WWID=""
HOSTNAMES=()

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

die() {
    say "error: $*"
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --hostname) HOSTNAMES+=("${2:?--hostname needs a value}"); shift ;;
        --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a directory}"; shift ;;
        --root-disk-wwid) ROOT_WWID="${2:?--root-disk-wwid needs a value}"; shift ;;
        --root) ROOT="$(cd "${2:?--root needs a directory}" && pwd)"; shift ;;
        --sysfs) SYSFS="${2:?--sysfs needs a directory}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "ApplyCustomChanges.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

CONF_DIR="$ROOT/etc/mtagent"
TLS_DIR="$CONF_DIR/tls"
CONFIG="$CONF_DIR/agent.toml"
STATE_DIR="$ROOT/var/lib/mtagent"
RETENTION_DIR="$STATE_DIR/retention"
VENV="$ROOT/opt/mtagent/venv"
UNIT="$ROOT/etc/systemd/system/mtagent.service"
MAN_PAGE="$ROOT/usr/local/share/man/man1/mtagent.1"
WANTS_LINK="$ROOT/etc/systemd/system/multi-user.target.wants/mtagent.service"
MULTIPATH_CONF="$ROOT/etc/multipath.conf"
LOG_DIR="$ROOT/var/log/mtagent"
LOG="$LOG_DIR/ApplyCustomChanges.log"
MARKER="$CONF_DIR/.ApplyCustomChanges.done"
SERVICE_USER="mtagent"
MULTIPATH_HEADER="# Written by mtagent's ApplyCustomChanges.sh."
CHANGES=0

# Everything said goes to the terminal and, once its directory exists, to the log.
say() {
    echo "$*"
    if [ "$DRY_RUN" -eq 0 ] && [ -d "$LOG_DIR" ]; then
        printf '%s %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*" >>"$LOG"
    fi
}

ok() { say "  ok      $*"; }

# change DESCRIPTION COMMAND...: count a change, and make it unless this is a dry run.
change() {
    local what="$1"
    shift
    CHANGES=$((CHANGES + 1))
    if [ "$DRY_RUN" -eq 1 ]; then
        say "  would   $what"
        return 0
    fi
    say "  change  $what"
    "$@"
}

live() { [ -z "$ROOT" ]; }

# -- the machine ---------------------------------------------------------------------------

check_root() {
    if [ "$(id -u)" -ne 0 ]; then
        die "run me as root (sudo $0)"
    fi
}

OS_FAMILY=""
OS_NAME=""
detect_os() {
    local release="$ROOT/etc/os-release" id="" id_like="" version_id="" pretty=""
    [ -r "$release" ] || release=/etc/os-release
    [ -r "$release" ] || die "cannot tell the OS: no $release"
    # shellcheck disable=SC1090 # os-release is a shell fragment by its specification
    id="$(. "$release" && echo "${ID:-}")"
    # shellcheck disable=SC1090
    id_like="$(. "$release" && echo "${ID_LIKE:-}")"
    # shellcheck disable=SC1090
    version_id="$(. "$release" && echo "${VERSION_ID:-}")"
    # shellcheck disable=SC1090
    pretty="$(. "$release" && echo "${PRETTY_NAME:-$id}")"
    OS_NAME="$pretty"
    case " $id $id_like " in
        *" rhel "* | *" centos "* | *" fedora "*)
            OS_FAMILY=rhel
            if [ "${version_id%%.*}" -lt 7 ] 2>/dev/null; then
                die "$pretty is too old: CentOS/RHEL 7 or later is needed"
            fi
            ;;
        *" debian "* | *" ubuntu "*) OS_FAMILY=debian ;;
        *) die "unsupported OS $pretty: CentOS/RHEL 7+ or Debian/Ubuntu is needed" ;;
    esac
    ok "OS: $pretty ($OS_FAMILY family)"
}

# -- packages ------------------------------------------------------------------------------

PACKAGES=()
choose_packages() {
    # The master target's tools, as the original script installed them, plus Python and
    # multipath (device-mapper-multipath on RHEL, multipath-tools on Debian).
    PACKAGES=(xfsprogs perl lsscsi rsync wget kexec-tools python3)
    if [ "$OS_FAMILY" = rhel ]; then
        PACKAGES+=(device-mapper-multipath sg3_utils)
    else
        PACKAGES+=(multipath-tools sg3-utils python3-venv)
    fi
}

package_installed() {
    if [ "$OS_FAMILY" = rhel ]; then
        rpm -q "$1" >/dev/null 2>&1
    else
        dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
    fi
}

install_packages() {
    if [ "$OS_FAMILY" = rhel ]; then
        local yum=yum
        command -v dnf >/dev/null 2>&1 && yum=dnf
        "$yum" install -y "$@"
    else
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    fi
}

ensure_packages() {
    choose_packages
    if ! live; then
        ok "packages: left to the image below $ROOT (${PACKAGES[*]})"
        return
    fi
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        package_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        ok "packages installed: ${PACKAGES[*]}"
    else
        change "install packages: ${missing[*]}" install_packages "${missing[@]}"
    fi
}

PYTHON=""
find_python() {
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PYTHON="$(command -v "$candidate")"
            ok "Python: $PYTHON ($("$PYTHON" -V 2>&1))"
            return
        fi
    done
    if [ "$DRY_RUN" -eq 1 ]; then
        say "  would   need Python 3.11 or later with venv (none found yet)"
        PYTHON=python3
        return
    fi
    die "mtagent needs Python 3.11 or later with venv, and $OS_NAME has none: install one" \
        "(RHEL/Rocky 8 and 9: dnf install python3.11; Ubuntu 22.04: apt install python3.11-venv;" \
        "CentOS 7 has no such package: build one, or use a newer master target OS), then run me again"
}

# -- multipath -----------------------------------------------------------------------------

find_root_wwid() {
    [ -n "$ROOT_WWID" ] && return
    local source disk scsi_id
    source="$(findmnt -no SOURCE / 2>/dev/null || true)"
    disk="$(lsblk -ndo PKNAME "$source" 2>/dev/null || true)"
    [ -n "$disk" ] || disk="$(basename "$source")"
    [ -b "/dev/$disk" ] || return 0
    for scsi_id in /usr/lib/udev/scsi_id /lib/udev/scsi_id; do
        if [ -x "$scsi_id" ]; then
            ROOT_WWID="$("$scsi_id" --whitelisted --replace-whitespace --device="/dev/$disk" 2>/dev/null || true)"
            [ -n "$ROOT_WWID" ] && return
        fi
    done
    if [ -r "/sys/block/$disk/device/wwid" ]; then
        ROOT_WWID="$(tr -d ' \n' <"/sys/block/$disk/device/wwid")"
    fi
}

multipath_conf() {
    cat <<EOF
$MULTIPATH_HEADER
# The root disk is blacklisted so that multipathd never takes it; every other disk may be
# mapped (find_multipaths: only disks seen over more than one path get a map).
defaults {
    user_friendly_names no
    find_multipaths yes
}
blacklist {
    wwid "$ROOT_WWID"
}
EOF
}

write_file() { # write_file PATH MODE: stdin to PATH, atomically
    local tmp
    tmp="$(mktemp "$1.XXXXXX")"
    cat >"$tmp"
    chmod "$2" "$tmp"
    mv -f "$tmp" "$1"
}

write_multipath_conf() {
    mkdir -p "$(dirname "$MULTIPATH_CONF")"
    multipath_conf | write_file "$MULTIPATH_CONF" 0644
}

ensure_multipath() {
    find_root_wwid
    if [ -z "$ROOT_WWID" ]; then
        say "  warning the root disk has no SCSI WWID that scsi_id can read (not a SCSI disk?):"
        say "          $MULTIPATH_CONF is left alone; blacklist the root disk there yourself"
        return
    fi
    if [ -e "$MULTIPATH_CONF" ] && ! grep -qxF "$MULTIPATH_HEADER" "$MULTIPATH_CONF"; then
        if grep -q "$ROOT_WWID" "$MULTIPATH_CONF"; then
            ok "$MULTIPATH_CONF (not ours) blacklists the root disk $ROOT_WWID"
        else
            say "  warning $MULTIPATH_CONF was not written by me and does not name the root disk"
            say "          $ROOT_WWID: add it to its blacklist section (wwid \"$ROOT_WWID\")"
        fi
        return
    fi
    if [ -e "$MULTIPATH_CONF" ] && [ "$(multipath_conf)" = "$(cat "$MULTIPATH_CONF")" ]; then
        ok "$MULTIPATH_CONF blacklists the root disk $ROOT_WWID"
    else
        change "write $MULTIPATH_CONF blacklisting the root disk $ROOT_WWID" write_multipath_conf
        if live && [ "$DRY_RUN" -eq 0 ]; then
            systemctl enable multipathd.service >/dev/null 2>&1 || true
            systemctl restart multipathd.service || say "  warning multipathd did not restart"
        fi
    fi
}

# -- user and directories ------------------------------------------------------------------

user_exists() {
    if live; then getent passwd "$SERVICE_USER" >/dev/null; else grep -q "^$SERVICE_USER:" "$ROOT/etc/passwd"; fi
}

in_disk_group() {
    if live; then
        id -nG "$SERVICE_USER" 2>/dev/null | tr ' ' '\n' | grep -qx disk
    else
        grep -Eq "^disk:[^:]*:[^:]*:(.*,)?$SERVICE_USER(,|$)" "$ROOT/etc/group"
    fi
}

prefix_args() { if ! live; then printf '%s\n' --prefix "$ROOT"; fi; }

ensure_user() {
    local prefix=()
    mapfile -t prefix < <(prefix_args)
    if user_exists; then
        ok "user $SERVICE_USER exists"
    else
        change "create the system user $SERVICE_USER (group $SERVICE_USER, member of disk)" \
            useradd "${prefix[@]}" --system --user-group --home-dir /var/lib/mtagent \
            --no-create-home --shell /usr/sbin/nologin --groups disk "$SERVICE_USER"
    fi
    if [ "$DRY_RUN" -eq 1 ] && ! user_exists; then
        return
    fi
    if in_disk_group; then
        ok "user $SERVICE_USER is in the disk group (raw access to the target disks)"
    else
        change "add $SERVICE_USER to the disk group" usermod "${prefix[@]}" -a -G disk "$SERVICE_USER"
    fi
}

# Numeric ids, read from the (possibly non-live) root's own files.
id_of() { # id_of passwd|group NAME
    local entry
    if live; then
        entry="$(getent "$1" "$2" || true)"
    else
        entry="$(grep "^$2:" "$ROOT/etc/$1" || true)"
    fi
    echo "$entry" | cut -d: -f3
}

make_dir() { # make_dir PATH UID:GID MODE
    mkdir -p "$1"
    chown "$2" "$1"
    chmod "$3" "$1"
}

ensure_dir() { # ensure_dir PATH OWNER GROUP MODE
    local path="$1" uid gid want have
    uid="$(id_of passwd "$2")"
    gid="$(id_of group "$3")"
    if [ -z "$uid" ] || [ -z "$gid" ]; then
        change "create $path ($2:$3, mode $4)" true
        return
    fi
    want="$uid:$gid $4"
    have="$(stat -c '%u:%g %a' "$path" 2>/dev/null || true)"
    if [ "$have" = "$want" ]; then
        ok "$path ($2:$3, mode $4)"
    else
        change "create $path ($2:$3, mode $4)" make_dir "$path" "$uid:$gid" "$4"
    fi
}

ensure_dirs() {
    ensure_dir "$CONF_DIR" root "$SERVICE_USER" 750
    ensure_dir "$TLS_DIR" root "$SERVICE_USER" 750
    ensure_dir "$STATE_DIR" "$SERVICE_USER" "$SERVICE_USER" 750
    ensure_dir "$RETENTION_DIR" "$SERVICE_USER" "$SERVICE_USER" 750
}

make_link() { # make_link TARGET LINK
    mkdir -p "$(dirname "$2")"
    ln -sfn "$1" "$2"
}

# -- the Python environment ----------------------------------------------------------------

source_digest() {
    (cd "$SOURCE_DIR" && find pyproject.toml agent blockio protocol -type f -name '*.py' -o -name pyproject.toml |
        LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
}

install_package() {
    # From a copy of the source: pip builds in the tree it is given, and the source tree
    # may be read-only or shared.
    local build pip_args=(--quiet --disable-pip-version-check)
    build="$(mktemp -d)"
    cp -r "$SOURCE_DIR/pyproject.toml" "$SOURCE_DIR/README.md" "$SOURCE_DIR/LICENSE" \
        "$SOURCE_DIR/agent" "$SOURCE_DIR/blockio" "$SOURCE_DIR/protocol" "$build/"
    find "$build" -name __pycache__ -prune -exec rm -rf {} +
    if [ -n "$WHEELHOUSE" ]; then
        pip_args+=(--no-index --find-links "$WHEELHOUSE")
    fi
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install "${pip_args[@]}" "$build"
    rm -rf "$build"
    source_digest >"$VENV/.mtagent-source"
}

ensure_venv() {
    local digest
    digest="$(source_digest)"
    if [ -x "$VENV/bin/mtagent" ] && [ "$(cat "$VENV/.mtagent-source" 2>/dev/null)" = "$digest" ]; then
        ok "$VENV has mtagent from $SOURCE_DIR"
    else
        change "install mtagent from $SOURCE_DIR into $VENV" install_package
    fi
    local link="$ROOT/usr/local/bin/mtagent"
    if [ "$(readlink "$link" 2>/dev/null)" = /opt/mtagent/venv/bin/mtagent ]; then
        ok "$link -> /opt/mtagent/venv/bin/mtagent"
    else
        change "link $link -> /opt/mtagent/venv/bin/mtagent" \
            make_link /opt/mtagent/venv/bin/mtagent "$link"
    fi
}

# -- configuration and certificates --------------------------------------------------------

config_skeleton() {
    cat <<'EOF'
# mtagent configuration (written by ApplyCustomChanges.sh; yours to edit, it is never
# overwritten). Every key is explained in the README's configuration reference. After a change:
#   systemctl restart mtagent

[server]
listen = "0.0.0.0:9443"              # the TLS data port the process servers send to
metrics_listen = "127.0.0.1:9444"    # plain HTTP /metrics and /healthz: an address Prometheus reaches
state_dir = "/var/lib/mtagent"       # must stay writable by the service (StateDirectory=)
# max_frame_bytes = "4MiB"
# max_batch_bytes = "256MiB"
# stall_timeout = "60s"

[tls]
cert = "/etc/mtagent/tls/server.crt"
key = "/etc/mtagent/tls/server.key"
client_ca = "/etc/mtagent/tls/ca.crt"   # senders need a client certificate from this CA:
                                        # mtagent certs issue --dir /etc/mtagent/tls --name ps01
# crl = "/etc/mtagent/tls/crl.pem"      # after `mtagent certs revoke --dir /etc/mtagent/tls
                                        # --name N`: refuse the certificates it lists (restart)

[retention]
path = "/var/lib/mtagent/retention"  # mount the retention drive here (the unit may write it)
require_mount = true                 # refuse to start while the drive is not mounted there
window = "24h"
max_bytes = "500GiB"
on_full = "shrink"                   # or "pause"

# Who may send what: one [[senders]] per client certificate (the name `mtagent certs issue
# --name` gave it). A sender reaches only the disks of its groups; role "admin" adds failover
# and the other administrative calls. Without any [[senders]] every certificate of the CA may
# do everything (the agent warns at start and mtagent_authorization_open is 1).
[[senders]]
name = "process-server"
groups = []                          # the groups of the [[disks]] it replicates: ["vm1", "vm2"]
role = "replicate"

# One [[disks]] per protected disk. Find SCSI UUIDs with `lsscsi --scsi_id` or
# `ls -l /dev/disk/by-id/`; `mtagent disks` shows what the agent resolved.
# [[disks]]
# id = "vm1-disk0"
# group = "vm1"
# scsi_uuid = "36000c29a1b2c3d4e5f60718293a4b5c6"
EOF
}

ensure_config() {
    if [ -e "$CONFIG" ]; then
        ok "$CONFIG exists (left as it is)"
        return
    fi
    change "write the configuration skeleton $CONFIG" write_config
}

write_config() {
    config_skeleton | write_file "$CONFIG" 0640
    chown "0:$(id_of group "$SERVICE_USER")" "$CONFIG"
}

default_hostnames() {
    hostname -f 2>/dev/null || hostname
    hostname -I 2>/dev/null | tr ' ' '\n' | grep -v '^$' || true
}

make_certificates() {
    local args=() name uid gid
    for name in "${HOSTNAMES[@]}"; do
        args+=(--hostname "$name")
    done
    "$VENV/bin/mtagent" certs init --dir "$TLS_DIR" "${args[@]}"
    "$VENV/bin/mtagent" certs issue --dir "$TLS_DIR" --name process-server
    # The service owns its key, which no one else may read (the agent refuses a key its group
    # or others can read); the CA key and the client key stay root's.
    uid="$(id_of passwd "$SERVICE_USER")"
    gid="$(id_of group "$SERVICE_USER")"
    chown "0:$gid" "$TLS_DIR/server.crt" "$TLS_DIR/ca.crt"
    chown "$uid:$gid" "$TLS_DIR/server.key"
    chmod 0600 "$TLS_DIR/server.key"
}

ensure_certificates() {
    if [ -e "$TLS_DIR/server.crt" ] || [ -e "$TLS_DIR/server.key" ]; then
        ok "certificates in $TLS_DIR (left as they are)"
        return
    fi
    if [ "${#HOSTNAMES[@]}" -eq 0 ]; then
        mapfile -t HOSTNAMES < <(default_hostnames)
    fi
    change "create in $TLS_DIR a CA, the agent's certificate for ${HOSTNAMES[*]} and a client certificate (process-server.crt)" \
        make_certificates
}

# -- disks ---------------------------------------------------------------------------------

check_scsi_uuids() {
    local dev name wwid visible=0 hidden=()
    for dev in "$SYSFS"/block/sd*; do
        [ -e "$dev" ] || continue
        name="$(basename "$dev")"
        wwid=""
        if [ -r "$dev/device/wwid" ]; then
            wwid="$(tr -d ' \n' <"$dev/device/wwid")"
        fi
        if [ -n "$wwid" ]; then
            visible=$((visible + 1))
        else
            hidden+=("$name")
        fi
    done
    if [ "${#hidden[@]}" -eq 0 ] && [ "$visible" -gt 0 ]; then
        ok "SCSI UUIDs visible for all $visible SCSI disks"
        return
    fi
    if [ "${#hidden[@]}" -eq 0 ]; then
        say "  note    no SCSI disks are attached yet: the target disks are found by SCSI UUID"
    else
        say "  warning no SCSI UUID for ${hidden[*]}: mtagent finds target disks by SCSI UUID"
    fi
    say "          On VMware, a VM shows its disks' UUIDs only with disk.EnableUUID = TRUE:"
    say "          power the master target off, then VM Options > Advanced > Edit Configuration"
    say "          > Add parameter: disk.EnableUUID = TRUE (or in the .vmx file), and power it on."
    say "          Check with: ls -l /dev/disk/by-id/ | grep scsi-3"
}

# -- the man page and the bash completion ----------------------------------------------------

install_copy() { # install_copy SOURCE DEST: DEST becomes a copy of SOURCE, mode 0644
    mkdir -p "$(dirname "$2")"
    write_file "$2" 0644 <"$1"
}

ensure_copy() { # ensure_copy SOURCE DEST
    if cmp -s "$1" "$2"; then
        ok "$2 is current"
    else
        change "install $2" install_copy "$1" "$2"
    fi
}

completion_path() {
    # bash-completion's own directory where it is installed (loaded on demand); else the old
    # directory, which bash-completion of every version and distribution reads.
    if [ -d "$ROOT/usr/share/bash-completion/completions" ]; then
        echo "$ROOT/usr/share/bash-completion/completions/mtagent"
    else
        echo "$ROOT/etc/bash_completion.d/mtagent"
    fi
}

ensure_cli_reference() {
    # Generated from the argparse definitions by scripts/cli_reference.py, committed.
    ensure_copy "$SOURCE_DIR/docs/mtagent.1" "$MAN_PAGE"
    ensure_copy "$SOURCE_DIR/docs/mtagent.bash-completion" "$(completion_path)"
}

# -- the unit ------------------------------------------------------------------------------

ensure_unit() {
    local source="$SOURCE_DIR/systemd/mtagent.service"
    if cmp -s "$source" "$UNIT"; then
        ok "$UNIT is current"
    else
        change "install $UNIT" install_copy "$source" "$UNIT"
        if live && [ "$DRY_RUN" -eq 0 ]; then
            systemctl daemon-reload
        fi
    fi
    if live; then
        if systemctl is-enabled --quiet mtagent.service 2>/dev/null; then
            ok "mtagent.service is enabled"
        else
            change "enable mtagent.service" systemctl enable --quiet mtagent.service
        fi
    elif [ "$(readlink "$WANTS_LINK" 2>/dev/null)" = /etc/systemd/system/mtagent.service ]; then
        ok "mtagent.service is enabled (multi-user.target wants it)"
    else
        # What `systemctl enable` does for WantedBy=multi-user.target, without a running systemd.
        change "enable mtagent.service" make_link /etc/systemd/system/mtagent.service "$WANTS_LINK"
    fi
}

# -- main ----------------------------------------------------------------------------------

main() {
    check_root
    local mode="applying"
    [ "$DRY_RUN" -eq 1 ] && mode="dry run (nothing is changed)"
    [ -n "$ROOT" ] && mode="$mode, below $ROOT"
    ensure_dir "$LOG_DIR" root root 750
    say "ApplyCustomChanges.sh: $mode"
    detect_os
    ensure_packages
    find_python
    ensure_multipath
    ensure_user
    ensure_dirs
    ensure_venv
    ensure_cli_reference
    ensure_config
    ensure_certificates
    check_scsi_uuids
    ensure_unit
    if [ "$DRY_RUN" -eq 1 ]; then
        say "dry run: $CHANGES changes would be made"
    elif [ "$CHANGES" -eq 0 ]; then
        say "nothing to change: this master target is already set up (log: $LOG)"
    else
        printf 'applied %s by ApplyCustomChanges.sh from %s\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" \
            "$SOURCE_DIR" | write_file "$MARKER" 0644
        say "done: $CHANGES changes (marker: $MARKER, log: $LOG)"
        say "next: add [[disks]] to $CONFIG, then: systemctl start mtagent; mtagent disks"
    fi
}

main
