#!/usr/bin/env python3
"""moto's server, applying one request at a time.

moto's own server handles requests on threads and its DynamoDB backend takes no lock, so two
concurrent conditional writes (or transactions) can both pass their conditions. DynamoDB never
allows that: a conditional write is atomic with its condition, and that is exactly what rotate,
fanout and the sweeper rely on when runs overlap. A lock around the application gives the local
stack the same guarantee, while connections (and keep-alive) are still served by threads.

Usage: moto_serial.py -H 127.0.0.1 -p PORT
"""

import argparse
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


class Serialized:
    """WSGI middleware: each request is handled, and its response built, under one lock."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            return list(self.app(environ, start_response))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, Serialized(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(sys.argv[1:])
