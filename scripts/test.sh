#!/usr/bin/env bash
# The test command: sets up what the tests need on a fresh Debian 12 machine
# (npm packages, tshark and tcpdump, nftables), builds, and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v ethtool >/dev/null 2>&1 || need+=(ethtool)
command -v ovs-vsctl >/dev/null 2>&1 || need+=(openvswitch-switch)
command -v vtysh >/dev/null 2>&1 && [ -x /usr/lib/frr/bfdd ] || need+=(frr)
command -v bird >/dev/null 2>&1 || need+=(bird2)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
# The cap addon (pcap-live ports) is built at npm install by node-gyp: libpcap's headers, a C++ compiler, make, python3.
[ -e /usr/include/pcap/pcap.h ] || need+=(libpcap-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v script >/dev/null 2>&1 || need+=(bsdutils)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
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
# cap is optional (npm goes on when its build fails): built again here when it does not load, e.g. after
# libpcap-dev came in above on a machine whose node_modules was installed without it.
if ! node -e "require('cap')" >/dev/null 2>&1; then
  # Built and failed before (no libpcap then): npm left it out of node_modules, so install afresh; else rebuild it.
  if [ -d node_modules/cap ]; then npm rebuild cap >/dev/null 2>&1 || true; else npm ci --no-audit --no-fund >/dev/null 2>&1 || true; fi
  node -e "require('cap')" >/dev/null 2>&1 || echo "test.sh: the cap addon does not build or load here; the pcap-live tests will fail (CI) or skip"
fi
npx tsc -p tsconfig.json
chmod +x dist/control/cli.js   # the `fpo` bin (npx fpo): tsc writes it without the executable bit
npx tsc -p tsconfig.test.json   # the tests type-checked too (vitest only strips their types)
# Two runs: everything else in parallel, then the tests that measure timing on
# the wire (BFD detection times, pings during a migration) one file at a time,
# so that the other suites' load does not skew what they measure.
SERIAL=(test/control/bfd/ test/control/lab.test.ts test/control/lab-untrusted.test.ts test/control/live-vxlan.test.ts test/control/directory/lab.test.ts)
SERIAL_GLOBS=('**/control/bfd/**' '**/control/lab.test.ts' '**/control/lab-untrusted.test.ts' '**/control/live-vxlan.test.ts' '**/control/directory/lab.test.ts')
common=(--dir test --config test/vitest.config.ts --test-timeout=120000 --hook-timeout=60000 --reporter=default --reporter=json)
r1=$(mktemp); r2=$(mktemp)
status=0
if [ $# -gt 0 ]; then
  npx vitest run "${common[@]}" --outputFile="$r1" "$@" || status=$?
  echo '{"numPassedTests":0,"numFailedTests":0,"numPendingTests":0,"numTodoTests":0}' > "$r2"
else
  excl=(); for g in "${SERIAL_GLOBS[@]}"; do excl+=(--exclude "$g"); done
  npx vitest run "${common[@]}" --outputFile="$r1" "${excl[@]}" || status=$?
  npx vitest run "${common[@]}" --outputFile="$r2" --no-file-parallelism "${SERIAL[@]}" || status=$?
fi
# One plain closing line for CI: "N passed, N failed, N skipped" (a test that
# called ctx.skip() is counted by vitest's JSON report as pending).
node -e '
  const fs = require("fs");
  const rs = process.argv.slice(1).map((f) => JSON.parse(fs.readFileSync(f, "utf8")));
  const sum = (k) => rs.reduce((n, r) => n + (r[k] ?? 0), 0);
  console.log(`tests: ${sum("numPassedTests")} passed, ${sum("numFailedTests")} failed, ${sum("numPendingTests") + sum("numTodoTests")} skipped`);
' "$r1" "$r2" || true
rm -f "$r1" "$r2"
exit $status
