"""Many BidiReadObject streams from one process and one channel, held open until stdin closes.

    python stream_load.py HOST:PORT BUCKET --idle OBJ --stalled OBJ --streams N

Half the streams (rounded up) read 4 KiB of the idle object to its end and then stay
open, silent; the others ask for a whole stalled object and never read past the
first response (the channel's window does not grow: `grpc.http2.bdp_probe=0`, so the
store's writes really wait). Prints one JSON line once every stream is open or has
failed: {"ok": n, "failed": {code: n}}; then cancels everything when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter

import grpc
import grpc.aio

from fusefs.proto import storage_pb2 as pb

METHOD = "/google.storage.v2.Storage/BidiReadObject"


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("bucket")
    p.add_argument("--idle", required=True)
    p.add_argument("--stalled", required=True)
    p.add_argument("--streams", type=int, default=100)
    a = p.parse_args()
    channel = grpc.aio.insecure_channel(
        a.target,
        options=[("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 32 << 20)],
    )
    call = channel.stream_stream(METHOD)
    failed: Counter[str] = Counter()
    calls = []

    async def one(i: int) -> None:
        idle = i % 2 == 0
        spec = pb.BidiReadObjectSpec(
            bucket=f"projects/_/buckets/{a.bucket}", object=a.idle if idle else a.stalled
        )
        ranges = [pb.ReadRange(read_offset=0, read_length=4096 if idle else 0, read_id=1)]
        stream = call()
        calls.append(stream)
        try:
            await stream.write(
                pb.BidiReadObjectRequest(
                    read_object_spec=spec, read_ranges=ranges
                ).SerializeToString()
            )
            await stream.read()  # the metadata response
            if idle:
                while True:
                    message = pb.BidiReadObjectResponse.FromString(await stream.read())
                    if any(d.range_end for d in message.object_data_ranges):
                        break
        except grpc.aio.AioRpcError as e:
            failed[e.code().name] += 1

    await asyncio.gather(*(one(i) for i in range(a.streams)))
    print(json.dumps({"ok": a.streams - sum(failed.values()), "failed": failed}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for stream in calls:
        stream.cancel()
    await channel.close(grace=None)


if __name__ == "__main__":
    asyncio.run(main())
