"""Checks a surge echo server that has permessage-deflate enabled with the Python `websockets` client
(sync API, websockets >= 12), whose default is permessage-deflate with context takeover.

Usage: python3 deflate_checks.py PORT
Run by tests/deflate_loopback.rs against the server it starts.
"""

import json
import sys

from websockets.sync.client import connect


def main() -> None:
    uri = f"ws://127.0.0.1:{int(sys.argv[1])}/"
    with connect(uri, open_timeout=5, close_timeout=5, max_size=None, compression="deflate") as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert ext.startswith("permessage-deflate"), f"not negotiated: {ext!r}"
        for i in range(200):
            msg = json.dumps({"type": "chat", "room": "lobby", "user": f"player{i % 7}",
                              "text": f"hello everyone, message {i} " + "é" * (i % 5), "ts": 1700000000 + i})
            ws.send(msg)
            assert ws.recv(timeout=5) == msg, i
            data = msg.encode() * 3
            ws.send(data)
            assert ws.recv(timeout=5) == data, i
        big = ("".join(f"line {i}: the quick brown fox\n" for i in range(20000)))  # ~600 KB
        ws.send(big)
        assert ws.recv(timeout=5) == big
        ws.send(["frag", "ment", "ed ", "é" * 100])
        assert ws.recv(timeout=5) == "fragmented " + "é" * 100
        ws.send("small")
        assert ws.recv(timeout=5) == "small"
        print(f"negotiated {ext!r}; 400 similar messages, 600 KB, fragments: ok")


if __name__ == "__main__":
    main()
