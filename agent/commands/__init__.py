"""The `mtagent` command line: argparse, and printing what the other rooms return.

May import every room of agent/, `protocol` and `blockio`; never aiohttp (the `serve` command
reaches the daemon through `agent.server.daemon`). Each command module imports its heavy
dependencies only when run, so that one command loads only what it needs.
"""
