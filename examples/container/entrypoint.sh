#!/bin/sh
# Container entrypoint: baton as PID 1. No tini or dumb-init needed: baton
# reaps orphaned processes (a worker's leaked grandchildren are reparented
# to PID 1 and baton reaps them, without taking them for workers), and it
# handles the signals a container runtime sends:
#   docker stop / kubectl delete    SIGTERM: drain (up to --grace), exit 0
#   docker kill -s HUP <ctr>        reload (e.g. after a new config or code
#                                   volume was mounted into /app/current)
# Keep the runtime's stop timeout above --grace (docker stop -t 40,
# terminationGracePeriodSeconds: 40).
set -e
exec /usr/local/bin/baton run \
    --listen "0.0.0.0:${PORT:-8080}" \
    --workers "${WORKERS:-2}" \
    --grace "${GRACE:-30s}" \
    --chdir /app/current \
    -- "$@"
