"""The probe's lean HTTP/1.1 client against raw loopback servers: reuse, stale
connections, hostile answers."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from fusefs.hub.http1 import MAX_HEAD, HeadClient, ProbeError

REDIRECT = (
    b"HTTP/1.1 302 Found\r\nLocation: grpc://h:1/b/o?generation=1\r\nContent-Length: 0\r\n\r\n"
)


class RawServer:
    """Answers each request on a connection with the next scripted answer; counts
    connections and requests, and keeps what each request said."""

    def __init__(self, answers: list[bytes], close_after: int | None = None) -> None:
        self.answers = answers
        self.close_after = close_after  # requests per connection before closing it
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buf, served = b"", 0
        async with stream:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests.append(head)
                answer = self.answers[min(len(self.requests) - 1, len(self.answers) - 1)]
                await stream.send_all(answer)
                served += 1
                if self.close_after is not None and served >= self.close_after:
                    return


async def serve(nursery: trio.Nursery, server: RawServer) -> str:
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_kept_alive_connection_serves_many_probes_with_their_headers():
    server = RawServer([REDIRECT])
    async with trio.open_nursery() as nursery:
        client = HeadClient(await serve(nursery, server), {"authorization": "Bearer t"})
        for _ in range(20):
            status, location = await client.head("/x?a=1", {"x-aliyun-region-id": "r1"})
            assert (status, location) == (302, "grpc://h:1/b/o?generation=1")
        await client.aclose()
        nursery.cancel_scope.cancel()
    assert server.connections == 1 and len(server.requests) == 20
    first = server.requests[0].lower()
    assert first.startswith(b"head /x?a=1 http/1.1")
    assert b"authorization: bearer t" in first and b"x-aliyun-region-id: r1" in first


async def test_a_connection_the_hub_closed_is_replaced_once():
    server = RawServer([REDIRECT], close_after=1)  # the hub closes after every answer
    async with trio.open_nursery() as nursery:
        client = HeadClient(await serve(nursery, server))
        for _ in range(5):
            assert (await client.head("/x", {}))[0] == 302
        await client.aclose()
        nursery.cancel_scope.cancel()
    assert len(server.requests) == 5 and server.connections >= 5


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 302 Found\r\nX-Junk: " + b"a" * (4 * MAX_HEAD) + b"\r\n\r\n",  # huge head
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nContent-Length: zz\r\n\r\n",
        b"",  # closes without answering
    ],
)
async def test_hostile_or_missing_answers_are_a_probe_error(answer):
    server = RawServer([answer], close_after=1)
    async with trio.open_nursery() as nursery:
        client = HeadClient(await serve(nursery, server))
        with pytest.raises(ProbeError):
            await client.head("/x", {})
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_an_unreachable_hub_is_a_probe_error():
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        client = HeadClient(f"http://127.0.0.1:{port}")
        with pytest.raises(ProbeError):
            await client.head("/x", {})


async def test_a_cancelled_probe_leaves_no_connection_behind():
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        client = HeadClient(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
        with trio.move_on_after(0.2) as scope:
            await client.head("/x", {})
        assert scope.cancelled_caught and not client._idle
        nursery.cancel_scope.cancel()
