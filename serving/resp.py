"""A pipelined asyncio Redis connection for the lookup hot path.

Measured on this 2-core machine (bench.serving, k = 25): with redis-py's asyncio client the gRPC
service peaked at about 3,900 calls/s, and its Redis reads cost about 80 us of CPU per call
(connection-pool checkout, stream reader, locks). Here every caller writes its command on one
connection and awaits a future; hiredis (redis-py's own C parser) parses the replies, which come back
in order. Concurrent calls therefore pipeline by themselves, with no pool and no lock. Only what
serving.core needs: one connection, reconnect on demand, errors as exceptions."""

from __future__ import annotations

import asyncio
import collections

import hiredis

from contract.config import RedisConfig


class RedisUnavailable(ConnectionError):
    """Redis could not be reached, or the connection was lost with the command in flight."""


class RedisReplyError(RuntimeError):
    """Redis answered with an error reply."""


def encode(*args: bytes | str | int | float) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            fut = self.waiters.popleft()
            if fut.done():  # its caller gave up (deadline); the reply is still consumed in order
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(RedisReplyError(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc) -> None:
        self.transport = None
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(RedisUnavailable(f"connection to redis lost ({exc or 'closed'})"))


class PipelinedRedis:
    """`await client.execute("MGET", k1, k2)`; connects (again) when needed, over TLS and logged in
    as [redis] says."""

    def __init__(self, redis: RedisConfig, connect_timeout_s: float) -> None:
        self.host, self.port, self.connect_timeout_s = redis.host, redis.port, connect_timeout_s
        password = redis.password()
        self.login = None if password is None else (("AUTH", redis.username, password) if redis.username
                                                      else ("AUTH", password))
        self.ssl = redis.ssl_context()
        self.protocol: _Protocol | None = None
        self._connecting: asyncio.Future | None = None

    async def _connect(self) -> _Protocol:
        connecting = self._connecting
        if connecting is None:  # one connect attempt shared by every caller waiting on it
            connecting = self._connecting = asyncio.ensure_future(self._open())
            connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(connecting)

    def _connect_done(self, attempt: asyncio.Future) -> None:
        if self._connecting is attempt:
            self._connecting = None
        if not attempt.cancelled():
            attempt.exception()  # retrieved here; the waiters got it too

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        protocol = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, protocol = await loop.create_connection(
                    _Protocol, self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None)
                if self.login is not None:
                    await self._send(protocol, self.login)
        except (TimeoutError, OSError) as err:
            if protocol is not None and protocol.transport is not None:
                protocol.transport.close()
            raise RedisUnavailable(f"cannot connect to redis at {self.host}:{self.port} ({err!r})") from None
        except RedisReplyError as err:  # WRONGPASS, NOAUTH: a config problem, said as Redis says it
            if protocol.transport is not None:
                protocol.transport.close()
            raise RedisUnavailable(f"redis at {self.host}:{self.port} refused the login ({err}); check "
                                   "redis.username and the password in the variable redis.password_env names") from None
        self.protocol = protocol
        return protocol

    @staticmethod
    async def _send(protocol: _Protocol, args) -> object:
        fut = asyncio.get_running_loop().create_future()
        protocol.waiters.append(fut)
        protocol.transport.write(encode(*args))
        return await fut

    async def execute(self, *args):
        protocol = self.protocol
        if protocol is None or protocol.transport is None:
            protocol = await self._connect()
        return await self._send(protocol, args)

    async def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.protocol = None
