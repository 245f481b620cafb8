#!/usr/bin/env python3
"""Start-up time and peak memory of the nhi client against floors in the same run.

usage: client_start.py NHI_BINARY [N]
Prints the median and p90 wall time of N runs of: /bin/true (process floor), `curl --version`
(a C HTTP client), `nhi --version` (start-up alone) and `nhi token` against a closed loopback
port with one attempt (start-up + TLS/HTTP client set-up + a refused connection), and peak RSS.
"""
import os
import statistics
import subprocess
import sys
import time

binary, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200
env = dict(os.environ, NHI_BENCH_TOKEN="a.b.c")
cases = [
    ("/bin/true", ["/bin/true"]),
    ("curl --version", ["curl", "--version"]),
    ("nhi --version", [binary, "--version"]),
    ("nhi token, refused connection, 1 attempt", [binary, "--url", "http://127.0.0.1:9", "--subject-token-env",
                                                  "NHI_BENCH_TOKEN", "--max-attempts", "1", "token", "--audience", "a"]),
]
print(f"nhi {os.path.getsize(binary) / 1e6:.2f} MB ({binary})")
for name, command in cases:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    # GNU time reports the command's own peak (a fork from Python would count Python's pages).
    measured = subprocess.run(["/usr/bin/time", "-f", "%M", *command], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=env, text=True)
    peak_kib = int(measured.stderr.strip().splitlines()[-1])
    print(f"{name}: median {statistics.median(times):.2f} ms, p90 {times[int(n * 0.9)]:.2f} ms, "
          f"peak RSS {peak_kib / 1024:.1f} MiB")
