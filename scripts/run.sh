#!/usr/bin/env bash
# The last step of `make run`: print where everything is, then start every process of the Procfile.
# The Makefile has already installed the venv, written .env, checked the services, migrated every
# schema and bootstrapped the public and demo tenants.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PY="$VENV/bin/python"

# What the settings resolve (process environment first, then .env, then defaults), for the banner
# and for the web process's port. Printed as shell assignments.
eval "$("$PY" - <<'EOF'
import os
import shlex

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iiot.settings")
from django.conf import settings

settings.DEBUG  # importing the settings loads .env into os.environ (without overriding it)
values = {
    "IIOT_HTTP_PORT": os.environ.get("IIOT_HTTP_PORT") or "8000",
    "PUBLIC_DOMAIN": settings.IIOT_PUBLIC_DOMAIN,
    "ADMIN_EMAIL": settings.IIOT_ADMIN_EMAIL,
    "ADMIN_PASSWORD": settings.IIOT_ADMIN_PASSWORD,
    "DEMO_EMAIL": settings.IIOT_DEMO_ADMIN_EMAIL,
    "DEMO_PASSWORD": settings.IIOT_DEMO_ADMIN_PASSWORD,
    "STATIC_MANIFEST": "1" if settings.IIOT_STATIC_MANIFEST else "",
}
for key, value in values.items():
    print(f"{key}={shlex.quote(str(value))}")
EOF
)"
export IIOT_HTTP_PORT

if ! "$PY" -c "import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1])))" "$IIOT_HTTP_PORT" 2>/dev/null; then
    echo "Port $IIOT_HTTP_PORT on 127.0.0.1 is already in use (another 'make run'?)." >&2
    echo "Stop that process, or pick another port: IIOT_HTTP_PORT=8001 make run" >&2
    exit 1
fi

if [[ -n "$STATIC_MANIFEST" ]]; then
    # With the manifest storage (DEBUG off) whitenoise serves the collected, hashed files only.
    "$PY" manage.py collectstatic --noinput --verbosity 0
fi

cat <<EOF

  IIoT platform on http://127.0.0.1:${IIOT_HTTP_PORT} (Ctrl-C stops every process)

  Platform admin   http://${PUBLIC_DOMAIN}:${IIOT_HTTP_PORT}/admin/
                   ${ADMIN_EMAIL} / ${ADMIN_PASSWORD}
  Demo tenant      http://demo.localhost:${IIOT_HTTP_PORT}/
                   ${DEMO_EMAIL} / ${DEMO_PASSWORD}
  API docs         http://demo.localhost:${IIOT_HTTP_PORT}/api/v1/docs/   (Redoc: /api/v1/redoc/)
  Probes           http://${PUBLIC_DOMAIN}:${IIOT_HTTP_PORT}/healthz   /readyz

  Passwords are set when the users are first created (IIOT_ADMIN_PASSWORD,
  IIOT_DEMO_ADMIN_PASSWORD); later runs never change them.

EOF

# The processes read .env through the settings themselves, so honcho is given no env file: with
# its default (.env) the file would override the process environment, the reverse of the settings.
# Metrics: every process writes its values under one directory (prometheus_client multiprocess
# mode) and web's /metrics sums them. Emptied here, before any process starts, never while they run.
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-$PWD/var/prometheus}"
rm -rf "$PROMETHEUS_MULTIPROC_DIR"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"

export PATH="$PWD/$VENV/bin:$PATH"
exec honcho start -f Procfile -e /dev/null
