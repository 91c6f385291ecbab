#!/usr/bin/env python3
"""Opens N WebSocket connections to HOST:PORT from source address SRC (127.x.y.z), completes each
upgrade, then holds them idle until stdin closes. Prints `held N` when all are open.
Usage: hold.py HOST PORT N [SRC]   (one process holds at most ~19k: the 20,000-fd limit)"""
import asyncio, sys

REQ = ("GET / HTTP/1.1\r\nHost: {h}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

async def one(host, port, src, sem, held):
    async with sem:
        try:
            r, w = await asyncio.open_connection(host, port, local_addr=(src, 0) if src else None)
            w.write(REQ.format(h=host).encode())
            head = await r.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                w.close(); return
            held.append(w)
        except Exception as e:
            held_errors.append(repr(e))

held_errors = []

async def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    src = sys.argv[4] if len(sys.argv) > 4 else None
    sem = asyncio.Semaphore(200)
    held = []
    await asyncio.gather(*(one(host, port, src, sem, held) for _ in range(n)))
    print(f"held {len(held)} errors {len(held_errors)} {held_errors[:1]}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
