#!/usr/bin/env bash
# The test command: sets up what the tests need on a fresh Debian 12 machine
# (npm packages, tshark and tcpdump), builds, and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ovs-vsctl >/dev/null 2>&1 || need+=(openvswitch-switch)
[ -x /usr/lib/frr/bfdd ] || need+=(frr)
command -v bird >/dev/null 2>&1 || need+=(bird2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${need[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "test.sh: missing ${need[*]} and cannot apt-get (not root); tests needing them will skip"
  fi
fi

if [ ! -x node_modules/.bin/vitest ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npx tsc -p tsconfig.json
report=$(mktemp)
status=0
npx vitest run --dir test --test-timeout=120000 --hook-timeout=60000 --reporter=default --reporter=json --outputFile="$report" "$@" || status=$?
# One plain closing line for CI: "N passed, N failed, N skipped".
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const skipped = r.numPendingTests + r.numTodoTests;
  console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
' "$report" || true
rm -f "$report"
exit $status
