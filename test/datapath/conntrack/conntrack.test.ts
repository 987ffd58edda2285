import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { PacketBatch } from '../../../datapath/batch.js';
import { CS_EST, CS_INV, CS_NEW, CS_REL, CS_RPL, CS_TRK, ConnTrack, DEFAULT_TIMEOUTS } from '../../../datapath/conntrack/conntrack.js';
import { FIRST, parsedOne } from './frames.js';
import { concat, eth, icmpEcho, ipv4, ipv6, udp } from '../../../fixtures/packets.js';

// Packets are built here, parsed by fpo's parser into a batch, and tracked one batch at a time.

const A = '10.0.0.1';
const B = '10.0.0.2';

interface Seg { from: 'a' | 'b'; seq: number; ack?: number; flags: string; win?: number; len?: number; wscale?: number }

const FLAG_BITS: Record<string, number> = { F: 0x01, S: 0x02, R: 0x04, P: 0x08, A: 0x10, U: 0x20 };

/** A TCP segment between A:1000 and B:80 (from a or b), with its sequence numbers, flags ("SA", "A", "FA", "R"), window and options. */
function tcpFrame(s: Seg): Uint8Array {
  const opts = s.wscale !== undefined ? Uint8Array.of(1, 3, 3, s.wscale) : new Uint8Array(0);
  const h = new Uint8Array(20 + opts.length);
  const dv = new DataView(h.buffer);
  dv.setUint16(0, s.from === 'a' ? 1000 : 80);
  dv.setUint16(2, s.from === 'a' ? 80 : 1000);
  dv.setUint32(4, s.seq >>> 0);
  dv.setUint32(8, (s.ack ?? 0) >>> 0);
  h[12] = (h.length / 4) << 4;
  h[13] = [...s.flags].reduce((f, c) => f | FLAG_BITS[c], 0);
  dv.setUint16(14, s.win ?? 65535);
  h.set(opts, 20);
  const seg = concat(h, new Uint8Array(s.len ?? 0));
  return eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: s.from === 'a' ? A : B, dst: s.from === 'a' ? B : A, proto: 6 }, seg));
}

/** Tracks frames in order, one a batch, at time `now` (ms); returns each one's ct_state. */
function track(ct: ConnTrack, frames: Uint8Array[], opts: { zone?: number; commit?: boolean; now?: number } = {}): number[] {
  const b = new PacketBatch(1);
  return frames.map((f) => {
    parsedOne(f, b);
    expect(b.drop[0]).toBe(0);
    ct.process(b, FIRST, 1, opts.zone ?? 0, opts.commit ?? true, opts.now ?? 1000);
    return b.ctState[0];
  });
}

const NEW = CS_TRK | CS_NEW;
const EST = CS_TRK | CS_EST;
const RPL = CS_TRK | CS_EST | CS_RPL;
const INV = CS_TRK | CS_INV;
const names = (states: number[]) => states.map((s) => ['new', 'est', 'rel', 'rpl', 'inv', 'trk'].filter((_, k) => (s & (1 << k)) !== 0).join('+'));

/** A handshake and a little data: a's ISN 1000, b's 5000. */
const handshake: Seg[] = [
  { from: 'a', seq: 1000, flags: 'S', wscale: 7 },
  { from: 'b', seq: 5000, ack: 1001, flags: 'SA', wscale: 7 },
  { from: 'a', seq: 1001, ack: 5001, flags: 'A', win: 512 },
];

describe('ConnTrack: TCP', () => {
  it('a handshake, data both ways and a FIN close: new, then est+rpl for replies and est once a reply was seen; closed both ways at the end', () => {
    const ct = new ConnTrack({ capacity: 16 });
    const segs: Seg[] = [...handshake,
      { from: 'a', seq: 1001, ack: 5001, flags: 'PA', len: 100, win: 512 },
      { from: 'b', seq: 5001, ack: 1101, flags: 'PA', len: 300, win: 512 },
      { from: 'a', seq: 1101, ack: 5301, flags: 'FA', win: 512 },
      { from: 'b', seq: 5301, ack: 1102, flags: 'FA', win: 512 },
      { from: 'a', seq: 1102, ack: 5302, flags: 'A', win: 512 },
    ];
    expect(names(track(ct, segs.map(tcpFrame)))).toEqual(names([NEW, RPL, EST, EST, RPL, EST, RPL, EST]));
    const [c] = ct.list(1000);
    expect(c.orig).toEqual({ src: A, dst: B, sport: 1000, dport: 80 });
    expect(c.reply).toEqual({ src: B, dst: A, sport: 80, dport: 1000 });
    expect(c.state).toBe('FIN_WAIT_2:FIN_WAIT_2');
    expect(c.packets).toEqual([5, 3]);
    expect(c.bytes).toEqual([5 * 40 + 4 + 100, 3 * 40 + 4 + 300]); // IP lengths: 40-byte headers, 4 of options on each SYN, the data
    expect(c.expiresInMs).toBe(DEFAULT_TIMEOUTS.tcpClosed);
  });

  it('without commit nothing is kept: the SYN is new each time; with commit it stays', () => {
    const ct = new ConnTrack({ capacity: 16 });
    const syn = tcpFrame(handshake[0]);
    expect(track(ct, [syn, syn], { commit: false })).toEqual([NEW, NEW]);
    expect(ct.count).toBe(0);
    expect(track(ct, [syn])).toEqual([NEW]);
    expect(ct.count).toBe(1);
    expect(track(ct, [tcpFrame(handshake[1])], { commit: false })).toEqual([RPL]); // a reply needs no commit
  });

  it('out-of-window data, a reset with the wrong sequence number and flags no TCP sends are inv, and change nothing', () => {
    const ct = new ConnTrack({ capacity: 16 });
    track(ct, handshake.map(tcpFrame));
    const bad = track(ct, [
      { from: 'a', seq: 1001 + 512 * 128 + 10_000, ack: 5001, flags: 'PA', len: 100 }, // past b's scaled window (512 << 7)
      { from: 'a', seq: 1001 - 200_000, ack: 5001, flags: 'PA', len: 100 }, // more than a window behind
      { from: 'b', seq: 5000 + 70_000, ack: 1001, flags: 'R' }, // reset far from what b sent
      { from: 'a', seq: 1001, ack: 5001, flags: 'SF' }, // SYN+FIN
      { from: 'a', seq: 1001, ack: 0, flags: 'P', len: 10 }, // data without ACK
    ].map((s) => tcpFrame(s as Seg)));
    expect(names(bad)).toEqual(names([INV, INV, INV, INV, INV]));
    expect(ct.stats.invalid).toBe(5);
    // The connection goes on as if they had not come.
    expect(track(ct, [tcpFrame({ from: 'a', seq: 1001, ack: 5001, flags: 'PA', len: 10, win: 512 }), tcpFrame({ from: 'b', seq: 5001, ack: 1011, flags: 'A', win: 512 })])).toEqual([EST, RPL]);
    expect(ct.list(1000)[0].state).toBe('ESTABLISHED:ESTABLISHED');
    // A reset at exactly the next sequence number ends it.
    expect(track(ct, [tcpFrame({ from: 'b', seq: 5001, ack: 1011, flags: 'RA' })])).toEqual([RPL]);
    expect(ct.list(1000)[0].state).toBe('TIME_WAIT:TIME_WAIT');
  });

  it('a SYN+ACK does not start a connection, even with commit; a stream met mid-way does, with the window scale unknown', () => {
    const ct = new ConnTrack({ capacity: 16 });
    expect(track(ct, [tcpFrame(handshake[1])])).toEqual([INV]);
    expect(ct.count).toBe(0);
    const mid = [
      { from: 'a', seq: 77_000, ack: 99_000, flags: 'PA', len: 1000, win: 300 },
      { from: 'b', seq: 99_000, ack: 78_000, flags: 'A', win: 300 },
      { from: 'a', seq: 78_000, ack: 99_000, flags: 'PA', len: 1000, win: 300 },
    ] as Seg[];
    expect(track(ct, mid.map(tcpFrame))).toEqual([NEW, RPL, EST]);
    expect(ct.count).toBe(1);
  });

  it('a FIN or a reset with no connection starts none, as in Linux: inv, nothing kept, even with commit', () => {
    const ct = new ConnTrack({ capacity: 16 });
    const ends = [
      { from: 'a', seq: 77_000, ack: 99_000, flags: 'FA' },
      { from: 'b', seq: 99_000, ack: 77_001, flags: 'FA' },
      { from: 'a', seq: 77_001, ack: 99_001, flags: 'RA' },
      { from: 'a', seq: 77_001, flags: 'R' },
    ] as Seg[];
    expect(track(ct, ends.map(tcpFrame))).toEqual([INV, INV, INV, INV]);
    expect(ct.count).toBe(0);
    // The last ACK of such a close is a plain ACK: that one is picked up (Linux does the same).
    expect(track(ct, [tcpFrame({ from: 'a', seq: 77_001, ack: 99_001, flags: 'A' })])).toEqual([NEW]);
    expect(ct.count).toBe(1);
  });

  it('a reset as a side\'s first segment counts only when it acks what the other side sent (a refused SYN), not from anyone (review finding)', () => {
    const ct = new ConnTrack({ capacity: 16 });
    // A refused connection: the SYN, then RST+ACK acking ISN + 1.
    expect(track(ct, [tcpFrame({ from: 'a', seq: 1000, flags: 'S' }), tcpFrame({ from: 'b', seq: 0, ack: 1001, flags: 'RA' })])).toEqual([NEW, RPL]);
    expect(ct.list(1000)[0].state).toBe('TIME_WAIT:TIME_WAIT');
    // An adopted connection (windows unknown): a reset with any sequence number from an end not yet heard is inv.
    const ct2 = new ConnTrack({ capacity: 16 });
    const t = new Uint32Array([(6 << 8) | 4, 0x0a000001, 0, 0, 0, 0x0a000002, 0, 0, 0, ((1000 << 16) | 80) >>> 0]);
    const r = new Uint32Array([(6 << 8) | 4, 0x0a000002, 0, 0, 0, 0x0a000001, 0, 0, 0, ((80 << 16) | 1000) >>> 0]);
    expect(ct2.adopt(t, r, 1000, 60_000)).toBe(0);
    expect(track(ct2, [tcpFrame({ from: 'b', seq: 0xdeadbeef, ack: 12345, flags: 'RA' }), tcpFrame({ from: 'b', seq: 0xdeadbeef, flags: 'R' })])).toEqual([INV, INV]);
    expect(ct2.list(1000)[0].state).toBe('CLOSED:CLOSED');
    // Its own traffic goes on as established.
    expect(track(ct2, [tcpFrame({ from: 'a', seq: 555, ack: 777, flags: 'PA', len: 10 }), tcpFrame({ from: 'b', seq: 777, ack: 565, flags: 'A' })])).toEqual([EST, RPL]);
  });

  it('a SYN after both sides closed reopens: the old connection goes, a new one starts', () => {
    const ct = new ConnTrack({ capacity: 16 });
    track(ct, ([...handshake,
      { from: 'a', seq: 1001, ack: 5001, flags: 'FA', win: 512 },
      { from: 'b', seq: 5001, ack: 1002, flags: 'FA', win: 512 },
      { from: 'a', seq: 1002, ack: 5002, flags: 'A', win: 512 },
    ] as Seg[]).map(tcpFrame));
    expect(track(ct, [tcpFrame({ from: 'a', seq: 90_000, flags: 'S' }), tcpFrame({ from: 'b', seq: 7000, ack: 90_001, flags: 'SA' })])).toEqual([NEW, RPL]);
    expect(ct.stats.reopened).toBe(1);
    expect(ct.count).toBe(1);
    expect(ct.list(1000)[0].state).toBe('ESTABLISHED:SYN_SENT'); // a's SYN acked by b's SYN+ACK; b's not yet acked
  });

  it('property: retransmissions and reordering within the windows are never inv; a segment past the receiver\'s window always is and changes nothing', () => {
    fc.assert(fc.property(fc.array(fc.integer({ min: 1, max: 1400 }), { minLength: 2, maxLength: 30 }), fc.integer({ min: 0, max: 0xffffffff }), fc.array(fc.nat(), { maxLength: 10 }), fc.integer({ min: 1, max: 1_000_000 }), (lens, isn, picks, beyond) => {
      const ct = new ConnTrack({ capacity: 4 });
      const a0 = isn >>> 0;
      // No window scaling; b's window 65535, a sends the segments, b acks the last in order.
      const segs: Seg[] = [{ from: 'a', seq: a0, flags: 'S' }, { from: 'b', seq: 5000, ack: (a0 + 1) >>> 0, flags: 'SA' }, { from: 'a', seq: (a0 + 1) >>> 0, ack: 5001, flags: 'A' }];
      let seq = (a0 + 1) >>> 0;
      const data: Seg[] = [];
      let sent = 0;
      for (const len of lens) {
        if (sent + len > 60_000) break;
        data.push({ from: 'a', seq, ack: 5001, flags: 'PA', len });
        seq = (seq + len) >>> 0;
        sent += len;
      }
      // In order, with earlier segments sent again (and out of order) among them.
      const order = [...data];
      for (const p of picks) order.splice(p % (order.length + 1), 0, data[p % data.length]);
      const states = track(ct, [...segs, ...order].map(tcpFrame));
      expect(states.slice(3).every((s) => s === EST)).toBe(true);
      // b acks it all with its window; a segment starting past that window is inv.
      expect(track(ct, [tcpFrame({ from: 'b', seq: 5001, ack: seq, flags: 'A' })])).toEqual([RPL]);
      expect(track(ct, [tcpFrame({ from: 'a', seq: (seq + 65535 + beyond) >>> 0, ack: 5001, flags: 'PA', len: 100 })])).toEqual([INV]);
      expect(track(ct, [tcpFrame({ from: 'a', seq, ack: 5001, flags: 'PA', len: 100 })])).toEqual([EST]);
    }), { numRuns: 300 });
  });
});

describe('ConnTrack: UDP, ICMP, zones, expiry, capacity', () => {
  const u = (from: 'a' | 'b', data = 10) => eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: from === 'a' ? A : B, dst: from === 'a' ? B : A, proto: 17 }, udp(from === 'a' ? 5353 : 53, from === 'a' ? 53 : 5353, new Uint8Array(data))));

  it('UDP: new until a reply, est+rpl for replies, est after; expired after its timeout, then new again', () => {
    const ct = new ConnTrack({ capacity: 16 });
    expect(track(ct, [u('a'), u('a'), u('b'), u('a')], { now: 1000 })).toEqual([NEW, NEW, RPL, EST]);
    expect(ct.list(1000)[0].state).toBe('BIDIR');
    expect(ct.list(1000)[0].expiresInMs).toBe(DEFAULT_TIMEOUTS.otherBidir);
    expect(track(ct, [u('a')], { now: 1000 + DEFAULT_TIMEOUTS.otherBidir - 1 })).toEqual([EST]);
    const later = 1000 + 2 * DEFAULT_TIMEOUTS.otherBidir;
    expect(track(ct, [u('b')], { now: later, commit: false })).toEqual([NEW]); // gone: b's packet is a new connection of its own
    expect(ct.stats.expired).toBe(1);
    expect(ct.count).toBe(0);
  });

  it('ICMP: echo request new, reply est+rpl; a reply with no request inv; an error quoting a tracked packet rel, quoting anything else inv (v4 and v6)', () => {
    const ct = new ConnTrack({ capacity: 16 });
    const echo = (from: 'a' | 'b', type: number, id: number) => eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: from === 'a' ? A : B, dst: from === 'a' ? B : A, proto: 1 }, icmpEcho(type, id, 1)));
    expect(track(ct, [echo('a', 8, 7), echo('b', 0, 7), echo('a', 8, 7), echo('b', 0, 8)])).toEqual([NEW, RPL, EST, INV]);
    // An unreachable from a router (10.0.0.254) to a about a's UDP packet to b: related, in the reply direction.
    track(ct, [u('a')]);
    const quoted = ipv4({ src: A, dst: B, proto: 17 }, udp(5353, 53, new Uint8Array(10))).subarray(0, 28);
    const unreach = (q: Uint8Array) => eth('02:00:00:00:00:01', '02:00:00:00:00:fe', 0x0800, ipv4({ src: '10.0.0.254', dst: A, proto: 1 }, concat(Uint8Array.of(3, 3, 0, 0, 0, 0, 0, 0), q)));
    expect(track(ct, [unreach(quoted)])).toEqual([CS_TRK | CS_REL | CS_RPL]);
    const other = ipv4({ src: A, dst: B, proto: 17 }, udp(5354, 53, new Uint8Array(10))).subarray(0, 28);
    expect(track(ct, [unreach(other)])).toEqual([INV]);
    // IPv6 echo.
    const echo6 = (from: 'a' | 'b', type: number) => eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x86dd, ipv6({ src: from === 'a' ? 'fd00::1' : 'fd00::2', dst: from === 'a' ? 'fd00::2' : 'fd00::1', nh: 58 }, icmpEcho(type, 9, 1)));
    expect(track(ct, [echo6('a', 128), echo6('b', 129)])).toEqual([NEW, RPL]);
  });

  it('zones keep connections apart: the same packets are two connections in two zones', () => {
    const ct = new ConnTrack({ capacity: 16 });
    expect(track(ct, [u('a')], { zone: 1 })).toEqual([NEW]);
    expect(track(ct, [u('b')], { zone: 2, commit: false })).toEqual([NEW]);
    expect(track(ct, [u('b')], { zone: 1 })).toEqual([RPL]);
    expect(ct.flush(2)).toBe(0);
    expect(ct.flush(1)).toBe(1);
  });

  it('a full table refuses a commit (counted) and takes it once expiry has freed room; expiry walks a bounded slice a call', () => {
    const ct = new ConnTrack({ capacity: 100 });
    const flow = (k: number) => eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: A, dst: B, proto: 17 }, udp(10_000 + k, 53, new Uint8Array(4))));
    track(ct, Array.from({ length: 100 }, (_, k) => flow(k)), { now: 0 });
    expect(ct.count).toBe(100);
    expect(track(ct, [flow(100)], { now: 1 })).toEqual([NEW]);
    expect(ct.stats.full).toBe(1);
    expect(ct.expire(DEFAULT_TIMEOUTS.otherFirst + 1, 10)).toBe(10); // ten ids looked at, ten freed
    expect(ct.count).toBe(90);
    expect(track(ct, [flow(100)], { now: DEFAULT_TIMEOUTS.otherFirst + 1 })).toEqual([NEW]);
    expect(ct.count).toBe(91);
  });

  it('property: the index holds exactly the live connections through random commits, expiries and flushes (backward-shift deletion)', () => {
    fc.assert(fc.property(fc.array(fc.tuple(fc.constantFrom('add', 'add', 'add', 'expire', 'flush'), fc.integer({ min: 0, max: 300 })), { maxLength: 400 }), (ops) => {
      const ct = new ConnTrack({ capacity: 64, timeouts: { otherFirst: 10 } });
      const model = new Map<number, number>(); // port → expiry time
      let now = 0;
      const flow = (k: number) => eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: A, dst: B, proto: 17 }, udp(20_000 + k, 53, new Uint8Array(4))));
      for (const [op, k] of ops) {
        now++;
        if (op === 'add') {
          for (const [p, t] of model) if (t <= now) model.delete(p); // what a lookup or expiry may free: gone either way
          const had = model.has(k);
          const [st] = track(ct, [flow(k)], { now });
          if (!had && model.size < 64) model.set(k, now + 10);
          else if (had) expect(st).toBe(NEW); // still no reply: new
        } else if (op === 'expire') ct.expire(now, k % 70);
        else { ct.flush(); model.clear(); }
        for (const [p, t] of model) if (t <= now) model.delete(p);
        const live = new Set(ct.list(now).filter((c) => c.expiresInMs > 0).map((c) => c.orig.sport - 20_000));
        expect([...live].sort((x, y) => x - y)).toEqual([...model.keys()].sort((x, y) => x - y));
      }
      // Every live connection is found by its reply too.
      for (const p of model.keys()) {
        const reply = eth('02:00:00:00:00:01', '02:00:00:00:00:02', 0x0800, ipv4({ src: B, dst: A, proto: 17 }, udp(53, 20_000 + p, new Uint8Array(4))));
        expect(track(ct, [reply], { now, commit: false })).toEqual([RPL]);
      }
    }), { numRuns: 200 });
  });

  it('1 M connections fit in well under 512 MiB: the tables are sized at start and measured', () => {
    const bytes = ConnTrack.bytesFor(1 << 20);
    expect(bytes).toBeLessThan(512 * 1024 * 1024);
    const before = process.memoryUsage().arrayBuffers;
    const ct = new ConnTrack({ capacity: 1 << 20 });
    const grew = process.memoryUsage().arrayBuffers - before;
    expect(Math.abs(grew - bytes)).toBeLessThan(bytes * 0.02); // the tables, give or take what the process freed or made meanwhile
    expect(ct.capacity).toBe(1 << 20);
    console.log(`conntrack: 1 M connections take ${(bytes / 2 ** 20).toFixed(1)} MiB of tables`);
  });
});
