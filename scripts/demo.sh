#!/usr/bin/env bash
# The main job, end to end, on loopback: certificates, an agent with a file-backed
# target, a full push of a disk image with realistic content over mutual TLS, a
# change to part of the source, a delta push of only what changed, and a check
# that target and source are the same, byte for byte (XXH3-128 of both). Then a point-in-time
# export, a failback resync, and two more machines replicating at once, one of which fails over
# to its latest app-consistent point while the other keeps replicating.
#
#   scripts/demo.sh                 # a 384 MiB disk
#   DEMO_SIZE=1GiB scripts/demo.sh  # a bigger one
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
SIZE=${DEMO_SIZE:-384MiB}
MACHINE_SIZE=${DEMO_MACHINE_SIZE:-128MiB}

step() { printf '\n== %s\n' "$*"; }

step "Setting up .venv"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
PY="$REPO/.venv/bin/python"
MTAGENT="$REPO/.venv/bin/mtagent"

WORK=$(mktemp -d -t mtagent-demo.XXXXXX)
AGENT_PID=""
cleanup() {
    if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
        kill -TERM "$AGENT_PID"
        wait "$AGENT_PID" || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
digest() { "$PY" - "$1" <<'PYEOF'
import sys, xxhash
h = xxhash.xxh3_128()
with open(sys.argv[1], "rb") as f:
    while chunk := f.read(8 << 20):
        h.update(chunk)
print(h.hexdigest())
PYEOF
}

step "Certificates: a CA, the agent's server certificate, a client certificate for the process server"
"$MTAGENT" certs init --dir "$WORK/pki" --hostname 127.0.0.1 --hostname localhost
"$MTAGENT" certs issue --dir "$WORK/pki" --name process-server

step "A source disk image of $SIZE with realistic content (zeros, text, incompressible data)"
"$PY" scripts/sample_image.py make "$WORK/source.img" --size "$SIZE" --seed 1
BYTES=$(stat -c %s "$WORK/source.img")
ls -l "$WORK/source.img"

PORT=$(free_port)
METRICS_PORT=$(free_port)
cat > "$WORK/agent.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
metrics_listen = "127.0.0.1:$METRICS_PORT"
state_dir = "$WORK/state"

[tls]
cert = "$WORK/pki/server.crt"
key = "$WORK/pki/server.key"
client_ca = "$WORK/pki/ca.crt"

[retention]
path = "$WORK/retention"

[[disks]]
id = "vm1-disk0"
group = "vm1"
path = "$WORK/target.img"
source_size = $BYTES
TOML
"$MTAGENT" targets create --config "$WORK/agent.toml"

start_agent() {
    "$MTAGENT" serve --config "$WORK/agent.toml" 2>> "$WORK/agent.log" &
    AGENT_PID=$!
    "$PY" - "$METRICS_PORT" <<'PYEOF'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/healthz"
for _ in range(300):
    try:
        with urllib.request.urlopen(url, timeout=1):
            sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("the agent did not become ready")
PYEOF
}
stop_agent() {
    kill -TERM "$AGENT_PID"
    wait "$AGENT_PID"
    AGENT_PID=""
}

step "Starting the agent on https://127.0.0.1:$PORT (metrics on http://127.0.0.1:$METRICS_PORT)"
start_agent
"$MTAGENT" disks --config "$WORK/agent.toml"

PUSH=("$MTAGENT" push --server "https://127.0.0.1:$PORT" --cert "$WORK/pki/process-server.crt"
      --key "$WORK/pki/process-server.key" --ca "$WORK/pki/ca.crt" --disk vm1-disk0)

step "Full push: the initial replication of the whole disk"
"${PUSH[@]}" --mode full --source "$WORK/source.img"

step "Changing 5% of the source disk"
cp "$WORK/source.img" "$WORK/base.img"
"$PY" scripts/sample_image.py mutate "$WORK/source.img" --fraction 0.05 --seed 2

step "Delta push: only the blocks that differ from the previous image"
"${PUSH[@]}" --mode delta --base "$WORK/base.img" --source "$WORK/source.img" \
    --tag after-change --tag-kind crash --tag-group vm1 --tag-id demo-1

step "Verifying: XXH3-128 of source and target"
SOURCE_DIGEST=$(digest "$WORK/source.img")
TARGET_DIGEST=$(digest "$WORK/target.img")
echo "source  $SOURCE_DIGEST"
echo "target  $TARGET_DIGEST"
"$MTAGENT" status --config "$WORK/agent.toml"

step "Point-in-time recovery: the disk as it was before the change, exported while the agent runs"
"$MTAGENT" points --config "$WORK/agent.toml" --group vm1
"$MTAGENT" recover --config "$WORK/agent.toml" --group vm1 --point vm1-disk0@6 \
    --output "$WORK/restored"
BASE_DIGEST=$(digest "$WORK/base.img")
RESTORED_DIGEST=$(digest "$WORK/restored/vm1-disk0.img")
echo "before the change  $BASE_DIGEST"
echo "restored           $RESTORED_DIGEST"

step "Failback: the machine ran on in the cloud (1% more changed); resync compares by digest, sends what differs"
"$PY" scripts/sample_image.py mutate "$WORK/source.img" --fraction 0.01 --seed 3
"${PUSH[@]}" --mode resync --source "$WORK/source.img"

step "Online verify: source and target compared by digest, nothing written (exit 0: identical)"
"${PUSH[@]}" --mode verify --source "$WORK/source.img"
FAILBACK_SOURCE_DIGEST=$(digest "$WORK/source.img")
FAILBACK_TARGET_DIGEST=$(digest "$WORK/target.img")
echo "source  $FAILBACK_SOURCE_DIGEST"
echo "target  $FAILBACK_TARGET_DIGEST"

step "Two machines replicating at once: vm2 and vm3 ($MACHINE_SIZE each) join the agent"
for vm in vm2 vm3; do
    "$PY" scripts/sample_image.py make "$WORK/$vm.img" --size "$MACHINE_SIZE" --seed "${vm#vm}"
    printf '\n[[disks]]\nid = "%s-disk0"\ngroup = "%s"\npath = "%s"\nsource_size = %s\n' \
        "$vm" "$vm" "$WORK/$vm-target.img" "$(stat -c %s "$WORK/$vm.img")" >> "$WORK/agent.toml"
done
"$MTAGENT" targets create --config "$WORK/agent.toml"
stop_agent
start_agent
push_vm() { "$MTAGENT" push --server "https://127.0.0.1:$PORT" --cert "$WORK/pki/process-server.crt" \
    --key "$WORK/pki/process-server.key" --ca "$WORK/pki/ca.crt" --disk "$1-disk0" "${@:2}"; }
for vm in vm2 vm3; do
    push_vm "$vm" --mode full --source "$WORK/$vm.img"
done

step "vm2: an application-consistent snapshot (tag nightly), then more changes after it"
cp "$WORK/vm2.img" "$WORK/vm2-base.img"
"$PY" scripts/sample_image.py mutate "$WORK/vm2.img" --fraction 0.05 --seed 21
push_vm vm2 --mode delta --base "$WORK/vm2-base.img" --source "$WORK/vm2.img" \
    --tag nightly --tag-kind app --tag-group vm2 --tag-id vm2-nightly
cp "$WORK/vm2.img" "$WORK/vm2-at-nightly.img"
"$PY" scripts/sample_image.py mutate "$WORK/vm2.img" --fraction 0.05 --seed 22
push_vm vm2 --mode delta --base "$WORK/vm2-at-nightly.img" --source "$WORK/vm2.img"
"$MTAGENT" points --config "$WORK/agent.toml" --group vm2

step "vm2 fails over to its latest app-consistent point while vm3 keeps replicating"
"$MTAGENT" certs issue --dir "$WORK/pki" --name operator
# vm3's next states are made first, so that its pushes follow each other closely.
for round in 1 2 3 4 5 6 7 8; do
    cp "$WORK/vm3.img" "$WORK/vm3-$((round - 1)).img"
    "$PY" scripts/sample_image.py mutate "$WORK/vm3.img" --fraction 0.02 --seed "3$round" > /dev/null 2>&1
done
cp "$WORK/vm3.img" "$WORK/vm3-8.img"
(
    for round in 1 2 3 4 5 6 7 8; do
        push_vm vm3 --mode delta --base "$WORK/vm3-$((round - 1)).img" --source "$WORK/vm3-$round.img" \
            | while read -r line; do echo "$(date +%T.%N | cut -c1-12) acknowledged: $line"; done
    done
) > "$WORK/vm3-pushes.log" 2>&1 &
VM3_PID=$!
until [ -s "$WORK/vm3-pushes.log" ]; do sleep 0.1; done  # vm3 is replicating
echo "$(date +%T.%N | cut -c1-12) failover of vm2 asked"
"$MTAGENT" failover --config "$WORK/agent.toml" --group vm2 --point latest-app \
    --cert "$WORK/pki/operator.crt" --key "$WORK/pki/operator.key"
echo "$(date +%T.%N | cut -c1-12) failover of vm2 done: vm2-disk0 released"
VM3_STATUS=0
wait "$VM3_PID" || VM3_STATUS=$?
echo "vm3's batches, acknowledged throughout:"
cat "$WORK/vm3-pushes.log"
"$MTAGENT" status --config "$WORK/agent.toml" || true

step "Verifying: XXH3-128 of vm2's disk against its source at the nightly snapshot, and of vm3's"
NIGHTLY_DIGEST=$(digest "$WORK/vm2-at-nightly.img")
VM2_DIGEST=$(digest "$WORK/vm2-target.img")
VM3_SOURCE_DIGEST=$(digest "$WORK/vm3.img")
VM3_TARGET_DIGEST=$(digest "$WORK/vm3-target.img")
echo "vm2 source at nightly  $NIGHTLY_DIGEST"
echo "vm2 failed over        $VM2_DIGEST"
echo "vm3 source             $VM3_SOURCE_DIGEST"
echo "vm3 target             $VM3_TARGET_DIGEST"

step "Stopping the agent"
stop_agent

if [ "$SOURCE_DIGEST" != "$TARGET_DIGEST" ]; then
    echo "demo: FAILED: the target differs from the source" >&2
    tail -n 20 "$WORK/agent.log" >&2
    exit 1
fi
if [ "$BASE_DIGEST" != "$RESTORED_DIGEST" ]; then
    echo "demo: FAILED: the restored point differs from the image it was taken of" >&2
    exit 1
fi
if [ "$FAILBACK_SOURCE_DIGEST" != "$FAILBACK_TARGET_DIGEST" ]; then
    echo "demo: FAILED: after the resync the target differs from the source" >&2
    exit 1
fi
if [ "$NIGHTLY_DIGEST" != "$VM2_DIGEST" ]; then
    echo "demo: FAILED: vm2's failed-over disk differs from its source at the app-consistent point" >&2
    tail -n 20 "$WORK/agent.log" >&2
    exit 1
fi
if [ "$VM3_STATUS" != 0 ] || [ "$VM3_SOURCE_DIGEST" != "$VM3_TARGET_DIGEST" ]; then
    echo "demo: FAILED: vm3 did not keep replicating through vm2's failover" >&2
    exit 1
fi
echo
echo "demo: OK: the target is identical to the source ($BYTES bytes),"
echo "      the point before the change was restored exactly,"
echo "      the failback resync made the target equal to the source again,"
echo "      vm2 failed over to its app-consistent point exactly, and vm3 replicated throughout"
