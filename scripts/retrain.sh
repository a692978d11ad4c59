#!/usr/bin/env bash
# One retraining, as .github/workflows/retrain.yml runs it (through `make retrain`):
# pull the DVC remote, run the pipeline as a DVC experiment with the parameter overrides (its
# promote stage is the promotion gate), push the new outputs, summarise.
#
# Environment (all optional):
#   DVC_REMOTE_URL        the remote pulled before and pushed after; DVC_REMOTE_USER and
#                         DVC_REMOTE_PASSWORD for an http(s) remote. They are written to
#                         .dvc/config.local (mode 600; never on a command line) for this run only.
#   PARAMS                params.yaml overrides separated by spaces, e.g. "train.epochs=30 train.dropout=0.4"
#   SUMMARY               Markdown report to append to (default reports/retrain_summary.md)
set -euo pipefail

summary=${SUMMARY:-reports/retrain_summary.md}
config_local=.dvc/config.local
log() { echo "retrain: $*"; }

# Each word of PARAMS becomes one -S option, as data: nothing in it is run by the shell.
overrides=()
read -ra words <<<"${PARAMS:-}"
for word in "${words[@]}"; do
    overrides+=(-S "$word")
done

if [ -n "${DVC_REMOTE_URL:-}" ]; then
    if [ -e "$config_local" ]; then
        echo "retrain: $config_local exists; move it away first (it is not replaced)" >&2
        exit 1
    fi
    trap 'rm -f "$config_local"' EXIT
    (
        umask 077
        printf "[core]\n    remote = otrain-retrain\n['remote \"otrain-retrain\"']\n    url = %s\n" "$DVC_REMOTE_URL"
        if [ -n "${DVC_REMOTE_USER:-}" ]; then
            printf "    auth = basic\n    user = %s\n    password = %s\n" "$DVC_REMOTE_USER" "${DVC_REMOTE_PASSWORD:-}"
        fi
    ) >"$config_local"
    log "dvc pull"
    dvc pull --allow-missing
fi

# DVC experiments are commits: a clone without a git identity (a runner's container) gets a local one.
if [ -z "$(git config user.email || true)" ]; then
    log "no git identity; this clone gets a local one for DVC's experiment commits"
    git config --local user.name "otrain retrain"
    git config --local user.email "retrain@otrain.invalid"
fi

log "dvc exp run ${overrides[*]}"
dvc exp run "${overrides[@]}"

if [ -n "${DVC_REMOTE_URL:-}" ]; then
    log "dvc push"
    dvc push
fi
otrain-summary
otrain-summary --markdown "$summary"
