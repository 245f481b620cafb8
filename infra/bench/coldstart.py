#!/usr/bin/env python3
"""Cold start, warm latency and peak memory of a built function, measured locally.

Serves the Lambda Runtime API (2018-06-01) on 127.0.0.1, starts the function's `bootstrap` (from
`sam build`) against it with the local stack's environment, and hands it the same event N times:
  init   = process start -> its first `GET /invocation/next` (runtime and clients built)
  first  = first event handed out -> its response (the cold invocation: caches empty)
  warm   = median of the others
  rss    = the process's peak resident memory (VmHWM) after the last invocation
AWS calls go to whatever AWS_ENDPOINT_URL names (moto under the local stack), so invocation times
include the emulator's; init and memory do not depend on it.

Usage: coldstart.py BOOTSTRAP EVENT.json [INVOCATIONS]   (environment: the stack's env file)
"""

import http.server
import json
import os
import statistics
import subprocess
import sys
import threading
import time


def main(argv):
    bootstrap, event_path = argv[0], argv[1]
    invocations = int(argv[2]) if len(argv) > 2 else 20
    event = open(event_path, "rb").read()
    state = {"handed": [], "answered": [], "next_calls": [], "errors": 0}
    done = threading.Event()

    class Runtime(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if not self.path.endswith("/invocation/next"):
                self.send_error(404)
                return
            state["next_calls"].append(time.perf_counter())
            n = len(state["handed"])
            if n >= invocations:
                done.set()
                time.sleep(3600)  # the function waits here until it is stopped
                return
            state["handed"].append(time.perf_counter())
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Lambda-Runtime-Aws-Request-Id", f"req-{n}")
            self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 300_000))
            self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:bench")
            self.send_header("Content-Length", str(len(event)))
            self.end_headers()
            self.wfile.write(event)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            if "/error" in self.path:
                state["errors"] += 1
                sys.stderr.write(f"function error: {body[:300]!r}\n")
            else:
                try:
                    state["last_status"] = json.loads(body).get("statusCode")
                except (ValueError, AttributeError):
                    state["last_status"] = None
            state["answered"].append(time.perf_counter())
            self.send_response(202)
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Runtime)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ)
    env.update({
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{server.server_address[1]}",
        "AWS_LAMBDA_FUNCTION_NAME": "bench",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_LOG_GROUP_NAME": "bench",
        "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
    })
    started = time.perf_counter()
    process = subprocess.Popen([bootstrap], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not done.wait(timeout=300):
        process.kill()
        raise SystemExit("the function did not finish its invocations in 300 s")
    with open(f"/proc/{process.pid}/status") as status:
        rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    process.kill()
    process.wait()
    server.shutdown()
    init = state["next_calls"][0] - started
    durations = [a - h for h, a in zip(state["handed"], state["answered"])]
    print(json.dumps({
        "bootstrap": bootstrap,
        "size_bytes": os.path.getsize(bootstrap),
        "init_ms": round(init * 1000, 1),
        "first_invocation_ms": round(durations[0] * 1000, 1),
        "warm_median_ms": round(statistics.median(durations[1:]) * 1000, 2) if len(durations) > 1 else None,
        "invocations": len(durations),
        "errors": state["errors"],
        # HTTP functions answer an API Gateway response: its status (None for event handlers).
        "last_status": state.get("last_status"),
        "peak_rss_mib": round(rss_kib / 1024, 1),
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
