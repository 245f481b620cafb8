#!/bin/sh
# A SaaS sync job: the CRM API key lives in the broker, never in this job's configuration. nhi exec
# puts it in the command's environment and revokes the lease when the command exits (whatever its
# exit code, which nhi passes through).
set -eu
exec nhi --url https://broker.example.com --subject-token-command 'cat /run/identity/token' \
  exec --secret crm-api-key=CRM_API_KEY --token https://warehouse.example.com=WAREHOUSE_TOKEN \
  -- ./sync --since "$(date -u -d '1 hour ago' +%FT%TZ)"
