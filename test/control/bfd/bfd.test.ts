import { execFileSync, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { BfdEndpoint } from '../../../control/bfd/endpoint.js';
import { DIAG, STATE, decode, encode } from '../../../control/bfd/packet.js';
import { haveTool } from '../../helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (cond()) return true; await sleep(20); }
  return cond();
}

function packet(over: Partial<Record<string, number | boolean>> = {}): Uint8Array {
  const b = new Uint8Array(24);
  encode({ diag: 0, state: STATE.Up, poll: false, final: false, cpi: false, demand: false, detectMult: 3, myDisc: 7, yourDisc: 9, desiredMinTx: 300000, requiredMinRx: 300000, requiredMinEchoRx: 0, ...over } as never, b);
  return b;
}

describe('BFD packets (RFC 5880 §4.1, §6.8.6)', () => {
  it('encode then decode gives the packet back', () => {
    const p = decode(packet({ poll: true, diag: DIAG.pathDown }));
    expect(typeof p).toBe('object');
    expect(p).toMatchObject({ version: 1, state: STATE.Up, poll: true, final: false, diag: DIAG.pathDown, detectMult: 3, myDisc: 7, yourDisc: 9, desiredMinTx: 300000 });
  });
  it('each malformed packet is discarded with its reason', () => {
    const b = packet(); b[0] = (2 << 5); expect(decode(b)).toBe('version');
    expect(decode(packet().subarray(0, 20))).toBe('short');
    expect(decode(packet({ detectMult: 0 }))).toBe('detectMult');
    expect(decode(packet({ myDisc: 0 }))).toBe('myDisc');
    expect(decode(packet({ yourDisc: 0 }))).toBe('yourDisc');
    expect(decode(packet({ yourDisc: 0, state: STATE.Down }))).toMatchObject({ state: STATE.Down });
    const l = packet(); l[3] = 40; expect(decode(l)).toBe('length');
    const m = packet(); m[1] |= 1; expect(decode(m)).toBe('multipoint');
    const a = packet(); a[1] |= 4; a[3] = 24; expect(decode(a)).toBe('length');
  });
  it('random bytes never throw: a packet or a reason (property)', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 80 }), (b) => {
      const r = decode(b);
      expect(typeof r === 'string' || typeof r === 'object').toBe(true);
    }), { numRuns: 2000 });
  });
});

describe('BFD sessions between two fpo endpoints', () => {
  it('come Up, follow a Poll/Final interval change, and detect a dead peer within the detection time', async () => {
    const a = new BfdEndpoint('127.0.0.1', 23784);
    const b = new BfdEndpoint('127.0.0.2', 23784);
    await a.listen();
    await b.listen();
    try {
      const sa = await a.add('127.0.0.2', { txUs: 50_000, rxUs: 50_000, detectMult: 3 }, 23784);
      const sb = await b.add('127.0.0.1', { txUs: 50_000, rxUs: 50_000, detectMult: 3 }, 23784);
      expect(await until(() => sa.state === STATE.Up && sb.state === STATE.Up, 5000)).toBe(true);
      // Poll/Final: A slows to 100 ms; B learns it once the sequence completes.
      sa.setIntervals(100_000, 100_000);
      expect(await until(() => sb.remoteDesiredTxUs === 100_000, 2000)).toBe(true);
      expect(await until(() => !(sa as unknown as { pollPending: boolean }).pollPending, 2000)).toBe(true);
      // B dies: A goes Down after remote detect mult × max(A's rx, B's tx) = 3 × 100 ms, plus at most 10 %.
      let lastRx = 0;
      const recv = sa.receive.bind(sa);
      sa.receive = (p) => { lastRx = performance.now(); recv(p); };
      await sleep(300);
      let downAt = 0;
      a.onChange = (_p, _s, _f, to) => { if (to === 'Down') downAt = performance.now(); };
      await b.close();
      expect(await until(() => sa.state === STATE.Down, 2000)).toBe(true);
      expect(sa.diag).toBe(DIAG.controlDetectionTimeExpired);
      expect(downAt - lastRx).toBeLessThanOrEqual(300 * 1.1);
      expect(downAt - lastRx).toBeGreaterThanOrEqual(290);
    } finally {
      await a.close();
    }
  }, 30_000);
});

// Interop with FRR's bfdd, in a namespace across a veth.
const D = '/tmp/fpobfd-frr';
function frrDown(): void {
  for (const f of ['bfdd.pid', 'zebra.pid']) if (existsSync(`${D}/${f}`)) spawnSync('kill', ['-9', readFileSync(`${D}/${f}`, 'utf8').trim()]);
  spawnSync('ip', ['netns', 'del', 'fpobfd']);
  spawnSync('ip', ['link', 'del', 'fpobfd0']);
}
function frrUp(intervalMs: number): void {
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
const frrPeer = (): Record<string, unknown> => {
  try {
    return JSON.parse(execFileSync('ip', ['netns', 'exec', 'fpobfd', 'vtysh', '--vty_socket', D, '-c', 'show bfd peers json'], { encoding: 'utf8' }))[0] ?? {};
  } catch { return {}; }
};
afterAll(frrDown);

function canRunFrr(): boolean {
  if (process.getuid?.() !== 0) {
    if (process.env.CI === 'true') throw new Error('the FRR interop test needs root (CI=true: a skip is a failure)');
    console.warn('SKIP: the FRR interop test needs root');
    return false;
  }
  return haveTool('ip', 'namespaces') && haveTool('vtysh', 'FRR (Debian frr) is the independent BFD peer') && existsSync('/usr/lib/frr/bfdd');
}

describe('interop with FRR bfdd', () => {
  for (const ms of [300, 50]) {
    it(`reaches Up with FRR, detects FRR's death within 3 × ${ms} ms + 10 %, and FRR accepts a Poll/Final interval change and sees our AdminDown`, async () => {
      if (!canRunFrr()) return;
      frrUp(ms);
      const a = new BfdEndpoint('10.90.0.1');
      await a.listen();
      try {
        const s = await a.add('10.90.0.2', { txUs: ms * 1000, rxUs: ms * 1000, detectMult: 3 });
        expect(await until(() => s.state === STATE.Up && frrPeer().status === 'up', 15_000), JSON.stringify(frrPeer())).toBe(true);
        // Poll/Final: a new interval, accepted by FRR.
        s.setIntervals(ms * 2000, ms * 2000);
        expect(await until(() => frrPeer()['remote-transmit-interval'] === ms * 2, 5000), JSON.stringify(frrPeer())).toBe(true);
        s.setIntervals(ms * 1000, ms * 1000);
        expect(await until(() => frrPeer()['remote-transmit-interval'] === ms, 5000)).toBe(true);
        // AdminDown with its diagnostic: FRR shows the session down and why.
        s.adminDown(DIAG.administrativelyDown);
        expect(await until(() => frrPeer().status === 'down', 5000), JSON.stringify(frrPeer())).toBe(true);
        expect(String(frrPeer()['remote-diagnostic'])).toMatch(/administratively/);
        s.adminUp();
        expect(await until(() => s.state === STATE.Up && frrPeer().status === 'up', 15_000)).toBe(true);
        // FRR dies: we go Down within the detection time.
        let lastRx = 0;
        const recv = s.receive.bind(s);
        s.receive = (p) => { lastRx = performance.now(); recv(p); };
        await sleep(500);
        let downAt = 0;
        a.onChange = (_p, _s, _f, to) => { if (to === 'Down' && !downAt) downAt = performance.now(); };
        execFileSync('kill', ['-9', readFileSync(`${D}/bfdd.pid`, 'utf8').trim()]);
        expect(await until(() => s.state === STATE.Down, 5000)).toBe(true);
        expect(downAt - lastRx).toBeLessThanOrEqual(3 * ms * 1.1);
        expect(a.discards).toEqual({});
      } finally {
        await a.close();
        frrDown();
      }
    }, 60_000);
  }
});
