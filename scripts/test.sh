#!/usr/bin/env bash
# The one test command, for users and CI alike: installs what is missing, builds, checks types
# and lint, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
# Types of src/, test/ and bench/, and the lint rules (the layers of src/ among them).
npm run -s check
exec npx vitest run "$@"
