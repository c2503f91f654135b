#!/usr/bin/env bash
# The one test command, for users and CI alike: installs what is missing, builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
exec npx vitest run "$@"
