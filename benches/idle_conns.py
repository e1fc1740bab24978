#!/usr/bin/env python3
"""Memory per open client connection: opens N keep-alive connections to a proxy, half of them
after one forwarded request each and half before any, and prints how much the proxy's resident
memory (summed over the given PIDs: nginx's master and workers) grew, per connection.

    usage: idle_conns.py HOST:PORT N "Authorization: Bearer ..." PID [PID...]
    IDLE_CONNS_WITH_REQUEST=0.5 (the default) sets the share of connections that make a request.
"""
import os
import resource
import socket
import sys
import time


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def main():
    target, n, auth, pids = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    host, port = target.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = rss_kib(pids)
    conns = []
    share, sent = float(os.environ.get("IDLE_CONNS_WITH_REQUEST", "0.5")), 0
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n\r\n".encode()
    for i in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        if (i + 1) * share >= sent + 1:
            sent += 1
            s.sendall(request)
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    raise SystemExit(f"connection {i} closed before an answer")
                got += chunk
            if not got.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"connection {i}: {got[:80]!r}")
        conns.append(s)
    # idle HTTP/1.1 connections are parked after one to two seconds
    time.sleep(3.0)
    after = rss_kib(pids)
    for s in conns:
        s.close()
    print(f"{(after - before) / n:.1f} KiB per connection ({n} open, {sent} after one request; "
          f"RSS {before // 1024} -> {after // 1024} MiB)")


if __name__ == "__main__":
    main()
