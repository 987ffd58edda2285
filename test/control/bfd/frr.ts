/** FRR's bfdd in a namespace across a veth (10.90.0.2 there, 10.90.0.1 here): the independent BFD peer of the tests. */
import { execFileSync, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { type Skippable, needRoot, needTool } from '../../helpers.js';

// Interop with FRR's bfdd, in a namespace across a veth.
export const FRR_DIR = '/tmp/fpobfd-frr';
const D = FRR_DIR;
export function frrDown(): void {
  for (const f of ['bfdd.pid', 'zebra.pid']) if (existsSync(`${D}/${f}`)) spawnSync('kill', ['-9', readFileSync(`${D}/${f}`, 'utf8').trim()]);
  spawnSync('ip', ['netns', 'del', 'fpobfd']);
  spawnSync('ip', ['link', 'del', 'fpobfd0']);
}
export function frrUp(intervalMs: number): void {
  frrDown();
  rmSync(D, { recursive: true, force: true });
  mkdirSync(D, { recursive: true });
  const frr = Number(execFileSync('id', ['-u', 'frr'], { encoding: 'utf8' }));
  const gid = Number(execFileSync('id', ['-g', 'frr'], { encoding: 'utf8' }));
  chownSync(D, frr, gid);
  writeFileSync(`${D}/bfdd.conf`, `bfd\n peer 10.90.0.1 local-address 10.90.0.2\n  receive-interval ${intervalMs}\n  transmit-interval ${intervalMs}\n  detect-multiplier 3\n !\n!\n`);
  writeFileSync(`${D}/zebra.conf`, '\n');
  for (const f of ['bfdd.conf', 'zebra.conf']) chownSync(`${D}/${f}`, frr, gid);
  execFileSync('sh', ['-c', [
    'ip netns add fpobfd', 'ip link add fpobfd0 type veth peer name fpobfd1', 'ip link set fpobfd1 netns fpobfd',
    'ip addr add 10.90.0.1/24 dev fpobfd0', 'ip link set fpobfd0 up', 'ip -n fpobfd addr add 10.90.0.2/24 dev fpobfd1',
    'ip -n fpobfd link set fpobfd1 up', 'ip -n fpobfd link set lo up',
    `ip netns exec fpobfd /usr/lib/frr/zebra -d -u frr -g frr -z ${D}/zserv.api -i ${D}/zebra.pid --vty_socket ${D} -f ${D}/zebra.conf`,
    'sleep 0.5',
    `ip netns exec fpobfd /usr/lib/frr/bfdd -d -u frr -g frr -z ${D}/zserv.api -i ${D}/bfdd.pid --vty_socket ${D} -f ${D}/bfdd.conf`,
  ].join(' && ')], { stdio: ['ignore', 'pipe', 'pipe'] });
}
export const frrPeer = (): Record<string, unknown> => {
  try {
    return JSON.parse(execFileSync('ip', ['netns', 'exec', 'fpobfd', 'vtysh', '--vty_socket', D, '-c', 'show bfd peers json'], { encoding: 'utf8' }))[0] ?? {};
  } catch { return {}; }
};

/** FRR's tests need root (a namespace), ip, and FRR's zebra, bfdd and vtysh: otherwise skipped (a failure under CI=true). */
export function needFrr(ctx: Skippable): void {
  needRoot(ctx, 'FRR runs in a namespace');
  needTool(ctx, 'ip', 'makes the namespace and the veth');
  for (const t of ['/usr/lib/frr/zebra', '/usr/lib/frr/bfdd', 'vtysh']) needTool(ctx, t, 'FRR (Debian frr) is the independent BFD peer');
}
