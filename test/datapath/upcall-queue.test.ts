/**
 * Asynchronous upcalls (Datapath.upcallAsync, datapath/upcall-queue.ts): the
 * FPAG's real decisions, answered when a test says so (the way its thread
 * answers: later, in order), so that which batch an answer lands before is
 * chosen, not raced. The thread itself: test/control/replay.test.ts.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Fpag } from '../../control/fpag.js';
import { topologyFrom, type TopologyInput } from '../../control/topology.js';
import { PacketBatch } from '../../datapath/batch.js';
import { KEY_WORDS } from '../../datapath/classifier/flow-key.js';
import { Datapath, type AsyncUpcalls, type TxPort } from '../../datapath/datapath.js';
import type { UpcallBatch } from '../../datapath/upcall.js';
import { concat, eth, ipv4, udp } from '../../fixtures/packets.js';

/** An FPAG that answers the keys handed over when told: answerOne (the oldest request), answer (all); waitOne answers the oldest. */
class Later implements AsyncUpcalls {
  private readonly pending: UpcallBatch[] = [];
  private submitted = 0;
  private answered = 0;
  waits = 0;
  constructor(private readonly decide: (u: UpcallBatch) => void) {}
  keys = 0;
  submit(u: UpcallBatch): number {
    this.keys += u.count;
    this.pending.push({ type: 'upcalls', count: u.count, inPpid: u.inPpid.slice(0, u.count), keys: u.keys.slice(0, u.count * KEY_WORDS), covered: 0, continues: false, entries: false, entry: new Int32Array(u.count), partial: false, answered: 0, whole: false });
    return (this.submitted += u.count);
  }
  poll(): number { return this.answered; }
  waitOne(): number {
    this.waits++;
    this.answerOne();
    return this.answered;
  }
  answerOne(): void {
    const u = this.pending.shift();
    if (u === undefined) return;
    this.decide(u);
    this.answered += u.count;
  }
  answer(): void { while (this.pending.length > 0) this.answerOne(); }
}

class Keep implements TxPort {
  frames: Uint8Array[] = [];
  writeBatch(batch: PacketBatch, idx: Uint16Array, from: number, n: number): void {
    for (let j = from; j < from + n; j++) this.frames.push(batch.buf.slice(batch.off[idx[j]], batch.off[idx[j]] + batch.caplen[idx[j]]));
  }
}

// Client (port 1) to server (port 2), UDP; a rule on tp_src puts the source port in every megaflow
// ("rule-fields"): each source port is a flow of its own. A packet: [connection, its number].
const topo = topologyFrom({
  ports: [{ name: 'p1', ppid: 1 }, { name: 'p2', ppid: 2 }],
  segments: [{ name: 'a' }],
  nodes: [
    { name: 'client', interfaces: [{ name: 'client', mac: '02:00:00:00:00:01', ip: '10.0.0.1', segment: 'a', port: 'p1' }] },
    { name: 'server', interfaces: [{ name: 'server', mac: '02:00:00:00:00:02', ip: '10.0.0.2', segment: 'a', port: 'p2' }] },
  ],
  rules: [{ priority: 10, match: { eth_type: '0x0800', ip_proto: 17, tp_src: 7 }, actions: ['drop'] }],
  wildcarding: 'rule-fields',
} as TopologyInput, 'async.json');
// (A packet's size: 46 bytes and up to 1400 more by its connection and number, so the queue's bytes wrap in the tests that make it small.)
const frame = (conn: number, n: number, big = false) => eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '10.0.0.1', dst: '10.0.0.2', proto: 17 }, udp(1000 + conn, 9, Uint8Array.from({ length: big ? 4 + ((conn * 397 + n * 131) % 1400) : 4 }, (_, k) => (k === 0 ? n : 0)))));
const label = (f: Uint8Array) => `${(f[34] << 8 | f[35]) - 1000}.${f[42]}`;

function switchOf(async: boolean, opts: { queue?: number; bytes?: number; big?: boolean } = {}) {
  const dp = new Datapath({ maxFlows: 1024, batchCapacity: 32, upcallQueuePackets: opts.queue, upcallQueueBytes: opts.bytes });
  const server = new Keep();
  dp.addPort(1, new Keep());
  dp.addPort(2, server);
  new Fpag(topo, dp).start();
  let later: Later | null = null;
  if (async) {
    later = new Later(dp.upcallBatchSink!);
    dp.upcallBatchSink = null;
    dp.upcallAsync = later;
  }
  const batch = new PacketBatch(32);
  let now = 1000;
  const send = (pkts: [number, number][]): string[] => {
    server.frames = [];
    const frames = pkts.map(([c, n]) => frame(c, n, opts.big));
    batch.batchSetBuffer(concat(...frames));
    batch.count = frames.length;
    let o = 0;
    frames.forEach((f, i) => {
      batch.off[i] = o; batch.caplen[i] = f.length; batch.wirelen[i] = f.length; batch.inPpid[i] = 1; batch.drop[i] = 0;
      o += f.length;
    });
    dp.process(batch, (now += 1));
    return server.frames.map(label);
  };
  const drain = (): string[] => {
    server.frames = [];
    dp.drainUpcalls(now);
    return server.frames.map(label);
  };
  return { dp, later: later!, send, drain, server };
}

describe('asynchronous upcalls: the upcall queue', () => {
  it('a miss waits in the queue while the hits behind it go on; it goes out when its answer has come, before the next batch', () => {
    const { dp, later, send } = switchOf(true);
    expect(send([[2, 1]])).toEqual([]); // B1: new, parked
    later.answer();
    // B1 leaves first; then A1 (new) waits, and B2, B3 (B's flow is in) overtake it.
    expect(send([[1, 1], [2, 2], [2, 3]])).toEqual(['2.1', '2.2', '2.3']);
    later.answer();
    expect(send([[2, 4]])).toEqual(['1.1', '2.4']);
    const st = dp.stats();
    expect(st.packetsIn).toBe(5);
    expect(st.delivered).toBe(5);
    expect(st.dropped).toBe(0);
    expect(dp.upcallQueueStats().parked).toBe(2);
  });

  it('a connection\'s packets never overtake each other: a hit of a key with a packet parked waits behind it; a key waiting for its answer is not handed over again', () => {
    const { dp, later, send } = switchOf(true);
    expect(send([[1, 1]])).toEqual([]); // A1 parked: A's key in request 1
    expect(send([[2, 1], [1, 2]])).toEqual([]); // B1 parked (request 2); A2 waits for A's key (not handed over again), behind B1
    expect(later.keys).toBe(2);
    later.answerOne(); // A's flow is in; request 2 not answered
    expect(send([[1, 3]])).toEqual(['1.1']); // A1 leaves; A3 hits A but waits behind A2
    later.answer();
    expect(send([])).toEqual(['2.1', '1.2', '1.3']);
    expect(dp.stats().delivered).toBe(4);
    expect(dp.stats().upcalls).toBe(2);
  });

  it('a half-full queue makes the datapath wait for answers between batches (nothing dropped); the end of a run switches what waits', () => {
    const { dp, later, send, drain } = switchOf(true, { queue: 64 });
    const out: string[] = [];
    for (let b = 0; b < 6; b++) out.push(...send(Array.from({ length: 20 }, (_, k) => [b * 20 + k, 1] as [number, number])));
    expect(later.waits).toBeGreaterThan(0);
    out.push(...drain());
    expect(out.length).toBe(120);
    expect(new Set(out).size).toBe(120);
    const st = dp.stats();
    expect(st.packetsIn).toBe(120);
    expect(st.delivered + st.dropped).toBe(120);
    expect(st.dropped).toBe(0);
  });

  it('the queue is a ring: 800 new connections of frames up to 1.4 KB through a queue of 64 packets and 128 KiB (its slots and bytes round several times), each frame out once and intact', () => {
    const { dp, later, send, drain, server } = switchOf(true, { queue: 64, bytes: 1, big: true });
    const out: string[] = [];
    // The bytes out are the bytes in (a packet copied across the arena's end, or over another's, would differ).
    const intact = () => { for (const f of server.frames) expect(Buffer.from(f).equals(Buffer.from(frame(Number(label(f).split('.')[0]), 1, true))), label(f)).toBe(true); };
    for (let b = 0; b < 40; b++) {
      out.push(...send(Array.from({ length: 20 }, (_, k) => [b * 20 + k, 1] as [number, number])));
      intact();
      if (b % 3 === 2) later.answerOne();
    }
    out.push(...drain());
    intact();
    expect(later.waits).toBeGreaterThan(0);
    expect(out.length).toBe(800);
    expect(new Set(out).size).toBe(800);
    const st = dp.stats();
    expect(st.packetsIn).toBe(800);
    expect(st.delivered).toBe(800);
    expect(dp.upcallQueueStats().parked).toBe(800);
  });

  it('random batches and answer times: every packet out once, each connection in order, the same per-flow counts as an FPAG waited for (property; the queue\'s slots and bytes wrap round)', () => {
    fc.assert(fc.property(
      fc.array(fc.tuple(fc.array(fc.nat(5), { maxLength: 12 }), fc.constantFrom('none', 'one', 'all')), { minLength: 1, maxLength: 12 }),
      fc.boolean(),
      (steps, big) => {
        // The queue a ring of 64 packets; with big frames, of its least bytes (128 KiB: ~180 of 730 bytes): both wrap.
        const a = switchOf(true, { queue: 64, ...(big ? { bytes: 1, big } : {}) });
        const s = switchOf(false, { big });
        const next = new Map<number, number>();
        const got: string[] = [];
        const ref: string[] = [];
        for (const [conns, ans] of steps) {
          const pkts = conns.map((c) => { const n = (next.get(c) ?? 0) + 1; next.set(c, n); return [c, n] as [number, number]; });
          got.push(...a.send(pkts));
          ref.push(...s.send(pkts));
          if (ans === 'one') a.later.answerOne();
          if (ans === 'all') a.later.answer();
        }
        got.push(...a.drain());
        expect([...got].sort()).toEqual([...ref].sort());
        for (const c of next.keys()) {
          const of = (l: string[]) => l.filter((x) => x.startsWith(`${c}.`));
          expect(of(got)).toEqual(of(ref)); // in order: 1, 2, 3, …
        }
        const flows = (d: Datapath) => d.dumpFlows().map((f) => `${[...f.key]} ${f.packets} ${f.bytes}`).sort();
        expect(flows(a.dp)).toEqual(flows(s.dp));
        const st = a.dp.stats();
        expect(st.packetsIn).toBe(ref.length);
        expect(st.delivered).toBe(ref.length);
      },
    ), { numRuns: 150 });
  });
});
