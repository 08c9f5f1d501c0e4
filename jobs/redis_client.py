"""A redis-py client for [redis] (contract.config.RedisConfig): one Redis, or a Redis Cluster with
[redis.cluster]. Shared by the job's store and the CLI; it imports nothing but redis-py and the
contract, so the serving role's install, which has no job dependencies, can use it."""

from __future__ import annotations

import redis
from redis.cluster import ClusterNode

from contract.config import RedisConfig


def connect(rc: RedisConfig, **timeouts) -> redis.Redis | redis.RedisCluster:
    """A client for [redis]: a cluster client with [redis.cluster] (started from every node the
    config names), else one Redis's."""
    if rc.cluster is None:
        return redis.Redis(**rc.client_kwargs(), **timeouts)
    kwargs = rc.cluster_kwargs()
    seeds = [ClusterNode(host, port) for host, port in kwargs.pop("startup_nodes")]
    return redis.RedisCluster(startup_nodes=seeds, **kwargs, **timeouts)
