"""What the reading commands (`status`, `points`, `check`, `disks`) read, and the refusal when it
is not there.

A mistyped `state_dir` or `[retention] path` must not read as an empty, healthy setup: every
disk `never`, no recovery point, no problem. What must exist:

- `disks`: the state directory (it may be empty: before the agent's first run, every disk is
  `never` replicated, which is then the truth);
- `status`, `points`, `check`: the state store (`<state_dir>/state.db`, which the agent creates at
  its first start) and the retention directory (which it creates or refuses to start without).
"""

from __future__ import annotations

from agent.config import AgentConfig
from agent.errors import AgentError

# The state store's file in the state directory, as StateStore names it.
STATE_DB = "state.db"


class MissingInput(AgentError):
    """What a command reads does not exist. The message names the path and the config key."""


def require_state_dir(config: AgentConfig) -> None:
    """Raises MissingInput unless `[server] state_dir` is a directory."""
    state_dir = config.server.state_dir
    if not state_dir.is_dir():
        what = "is not a directory" if state_dir.exists() else "does not exist"
        raise MissingInput(f"state_dir {state_dir} {what}: correct [server] state_dir")


def require_state_store(config: AgentConfig) -> None:
    """Raises MissingInput unless `[server] state_dir` holds the state store."""
    require_state_dir(config)
    store = config.server.state_dir / STATE_DB
    if not store.is_file():
        raise MissingInput(
            f"no state store {store}: no agent has run with this state_dir yet, or "
            "[server] state_dir is not the agent's"
        )


def require_retention_dir(config: AgentConfig) -> None:
    """Raises MissingInput unless `[retention] path` is a directory."""
    path = config.retention.path
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise MissingInput(
            f"retention path {path} {what}: mount the retention drive, or correct [retention] path"
        )
