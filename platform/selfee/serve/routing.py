"""Chain affinity for the model replicas of the batching engines (HF, llama.cpp).

Each step of a chain resubmits the text so far. The replica that ran the chain's last
step holds that text in its KV cache; any other replica evaluates all of it again. Ray
Serve's default router sends a request to the less busy of two replicas drawn at random,
so with two idle replicas a chain's steps land on either, at random.
``ChainAffinityRouter`` sends a step to the replica that ran its chain's last step
(``CompletionRequest.key``), or, when that one is gone or full, to the less busy of two
others; a new chain goes to the less busy of two drawn at random, as by default. It needs
no shared state: all steps of a chain come from the one ingress replica whose request
drives it, and that replica's router saw where each went. vLLM replicas use Ray Serve
LLM's ``PrefixCacheAffinityRouter`` instead (``selfee.serve.llm_server``), which also finds
prefixes that different chains share.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

REMEMBERED_CHAINS = 100_000  # where the latest chains' steps went, least recently used out


def chain_key(request: PendingRequest | None) -> str | None:
    """The chain a step continues (the key of its ``CompletionRequest``), if it is a step."""
    for arg in request.args if request is not None else ():
        key = getattr(arg, "key", None)
        if isinstance(key, str) and key:
            return key
    return None


class ChainAffinityRouter(RequestRouter):
    """A chain's steps go to the replica that holds its text in its cache. (Not FIFO:
    a replica chosen for a step must serve that step, not the oldest one waiting.)"""

    def initialize_state(self, **kwargs: Any) -> None:
        self._homes: OrderedDict[str, ReplicaID] = OrderedDict()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        home = self._homes.get(chain_key(pending_request) or "")
        at_home = [r for r in candidate_replicas if r.replica_id == home]
        others = [r for r in candidate_replicas if r.replica_id != home]
        ranks = [at_home] if at_home else []  # tried first; the others if it is full
        if others:
            ranks.append(random.sample(others, min(2, len(others))))
        return ranks

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        key = chain_key(pending_request)
        if key is None:
            return
        self._homes[key] = replica_id
        self._homes.move_to_end(key)
        if len(self._homes) > REMEMBERED_CHAINS:
            self._homes.popitem(last=False)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        for key in [k for k, home in self._homes.items() if home == replica_id]:
            del self._homes[key]
