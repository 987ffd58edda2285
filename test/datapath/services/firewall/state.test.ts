import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ConnTrack, DEFAULT_TIMEOUTS, TUPLE_WORDS, allocColumns, type ConnColumns } from '../../../../datapath/conntrack/conntrack.js';
import { FpoError } from '../../../../datapath/errors.js';
import { decodeState, encodeState, type FwState } from '../../../../datapath/services/firewall/module.js';
import { FirewallV1 } from '../../../../datapath/services/firewall/v1/firewall.js';
import { FirewallV2 } from '../../../../datapath/services/firewall/v2/firewall.js';
import { fromV1, toV1 } from '../../../../datapath/services/firewall/v2/transform.js';

const ZONE = 7;
const W = 2 * TUPLE_WORDS;

/** A record: proto, its state, packets each way, ms left; tuples 10.0.0.1:k → 10.0.0.2:80 in ZONE (reply swapped). */
function columns(recs: { proto: number; pstate?: number; tcp?: [number, number]; packets: [number, number]; left: number }[]): ConnColumns {
  const c = allocColumns(recs.length);
  c.n = recs.length;
  recs.forEach((r, k) => {
    const o = k * W;
    const w0 = ((ZONE << 16) | (r.proto << 8) | 4) >>> 0;
    c.tup[o] = w0; c.tup[o + 1] = 0x0a000001; c.tup[o + 5] = 0x0a000002; c.tup[o + 9] = ((1000 + k) << 16) | 80;
    c.tup[o + 10] = w0; c.tup[o + 11] = 0x0a000002; c.tup[o + 15] = 0x0a000001; c.tup[o + 19] = (80 << 16) | (1000 + k);
    c.proto[k] = r.proto;
    c.pstate[k] = r.pstate ?? 0;
    if (r.tcp) { c.tcpState[k * 2] = r.tcp[0]; c.tcpState[k * 2 + 1] = r.tcp[1]; c.seqlo[k * 2] = 100; c.seqhi[k * 2] = 200; c.maxwin[k * 2] = 65535; }
    c.packets[k * 2] = r.packets[0]; c.packets[k * 2 + 1] = r.packets[1];
    c.bytes[k * 2] = r.packets[0] * 100; c.bytes[k * 2 + 1] = r.packets[1] * 100;
    c.expiresIn[k] = r.left;
  });
  return c;
}

const v1State = (cols: ConnColumns): FwState => ({ version: 'v1', format: 1, zone: ZONE, table: null, cols, streamTimeout: 0 });

describe('firewall state: the v1 ⇄ v2 transforms', () => {
  it('v1 → v2: each connection gets the port\'s rule generation; a UDP connection seen both ways twice becomes a STREAM with its time left from when it was last seen; TCP and the rest as they were', () => {
    const c = columns([
      { proto: 17, pstate: 2, packets: [3, 2], left: 20_000 }, // bidir, 10 s idle: a stream, 110 s left
      { proto: 17, pstate: 2, packets: [1, 3], left: 25_000 }, // bidir, one packet out: stays
      { proto: 17, pstate: 1, packets: [4, 0], left: 50_000 }, // multiple: stays
      { proto: 6, tcp: [4, 4], packets: [9, 9], left: 80_000_000 },
      { proto: 1, pstate: 2, packets: [3, 3], left: 10_000 }, // ICMP: no streams
    ]);
    fromV1(c, 9, DEFAULT_TIMEOUTS, DEFAULT_TIMEOUTS);
    expect([...c.pstate.subarray(0, 5)]).toEqual([3, 2, 1, 0, 2]);
    expect([...c.expiresIn.subarray(0, 5)]).toEqual([110_000, 25_000, 50_000, 80_000_000, 10_000]);
    expect([...c.mark.subarray(0, 5)]).toEqual([9, 9, 9, 9, 9]);
    expect([c.tcpState[6], c.tcpState[7], c.seqhi[6]]).toEqual([4, 4, 200]);
  });

  it('v2 → v1: STREAM back to BIDIR with v1\'s timeout from when it was last seen; a stream idle past v1\'s timeout is left out; generations dropped', () => {
    const c = columns([
      { proto: 17, pstate: 3, packets: [3, 3], left: 110_000 }, // 10 s idle: 20 s left under v1
      { proto: 17, pstate: 3, packets: [3, 3], left: 60_000 }, // 60 s idle: expired under v1
      { proto: 6, tcp: [4, 4], packets: [2, 2], left: 1000 },
    ]);
    c.mark.set([1, 2, 3]);
    const out = toV1(c, 120_000, DEFAULT_TIMEOUTS);
    expect(out.n).toBe(2);
    expect([out.pstate[0], out.expiresIn[0]]).toEqual([2, 20_000]);
    expect([out.proto[1], out.expiresIn[1], out.tup[W + 9] >>> 16]).toEqual([6, 1000, 1002]); // the TCP one moved up
    expect([out.mark[0], out.mark[1]]).toEqual([1, 3]); // marks kept (v1 does not read them; a rollback to v2 finds them)
  });

  it('a round trip through the modules, the port\'s table handed over in place (v1 → v2 → v1) and through the binary form (columns), gives v1 back the same connections', () => {
    const v1 = new FirewallV1(64);
    const v2 = new FirewallV2(64, new Uint32Array(65536).fill(4));
    const c = columns([{ proto: 6, tcp: [4, 4], packets: [5, 6], left: 3_600_000 }, { proto: 17, pstate: 1, packets: [2, 0], left: 40_000 }, { proto: 17, pstate: 2, packets: [3, 3], left: 25_000 }]);
    v1.prepare([ZONE]);
    v1.table(ZONE)!.importColumns(c, 1000);
    const before = v1.table(ZONE)!.list(1000, ZONE);
    const s1 = v1.saveState(ZONE, 1000);
    expect(v2.restoreState(ZONE, s1, 'v1', 1000)).toBe(3);
    v1.release(ZONE);
    expect(v2.table(ZONE)!.list(1000, ZONE).map((x) => x.state).sort()).toEqual(['ESTABLISHED:ESTABLISHED', 'MULTIPLE', 'STREAM']);
    expect(v2.ruleGenerationOf(ZONE, v2.table(ZONE)!.list(1000, ZONE)[0].id)).toBe(4);
    // Through bytes: v2's state encoded (format 2, marks), decoded, restored into a fresh v1 from columns.
    const fresh = new FirewallV1(64);
    const st = decodeState(encodeState(v2.saveState(ZONE, 1000), 1000));
    expect(st.format).toBe(2);
    expect(fresh.restoreState(ZONE, st, 'v2', 1000)).toBe(3);
    // In place back to v1.
    const s2 = v2.saveState(ZONE, 1000);
    expect(v1.restoreState(ZONE, s2, 'v2', 1000)).toBe(3);
    v2.release(ZONE);
    const after = v1.table(ZONE)!.list(1000, ZONE);
    expect(fresh.table(ZONE)!.list(1000, ZONE).map((x) => JSON.stringify({ ...x, id: 0 })).sort()).toEqual(after.map((x) => JSON.stringify({ ...x, id: 0 })).sort());
    const strip = (l: typeof before) => l.map(({ id: _id, ...rest }) => JSON.stringify(rest)).sort();
    expect(strip(after)).toEqual(strip(before));
  });
});

describe('firewall state: the binary form', () => {
  it('encodes and decodes both formats to the same records', () => {
    const c = columns([{ proto: 6, tcp: [4, 3], packets: [5, 6], left: 3_600_000 }, { proto: 17, pstate: 3, packets: [2, 2], left: 40_000.5 }]);
    c.mark.set([4, 5]);
    for (const st of [v1State(c), { version: 'v2', format: 2, zone: ZONE, table: null, cols: c, streamTimeout: 120_000 } satisfies FwState]) {
      const back = decodeState(encodeState(st));
      expect(back.format).toBe(st.format);
      expect(back.zone).toBe(ZONE);
      expect(back.cols!.n).toBe(2);
      expect([...back.cols!.tup.subarray(0, 2 * W)]).toEqual([...c.tup.subarray(0, 2 * W)]);
      expect([...back.cols!.expiresIn.subarray(0, 2)]).toEqual([3_600_000, 40_000.5]);
      expect([...back.cols!.mark.subarray(0, 2)]).toEqual(st.format === 2 ? [4, 5] : [0, 0]);
      expect(back.streamTimeout).toBe(st.streamTimeout);
    }
  });

  it('refuses a state that is cut, padded, of another magic or format, with the offset and what was expected', () => {
    const good = encodeState(v1State(columns([{ proto: 17, pstate: 1, packets: [1, 0], left: 1000 }])));
    const cases: [Uint8Array, RegExp][] = [
      [good.subarray(0, 10), /offset 0: 10 bytes: too short/],
      [good.subarray(0, good.length - 1), /offset 15: 1 records need/],
      [Uint8Array.from([...good, 0]), /1 records need \d+ bytes, the state has/],
      [Uint8Array.from(good, (b, k) => (k === 3 ? 0 : b)), /offset 3: not an fpo firewall state/],
      [Uint8Array.from(good, (b, k) => (k === 8 ? 9 : b)), /offset 8: format 9/],
    ];
    for (const [b, re] of cases) {
      const e = (() => { try { decodeState(b); return null; } catch (x) { return x as FpoError; } })();
      expect(e, String(re)).toBeInstanceOf(FpoError);
      expect(e!.code).toBe('FPO_ERR_FW_STATE');
      expect(e!.message).toMatch(re);
    }
  });

  it('fuzz: any byte changed in a saved state is decoded and restored whole, or refused with nothing changed', () => {
    const v1 = new FirewallV1(64);
    const base = columns([
      { proto: 6, tcp: [4, 4], packets: [5, 6], left: 3_600_000 },
      { proto: 17, pstate: 2, packets: [2, 2], left: 20_000 },
      { proto: 17, pstate: 1, packets: [1, 0], left: 40_000 },
    ]);
    base.mark.fill(1);
    const bytes = encodeState({ version: 'v2', format: 2, zone: ZONE, table: null, cols: base, streamTimeout: 120_000 });
    // A connection of the zone already in the table: a restore must leave it, and nothing else, there.
    const held = columns([{ proto: 17, pstate: 1, packets: [1, 0], left: 50_000 }]);
    held.tup[9] = (9999 << 16) | 53; held.tup[19] = (53 << 16) | 9999;
    v1.prepare([ZONE]);
    const t = v1.table(ZONE)!;
    t.importColumns(held, 0);
    fc.assert(fc.property(fc.array(fc.tuple(fc.nat(bytes.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), (edits) => {
      const b = bytes.slice();
      for (const [at, v] of edits) b[at] = v;
      const before = t.list(0).map((c) => JSON.stringify(c));
      let st: FwState;
      try { st = decodeState(b); } catch (e) {
        expect((e as FpoError).code).toBe('FPO_ERR_FW_STATE');
        return;
      }
      try {
        const n = v1.restoreState(st.zone, st, st.version, 0);
        expect(t.count).toBe(1 + n);
        // Taken whole: dropped again (the one there before stays).
        for (const c of t.list(0)) if (!before.includes(JSON.stringify(c))) t.release(c.id);
      } catch (e) {
        expect((e as FpoError).code).toBe('FPO_ERR_FW_STATE');
      }
      expect(t.list(0).map((c) => JSON.stringify(c))).toEqual(before);
    }), { numRuns: 400 });
  });

  it('a restore is refused whole when a tuple is held already, or the table has no room: nothing changed', () => {
    const ct = new ConnTrack({ capacity: 2 });
    const c = columns([{ proto: 17, pstate: 1, packets: [1, 0], left: 1000 }, { proto: 17, pstate: 1, packets: [1, 0], left: 1000 }, { proto: 17, pstate: 1, packets: [1, 0], left: 1000 }]);
    expect(() => ct.importColumns(c, 0)).toThrow(/3 connections to restore, room for 2/);
    expect(ct.count).toBe(0);
    c.n = 2;
    c.tup.copyWithin(W, 0, W); // record 1 = record 0
    expect(() => ct.importColumns(c, 0)).toThrow(/has a tuple of an earlier one/);
    expect(ct.count).toBe(0);
    c.n = 1;
    expect(ct.importColumns(c, 0)).toBe(1);
    expect(() => ct.importColumns(c, 0)).toThrow(/held by a connection in the table already/);
    expect(ct.count).toBe(1);
  });
});
