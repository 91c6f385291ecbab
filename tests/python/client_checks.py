"""Checks a surge echo server with the Python `websockets` client (sync API, websockets >= 12).

Usage: python3 client_checks.py PORT
Run by tests/loopback.rs (python_websockets_client) against the server it starts.
"""

import sys

from websockets.sync.client import connect
from websockets.exceptions import ConnectionClosed


def main() -> None:
    uri = f"ws://127.0.0.1:{int(sys.argv[1])}/"

    with connect(uri, open_timeout=5, close_timeout=5, max_size=None) as ws:
        ws.send("héllo")
        assert ws.recv(timeout=5) == "héllo"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=5) == b"\x00\x01\xff"
        big = bytes(range(256)) * 4096  # 1 MiB
        ws.send(big)
        assert ws.recv(timeout=5) == big
        # Fragmented: websockets sends an iterable as one fragmented message.
        ws.send(["frag", "ment", "ed"])
        assert ws.recv(timeout=5) == "fragmented"
        pong = ws.ping(b"py-ping")
        assert pong.wait(timeout=5), "no pong"
        print("echo, fragments, ping: ok")

    # Close code both ways.
    with connect(uri, open_timeout=5, close_timeout=5) as ws:
        ws.close(code=4000, reason="py bye")
        assert ws.close_code == 4000, ws.close_code
    print("client close 4000: ok")

    with connect(uri, open_timeout=5, close_timeout=5) as ws:
        ws.send("please close")
        try:
            ws.recv(timeout=5)
            raise AssertionError("expected the server to close")
        except ConnectionClosed as e:
            assert e.rcvd is not None and e.rcvd.code == 4001, e.rcvd
            assert e.rcvd.reason == "as you wish", e.rcvd
    print("server close 4001: ok")


if __name__ == "__main__":
    main()
