import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { DIAG, STATE, decode, type BfdPacket } from '../../../control/bfd/packet.js';
import { Session } from '../../../control/bfd/session.js';
import { TimerHeap } from '../../../control/bfd/timers.js';

// Fake setTimeout and performance.now: a session's timers (transmit, jitter, detection)
// are checked exactly, on a clock the test moves.
beforeEach(() => { vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance', 'Date'] }); });
afterEach(() => { vi.useRealTimers(); });

/** A session and what it sent: each packet decoded, with the time it left. */
function harness(config: { txUs: number; rxUs: number; detectMult: number }) {
  const timers = new TimerHeap();
  const sent: { t: number; p: BfdPacket }[] = [];
  const changes: { from: number; to: number; why: string }[] = [];
  const t0 = performance.now();
  const s = new Session(0x1111, config, timers, {
    send: (b) => {
      const p = decode(b);
      if (typeof p === 'string') throw new Error(`the session sent a packet it cannot decode: ${p}`);
      sent.push({ t: performance.now() - t0, p });
    },
    change: (_s, from, to, why) => changes.push({ from, to, why }),
  });
  return { s, timers, sent, changes, t0 };
}

/** A packet from the peer (discriminator 0x2222). */
function fromPeer(over: Partial<BfdPacket> = {}): BfdPacket {
  return {
    version: 1, diag: 0, state: STATE.Down, poll: false, final: false, cpi: false, auth: false, demand: false, multipoint: false,
    detectMult: 3, length: 24, myDisc: 0x2222, yourDisc: 0x1111, desiredMinTx: 50_000, requiredMinRx: 50_000, requiredMinEchoRx: 0, ...over,
  };
}

/** Brings the session Up (peer Down, then peer Up, as a three-way handshake does). */
function bringUp(h: ReturnType<typeof harness>, over: Partial<BfdPacket> = {}): void {
  h.s.start();
  h.s.receive(fromPeer({ state: STATE.Down, yourDisc: 0, ...over }));
  expect(h.s.state).toBe(STATE.Init);
  h.s.receive(fromPeer({ state: STATE.Up, ...over }));
  expect(h.s.state).toBe(STATE.Up);
}

/** Keeps the peer talking (a packet every `everyMs`) for `ms`. */
function keepAlive(h: ReturnType<typeof harness>, ms: number, everyMs = 40, over: Partial<BfdPacket> = {}): void {
  for (let t = 0; t < ms; t += everyMs) {
    vi.advanceTimersByTime(everyMs);
    h.s.receive(fromPeer({ state: STATE.Up, ...over }));
  }
}

describe('BFD session transitions (RFC 5880 §6.8.6)', () => {
  it('a peer\'s AdminDown takes an Up session Down with diagnostic 3, "neighbor signaled session down", and says so on the wire', () => {
    const h = harness({ txUs: 50_000, rxUs: 50_000, detectMult: 3 });
    bringUp(h);
    keepAlive(h, 200);
    h.s.receive(fromPeer({ state: STATE.AdminDown, diag: DIAG.administrativelyDown }));
    expect(h.s.state).toBe(STATE.Down);
    expect(h.s.diag).toBe(DIAG.neighborSignaledDown);
    expect(h.changes.at(-1)).toMatchObject({ from: STATE.Up, to: STATE.Down });
    expect(h.changes.at(-1)!.why).toMatch(/AdminDown/);
    const n = h.sent.length;
    vi.advanceTimersByTime(1000);
    const after = h.sent.slice(n);
    expect(after.length).toBeGreaterThan(0);
    for (const { p } of after) expect(p).toMatchObject({ state: STATE.Down, diag: DIAG.neighborSignaledDown });
    h.s.stop();
  });

  it('a peer\'s AdminDown takes an Init session Down with diagnostic 3; a Down session stays Down', () => {
    const h = harness({ txUs: 50_000, rxUs: 50_000, detectMult: 3 });
    h.s.start();
    h.s.receive(fromPeer({ state: STATE.Down, yourDisc: 0 }));
    expect(h.s.state).toBe(STATE.Init);
    h.s.receive(fromPeer({ state: STATE.AdminDown }));
    expect(h.s.state).toBe(STATE.Down);
    expect(h.s.diag).toBe(DIAG.neighborSignaledDown);
    const changes = h.changes.length;
    h.s.receive(fromPeer({ state: STATE.AdminDown }));
    expect(h.s.state).toBe(STATE.Down);
    expect(h.changes.length).toBe(changes);
    h.s.stop();
  });

  it('a peer\'s Down takes an Up session Down with diagnostic 3; silence past the detection time, with diagnostic 1', () => {
    const h = harness({ txUs: 50_000, rxUs: 50_000, detectMult: 3 });
    bringUp(h);
    h.s.receive(fromPeer({ state: STATE.Down }));
    expect(h.s.state).toBe(STATE.Down);
    expect(h.s.diag).toBe(DIAG.neighborSignaledDown);
    h.s.receive(fromPeer({ state: STATE.Down }));
    h.s.receive(fromPeer({ state: STATE.Up }));
    expect(h.s.state).toBe(STATE.Up);
    vi.advanceTimersByTime(149);
    expect(h.s.state).toBe(STATE.Up);
    vi.advanceTimersByTime(2);
    expect(h.s.state).toBe(STATE.Down);
    expect(h.s.diag).toBe(DIAG.controlDetectionTimeExpired);
    h.s.stop();
  });
});

describe('BFD transmission (RFC 5880 §6.8.3, §6.8.7)', () => {
  it('a peer\'s Required Min RX Interval of 0 stops our periodic sending; a Poll still gets its Final; a non-zero one restarts it', () => {
    const h = harness({ txUs: 50_000, rxUs: 50_000, detectMult: 3 });
    bringUp(h);
    keepAlive(h, 200);
    h.s.receive(fromPeer({ state: STATE.Up, requiredMinRx: 0 }));
    const n = h.sent.length;
    keepAlive(h, 2000, 40, { requiredMinRx: 0 });
    expect(h.sent.length).toBe(n);
    h.s.receive(fromPeer({ state: STATE.Up, requiredMinRx: 0, poll: true }));
    expect(h.sent.length).toBe(n + 1);
    expect(h.sent.at(-1)!.p.final).toBe(true);
    keepAlive(h, 1000, 40, { requiredMinRx: 0 });
    expect(h.sent.length).toBe(n + 1);
    keepAlive(h, 400, 40, { requiredMinRx: 50_000 });
    expect(h.sent.length).toBeGreaterThanOrEqual(n + 1 + 6);
    h.s.stop();
  });

  it('while not Up it sends at most one packet a second (desired min TX at least 1 s, jittered down to 75 %)', () => {
    const h = harness({ txUs: 50_000, rxUs: 50_000, detectMult: 3 });
    h.s.start();
    vi.advanceTimersByTime(30_000);
    expect(h.s.state).toBe(STATE.Down);
    const gaps = h.sent.slice(1).map((x, i) => x.t - h.sent[i].t);
    expect(gaps.length).toBeGreaterThanOrEqual(29);
    expect(Math.min(...gaps)).toBeGreaterThanOrEqual(750);
    expect(Math.max(...gaps)).toBeLessThanOrEqual(1000);
    for (const { p } of h.sent) expect(p.desiredMinTx).toBeGreaterThanOrEqual(1_000_000);
    // Init too: the peer is heard, the session is not Up yet.
    h.s.receive(fromPeer({ state: STATE.Down, yourDisc: 0, desiredMinTx: 1_000_000 }));
    expect(h.s.state).toBe(STATE.Init);
    const n = h.sent.length;
    for (let i = 0; i < 10; i++) {
      vi.advanceTimersByTime(1000);
      h.s.receive(fromPeer({ state: STATE.Down, yourDisc: 0, desiredMinTx: 1_000_000 }));
    }
    expect(h.s.state).toBe(STATE.Init);
    const init = h.sent.slice(n - 1);
    for (let i = 1; i < init.length; i++) expect(init[i].t - init[i - 1].t).toBeGreaterThanOrEqual(750);
    h.s.stop();
  });

  for (const [mult, lo, hi] of [[3, 0.75, 1.0], [2, 0.75, 1.0], [1, 0.75, 0.9]] as const) {
    it(`transmit intervals are jittered to ${lo * 100}–${hi * 100} % of the interval at detect multiplier ${mult}, spread over that range`, () => {
      const h = harness({ txUs: 50_000, rxUs: 50_000, detectMult: mult });
      bringUp(h);
      // Let the session's first Up-rate packet go, then look at 1000 intervals.
      keepAlive(h, 1200, 10);
      const n = h.sent.length;
      keepAlive(h, 50_000, 10);
      const periodic = h.sent.slice(n).filter(({ p }) => !p.final);
      const gaps = periodic.slice(1).map((x, i) => (x.t - periodic[i].t) / 50);
      expect(gaps.length).toBeGreaterThan(900);
      expect(Math.min(...gaps)).toBeGreaterThanOrEqual(lo);
      expect(Math.max(...gaps)).toBeLessThanOrEqual(hi);
      // Spread: not a constant interval inside the range.
      expect(Math.min(...gaps)).toBeLessThan(lo + 0.02);
      expect(Math.max(...gaps)).toBeGreaterThan(hi - 0.02);
      h.s.stop();
    });
  }
});
