#!/bin/sh
# Reloads baton in every pod of the Deployment, one pod at a time, and stops
# at the first pod whose new generation was rolled back (that pod, and every
# pod after it, keeps serving the old generation).
#
#   ./reload-pods.sh                 # app pods in the current namespace
#   ./reload-pods.sh -n prod app     # namespace prod, label app.kubernetes.io/name=app
#
# `baton ctl reload` waits for the verdict: 0 = the new generation serves,
# 10 = it failed and the old one keeps serving, 11 = no verdict within
# --timeout (see docs/contract.md for every exit code).
set -eu
namespace=""
if [ "${1:-}" = "-n" ]; then
    namespace="--namespace=$2"
    shift 2
fi
name="${1:-app}"
pods=$(kubectl get pods $namespace -l "app.kubernetes.io/name=$name" \
    --field-selector=status.phase=Running -o name)
if [ -z "$pods" ]; then
    echo "reload-pods: no running pod with label app.kubernetes.io/name=$name" >&2
    exit 1
fi
for pod in $pods; do
    echo "reload-pods: $pod"
    rc=0
    kubectl exec $namespace "$pod" -c app -- /usr/local/bin/baton ctl --timeout 120s reload || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "reload-pods: $pod did not take the new generation (baton ctl reload exited $rc);" \
            "stopping here: the pods after it were not touched" >&2
        echo "reload-pods: see why with: kubectl logs $namespace $pod -c app --tail=50" >&2
        exit "$rc"
    fi
done
