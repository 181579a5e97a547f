"""Typed keys of the aiohttp application: one owner per resource."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from agent.config import AgentConfig
from agent.metrics import AgentMetrics
from agent.recovery.failover import GroupFailovers
from agent.replication.apply import ApplyLimits
from agent.replication.memory_budget import MemoryBudget
from agent.replication.replica import Replica
from agent.replication.retention_gate import RetentionGate
from agent.replication.state import StateStore

CONFIG = web.AppKey("config", AgentConfig)
REGISTRY = web.AppKey("registry", CollectorRegistry)
METRICS = web.AppKey("metrics", AgentMetrics)
STORE = web.AppKey("store", StateStore)
REPLICAS = web.AppKey("replicas", dict[str, Replica])
LIMITS = web.AppKey("limits", ApplyLimits)
RETENTION_GATE = web.AppKey("retention_gate", RetentionGate)
MEMORY_BUDGET = web.AppKey("memory_budget", MemoryBudget)
FAILOVERS = web.AppKey("failovers", GroupFailovers)
