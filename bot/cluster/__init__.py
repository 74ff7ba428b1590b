"""Several processes of one bot on one database: who runs which shards, who is alive, when each may
log in, and the state web traffic needs wherever it lands (call tokens, voice channels to rejoin).

- :mod:`bot.cluster.store` — the registry, shard claims and login pacing (SQL, both dialects).
- :mod:`bot.cluster.member` — this process: register, claim, heartbeat, the shared IDENTIFY gate.
- :mod:`bot.cluster.supervisor` — ``voicebot cluster --processes N``: workers on one machine.
- :mod:`bot.cluster.rejoin` — the voice channels each guild had the bot in, rejoined after a restart.
"""

from bot.cluster.member import ClusterMember, DatabaseGate, process_info
from bot.cluster.store import ClusterStore, ProcessInfo, ProcessRow, ShardsHeld

__all__ = ["ClusterMember", "ClusterStore", "DatabaseGate", "ProcessInfo", "ProcessRow", "ShardsHeld", "process_info"]
