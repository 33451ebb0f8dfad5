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
LLM's ``PrefixCacheAffinityRouter`` instead, which also finds prefixes that different
chains share. ``request_router_config`` says which router a model deployment gets.
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

from selfee.serve.config import ServeConfig

REMEMBERED_CHAINS = 100_000  # where the latest chains' steps went, least recently used out
CHAIN_AFFINITY_ROUTER = "selfee.serve.routing.ChainAffinityRouter"
PREFIX_CACHE_ROUTER = "ray.serve.llm.request_router.PrefixCacheAffinityRouter"
PREFIX_TREE_EVICTION_S = 2  # how often the vLLM router's prefix tree drops what is past its bound


def request_router_config(cfg: ServeConfig, vllm: bool) -> dict[str, Any] | None:
    """The router ``prefix_affinity`` gives the model deployment (None: Serve's default)."""
    if not cfg.prefix_affinity:
        return None
    if not vllm:
        return {"request_router_class": CHAIN_AFFINITY_ROUTER}
    return {
        "request_router_class": PREFIX_CACHE_ROUTER,
        "request_router_kwargs": prefix_tree_bounds(cfg.prefix_affinity_chars),
    }


def prefix_tree_bounds(chars: int) -> dict[str, Any]:
    """Ray's prefix router remembers every prompt it routed, in a prefix tree per replica;
    without eviction (its default) that tree grows with every request for as long as the
    app runs. Bound it to about what a replica's KV cache can hold: beyond that the replica
    has dropped the prefix anyway."""
    return {
        "do_eviction": True,
        "eviction_threshold_chars": chars,
        "eviction_target_chars": int(chars * 0.9),
        "eviction_interval_secs": PREFIX_TREE_EVICTION_S,
    }


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
