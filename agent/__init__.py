"""mtagent's programs: the daemon that writes what senders stream, the sender, and the CLI.

Rooms (tests/test_layering.py enforces who may import whom):
- shared roots: `config`, `units`, `errors`, `metrics`, `certs`, `version`, `log_fields`:
  used everywhere in agent/, they import only each other, `protocol` and `blockio`;
- `sender/`: the process server's side (push, resync, verify);
- `replication/`: one disk at run time (replica, apply, state store, locks, disk watch);
- `recovery/`: recovery points and restoring them; `retention/`: the policy at run time;
- `reports/`: what the CLI tells about disks, read without a running agent;
- `server/`: the aiohttp application and the daemon, the only importer of aiohttp;
- `commands/`: argparse and printing only.
"""
