#!/bin/sh
# A destination receiving the broker's Security Event Tokens, registered in a manifest applied with
# brokerctl: `destinations: [{id: crm-sync, kind: {type: webhook, url: "https://hooks.example.com/nhi-events"},
#   secrets: [crm-api-key], owner: crm, enabled: true}]`.
# Run behind a TLS-terminating proxy that forwards https://hooks.example.com/nhi-events here.
# Each verified event runs the handler; the broker counts the delivery as confirmed only when the
# handler exits 0 (RFC 8935 202), so a failed restart is delivered again.
set -eu
exec nhi --url https://broker.example.com events serve \
  --listen 127.0.0.1:8080 \
  --audience https://hooks.example.com/nhi-events \
  --exec '
    case "$NHI_EVENT_TYPE" in
      *credential-rotated) kubectl -n crm rollout restart deployment/crm-sync ;;   # re-fetch the new version
      *credential-revoked) kubectl -n crm scale deployment/crm-sync --replicas=0 ;;  # stop using it now
    esac'
