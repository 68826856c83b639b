#!/usr/bin/env python3
"""A TCP proxy that adds latency without limiting bandwidth, for benches/wan-bench.sh.

Every chunk read from either side is forwarded to the other side DELAY_MS later, in the
order it was read: a round trip through the proxy costs 2 x DELAY_MS more than without it.
Each direction keeps a queue of (due time, bytes); reading never waits for the queue to
drain, so a stream of chunks is delayed as a whole rather than one chunk per DELAY_MS (a
link 10 ms long, not a link that carries one packet per 10 ms). When a chunk falls due,
every chunk that is due by then goes out in one write.

Usage: delay_proxy.py LISTEN_PORT UPSTREAM_PORT DELAY_MS [CONNECT_DELAY_MS]
Loopback only (127.0.0.1). CONNECT_DELAY_MS (default 0) holds the connection to the
upstream back that long after accepting, to model a TCP handshake if wanted. Prints
"ready" on stdout once listening; on SIGUSR1 prints how many chunks it forwarded and how
late they went out beyond DELAY_MS (its own error; a busy CPU shows here) and its own CPU
use, then starts counting again; stops on SIGTERM or SIGINT.
"""

import asyncio
import collections
import signal
import sys
import time

HIGH_WATER = 4 << 20  # pause reading a side while its peer has this much unsent


class Stats:
    """How late chunks went out, beyond DELAY_MS: the proxy's own error."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.since = time.monotonic()
        self.cpu = time.process_time()
        self.chunks = 0
        self.late_sum = 0.0
        self.late_max = 0.0

    def note(self, late):
        self.chunks += 1
        self.late_sum += late
        self.late_max = max(self.late_max, late)

    def report(self):
        mean = self.late_sum / self.chunks if self.chunks else 0.0
        busy = (time.process_time() - self.cpu) / max(time.monotonic() - self.since, 1e-9)
        print(
            f"{self.chunks} chunks, late by {mean * 1000:.2f} ms on average,"
            f" {self.late_max * 1000:.1f} ms at most, {busy * 100:.0f}% of a core",
            flush=True,
        )
        self.reset()


STATS = Stats()


class Pipe:
    """One direction: bytes read from `src` go to `dst` after `delay` seconds, in order."""

    def __init__(self, conn, delay):
        self.conn = conn
        self.loop = conn.loop
        self.delay = delay
        self.queue = collections.deque()  # (due, bytes), or (due, None) for EOF
        self.timer = None
        self.dst = None  # transport written to
        self.eof_sent = False

    def push(self, data):
        self.queue.append((self.loop.time() + self.delay, data))
        if self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)

    def flush(self):
        self.timer = None
        if self.dst is None or self.conn.done:
            self.queue.clear()
            return
        now = self.loop.time()
        out = []
        eof = False
        while self.queue and self.queue[0][0] <= now:
            due, data = self.queue.popleft()
            STATS.note(now - due)
            if data is None:
                eof = True
                break
            out.append(data)
        if out:
            self.dst.write(b"".join(out))
        if eof:
            self.queue.clear()
            self.eof_sent = True
            if not self.dst.is_closing() and self.dst.can_write_eof():
                try:
                    self.dst.write_eof()
                except OSError:  # the receiver is already gone
                    pass
            self.conn.eof_sent()
        elif self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)

    def stop(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()


class Side(asyncio.Protocol):
    """One of the two connections: what it reads goes into `outgoing`, towards `peer`."""

    def __init__(self, conn, outgoing):
        self.conn = conn
        self.outgoing = outgoing
        self.transport = None
        self.peer = None
        self.eof = False

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data):
        self.outgoing.push(data)

    def eof_received(self):
        self.eof = True
        self.outgoing.push(None)
        return True  # keep our sending half open: the peer's delayed bytes may still come

    def connection_lost(self, exc):
        if not self.eof:  # a reset, or closed without EOF: pass an EOF on, in order
            self.eof = True
            self.outgoing.push(None)
        self.conn.lost()

    # Backpressure only when the receiving end does not keep up (as TCP would).
    def pause_writing(self):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class Connection:
    def __init__(self, loop, delay):
        self.loop = loop
        self.delay = delay
        self.up = Pipe(self, delay)  # client -> upstream
        self.down = Pipe(self, delay)  # upstream -> client
        self.client = None
        self.upstream = None
        self.done = False

    def eof_sent(self):
        if self.up.eof_sent and self.down.eof_sent:
            self.close()

    def lost(self):
        # One side is gone: close the other once the bytes in flight have gone out.
        if not self.done:
            self.loop.call_later(self.delay + 0.05, self.close)

    def close(self):
        if self.done:
            return
        self.done = True
        self.up.stop()
        self.down.stop()
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.close()


class Client(Side):
    def __init__(self, loop, delay, connect_delay, upstream_port):
        conn = Connection(loop, delay)
        super().__init__(conn, conn.up)
        self.loop = loop
        self.connect_delay = connect_delay
        self.upstream_port = upstream_port
        conn.client = self

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.pause_reading()  # until the upstream connection is there
        self.loop.create_task(self.connect())

    async def connect(self):
        conn = self.conn
        if self.connect_delay:
            await asyncio.sleep(self.connect_delay)
        if conn.done or self.transport.is_closing():
            conn.close()
            return
        try:
            _, upstream = await self.loop.create_connection(
                lambda: Side(conn, conn.down), "127.0.0.1", self.upstream_port
            )
        except OSError:
            conn.close()
            return
        conn.upstream = upstream
        self.peer, upstream.peer = upstream, self
        conn.up.dst = upstream.transport
        conn.down.dst = self.transport
        if conn.done or self.transport.is_closing():
            conn.close()
            upstream.transport.close()
            return
        self.transport.resume_reading()


async def main():
    listen_port = int(sys.argv[1])
    upstream_port = int(sys.argv[2])
    delay = float(sys.argv[3]) / 1000
    connect_delay = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.0
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(
        lambda: Client(loop, delay, connect_delay, upstream_port),
        "127.0.0.1",
        listen_port,
        backlog=1024,
        reuse_address=True,
    )
    loop.add_signal_handler(signal.SIGUSR1, STATS.report)
    print("ready", flush=True)
    await stop
    server.close()


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    asyncio.run(main())
