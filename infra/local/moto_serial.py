#!/usr/bin/env python3
"""moto's server, applying one request at a time.

moto's own server handles requests on threads and its DynamoDB backend takes no lock, so two
concurrent conditional writes (or transactions) can both pass their conditions. DynamoDB never
allows that: a conditional write is atomic with its condition, and that is exactly what rotate,
fanout and the sweeper rely on when runs overlap. A lock around the application gives the local
stack the same guarantee, while connections (and keep-alive) are still served by threads.

Two more changes keep long local runs (thousands of transactions) linear, without changing what
any request returns:
- moto backs up every table a transaction touches with a deep copy, stream records included. Stream
  records are immutable snapshots, so the backup shares them (a new list, the same records).
- moto appends every model instance it ever creates to a class-level list (read only by S3 cleanup
  and a debug listing), deep-copied backups included, so memory grows with every transaction
  until the process is killed (24 GiB after a few thousand). DynamoDB instances are not tracked.
- Table and stream shard reference each other, so discarded backups are freed only by Python's
  cycle collector, which runs too rarely for that allocation pattern: collect every 200 requests.
- A cancelled transaction rolls back by replacing each touched table with its backup object, so
  stream iterators handed out before (which hold the old shard) never see later records, unlike
  DynamoDB's. The backup's state is copied back into the live table and shard instead.

One more makes moto behave as DynamoDB where the broker depends on it and moto does not:
- TransactWriteItems honours ClientRequestToken: a repeat of a successful transaction with the same
  token and parameters within 10 minutes returns the first answer without applying it again, and
  the same token with other parameters is IdempotentParameterMismatchException. Without this, a
  retry after a lost response (which tests provoke) would fail its own conditions.

And one KMS operation moto lacks, which the envelope signing mode uses:
- GenerateDataKeyPairWithoutPlaintext (ECC_NIST_P256 only): a fresh P-256 key pair; the response
  carries its public key (SubjectPublicKeyInfo DER) and its PKCS#8 private key encrypted under the
  named symmetric key with the encryption context, exactly as moto's Encrypt would, so Decrypt
  with the same context returns it. No plaintext leaves, as in KMS.

The patches reach into moto's internals (backend classes, private attributes), so this file runs
only against the moto version they were written for (PATCHED_MOTO_VERSION, pinned in
requirements.txt); another version refuses to start rather than emulate DynamoDB wrongly.

Usage: moto_serial.py -H 127.0.0.1 -p PORT
"""

import argparse
import base64
import copy
import gc
import hashlib
import io
import json
import time
import signal
import sys
import threading

import moto

PATCHED_MOTO_VERSION = "5.2.5"
if moto.__version__ != PATCHED_MOTO_VERSION:
    sys.exit(
        f"moto_serial.py patches moto {PATCHED_MOTO_VERSION} internals; found moto {moto.__version__}: "
        "pin it in infra/local/requirements.txt or review every patch for the new version"
    )

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.core.common_models import BaseModel
from moto.dynamodb.exceptions import TransactionCanceledException
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import StreamShard
from werkzeug.serving import run_simple

COLLECT_EVERY = 200


def _copy_stream_shard(self, memo):
    """Deep copy of a stream shard that shares its (immutable) records."""
    clone = StreamShard.__new__(StreamShard)
    memo[id(self)] = clone
    for name, value in self.__dict__.items():
        clone.__dict__[name] = list(value) if name == "items" else copy.deepcopy(value, memo)
    return clone


_tracked_new = BaseModel.__new__


def _new_model(cls, *args, **kwargs):
    """BaseModel.__new__, without tracking DynamoDB instances (see the module docs)."""
    if cls.__module__.startswith("moto.dynamodb."):
        return object.__new__(cls)
    return _tracked_new(cls, *args, **kwargs)


_transact = DynamoDBBackend.transact_write_items


def _transact_in_place(self, transact_items):
    """transact_write_items, rolling back into the live table and stream shard objects."""
    live = dict(self.tables)
    try:
        return _transact(self, transact_items)
    except TransactionCanceledException:
        for name, table in live.items():
            backup = self.tables.get(name)
            if backup is None or backup is table:
                continue
            shard = table.stream_shard
            table.__dict__.update(backup.__dict__)
            if shard is not None and backup.stream_shard is not None:
                shard.items = backup.stream_shard.items
                shard.table = table
                table.stream_shard = shard
            self.tables[name] = table
        raise


def _generate_data_key_pair_without_plaintext(self):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from moto.kms.exceptions import ValidationException

    key_id = self._get_param("KeyId")
    encryption_context = self._get_param("EncryptionContext", {})
    spec = self._get_param("KeyPairSpec")
    self._validate_key_id(key_id)
    if spec != "ECC_NIST_P256":
        raise ValidationException(f"KeyPairSpec {spec} is not emulated here (ECC_NIST_P256 only)")
    private = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ciphertext, arn = self.kms_backend.encrypt(
        key_id=key_id, plaintext=pkcs8, encryption_context=encryption_context
    )
    return json.dumps({
        "KeyId": arn,
        "KeyPairSpec": spec,
        "PublicKey": base64.b64encode(spki).decode(),
        "PrivateKeyCiphertextBlob": base64.b64encode(ciphertext).decode(),
    })


def apply_patches():
    from moto.kms.responses import KmsResponse

    KmsResponse.generate_data_key_pair_without_plaintext = _generate_data_key_pair_without_plaintext
    StreamShard.__deepcopy__ = _copy_stream_shard
    BaseModel.__new__ = _new_model
    DynamoDBBackend.transact_write_items = _transact_in_place


IDEMPOTENCY_WINDOW_SECONDS = 600
TRANSACT_TARGET = "DynamoDB_20120810.TransactWriteItems"


class Serialized:
    """WSGI middleware: each request is handled, and its response built, under one lock."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.requests = 0
        # ClientRequestToken -> (parameters digest, status, headers, body, completed at)
        self.transactions = {}

    def __call__(self, environ, start_response):
        with self.lock:
            if environ.get("HTTP_X_AMZ_TARGET") == TRANSACT_TARGET:
                response = self._idempotent_transaction(environ, start_response)
            else:
                response = list(self.app(environ, start_response))
            self.requests += 1
            if self.requests % COLLECT_EVERY == 0:
                gc.collect()
            return response

    def _idempotent_transaction(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        try:
            request = json.loads(body)
        except ValueError:
            return list(self.app(environ, start_response))
        token = request.pop("ClientRequestToken", None)
        if not token:
            return list(self.app(environ, start_response))
        digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        now = time.monotonic()
        self.transactions = {
            t: v for t, v in self.transactions.items() if now - v[4] < IDEMPOTENCY_WINDOW_SECONDS
        }
        seen = self.transactions.get(token)
        if seen is not None:
            if seen[0] != digest:
                error = json.dumps({
                    "__type": "com.amazonaws.dynamodb.v20120810#IdempotentParameterMismatchException",
                    "message": "ClientRequestToken reused with different parameters",
                }).encode()
                start_response("400 Bad Request", [
                    ("Content-Type", "application/x-amz-json-1.0"),
                    ("Content-Length", str(len(error))),
                ])
                return [error]
            start_response(seen[1], seen[2])
            return [seen[3]]
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return start_response(status, headers, exc_info)

        response = list(self.app(environ, capture))
        if captured.get("status", "").startswith("200"):
            self.transactions[token] = (digest, captured["status"], captured["headers"], b"".join(response), now)
        return response


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    apply_patches()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, Serialized(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(sys.argv[1:])
