/**
 * datapath/spread.ts: the flow hash that spreads packets over datapath
 * workers, and the stage that takes a worker's share of a batch.
 */
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PacketBatch } from '../../datapath/batch.js';
import { CaptureReader } from '../../datapath/ports/capture-reader.js';
import { Spread, flowHash, workerOf } from '../../datapath/spread.js';
import { arp, eth, ipv4, ipv6, tcp, udp, writePcap } from '../../fixtures/packets.js';
import { FIXTURES, tempDir } from '../helpers.js';

const hashOf = (f: Uint8Array) => flowHash(f, new DataView(f.buffer, f.byteOffset, f.byteLength), 0, f.length);
const A = '02:00:00:00:00:01';
const B = '02:00:00:00:00:02';

describe('flowHash', () => {
  it('is the same for every packet of a flow, whatever its payload, length or TTL', () => {
    const h = hashOf(eth(A, B, 0x0800, ipv4({ src: '10.0.0.1', dst: '10.0.0.2', proto: 17, ttl: 64 }, udp(1000, 53, new Uint8Array(10)))));
    expect(hashOf(eth(A, B, 0x0800, ipv4({ src: '10.0.0.1', dst: '10.0.0.2', proto: 17, ttl: 3, id: 9 }, udp(1000, 53, new Uint8Array(900).fill(7)))))).toBe(h);
    // A different port, address or protocol is another flow (almost always another hash).
    expect(hashOf(eth(A, B, 0x0800, ipv4({ src: '10.0.0.1', dst: '10.0.0.2', proto: 17 }, udp(1001, 53, new Uint8Array(10)))))).not.toBe(h);
    expect(hashOf(eth(A, B, 0x0800, ipv4({ src: '10.0.0.1', dst: '10.0.0.3', proto: 17 }, udp(1000, 53, new Uint8Array(10)))))).not.toBe(h);
    expect(hashOf(eth(A, B, 0x0800, ipv4({ src: '10.0.0.1', dst: '10.0.0.2', proto: 6 }, tcp(1000, 53))))).not.toBe(h);
  });

  it('gives every piece of a fragmented datagram the same hash (no ports: later pieces have none)', () => {
    const first = hashOf(eth(A, B, 0x0800, ipv4({ src: '10.0.0.1', dst: '10.0.0.2', proto: 17, flags: 1, id: 7 }, udp(1000, 53, new Uint8Array(16)))));
    const later = hashOf(eth(A, B, 0x0800, ipv4({ src: '10.0.0.1', dst: '10.0.0.2', proto: 17, fragOffset: 3, id: 7 }, new Uint8Array(24))));
    expect(later).toBe(first);
  });

  it('looks past VLAN tags (one or two), and hashes IPv6 by addresses, next header and ports', () => {
    const inner = ipv4({ src: '10.0.0.1', dst: '10.0.0.2', proto: 6 }, tcp(5, 80));
    const untagged = hashOf(eth(A, B, 0x0800, inner));
    const tagged = hashOf(eth(A, B, 0x0800, inner, [[0x8100, 20]]));
    const qinq = hashOf(eth(A, B, 0x0800, inner, [[0x88a8, 100], [0x8100, 20]]));
    expect(tagged).toBe(untagged);
    expect(qinq).toBe(untagged);
    const v6 = (sport: number) => hashOf(eth(A, B, 0x86dd, ipv6({ src: 'fd00::1', dst: 'fd00::2', nh: 17 }, udp(sport, 53, new Uint8Array(4)))));
    expect(v6(1)).toBe(v6(1));
    expect(v6(1)).not.toBe(v6(2));
  });

  it('hashes anything else by MAC addresses and ethertype, and never reads past a cut frame', () => {
    const a1 = hashOf(eth(A, B, 0x0806, arp(1, B, '10.0.0.2', '00:00:00:00:00:00', '10.0.0.1')));
    const a2 = hashOf(eth(A, B, 0x0806, arp(2, B, '10.0.0.9', '00:00:00:00:00:00', '10.0.0.1')));
    expect(a2).toBe(a1);
    fc.assert(fc.property(fc.uint8Array({ maxLength: 80 }), fc.nat(80), (bytes, cut) => {
      // The frame sits inside a larger buffer whose tail is noise: the hash must not depend on it.
      const len = Math.min(cut, bytes.length);
      const x = new Uint8Array(200).fill(0xaa);
      const y = new Uint8Array(200).fill(0x55);
      x.set(bytes.subarray(0, len));
      y.set(bytes.subarray(0, len));
      expect(flowHash(x, new DataView(x.buffer), 0, len)).toBe(flowHash(y, new DataView(y.buffer), 0, len));
    }));
  });
});

describe('workerOf', () => {
  it('is symmetric: both directions of a connection hash alike (conntrack needs both on one worker), IPv4 and IPv6', () => {
    fc.assert(fc.property(fc.ipV4(), fc.ipV4(), fc.integer({ min: 1, max: 65535 }), fc.integer({ min: 1, max: 65535 }), fc.constantFrom(6, 17), (a, b, p, q, proto) => {
      const l4 = (x: number, y: number) => (proto === 6 ? tcp(x, y) : udp(x, y, new Uint8Array(4)));
      expect(hashOf(eth(A, B, 0x0800, ipv4({ src: a, dst: b, proto }, l4(p, q))))).toBe(hashOf(eth(B, A, 0x0800, ipv4({ src: b, dst: a, proto }, l4(q, p)))));
    }));
    fc.assert(fc.property(fc.ipV6(), fc.ipV6(), fc.integer({ min: 1, max: 65535 }), fc.integer({ min: 1, max: 65535 }), (a, b, p, q) => {
      expect(hashOf(eth(A, B, 0x86dd, ipv6({ src: a, dst: b, nh: 17 }, udp(p, q, new Uint8Array(4)))))).toBe(hashOf(eth(B, A, 0x86dd, ipv6({ src: b, dst: a, nh: 17 }, udp(q, p, new Uint8Array(4))))));
    }));
  });

  it('maps every hash into 0..n-1 and spreads random flows about evenly', () => {
    for (const n of [1, 2, 3, 4, 7]) {
      const counts = new Array(n).fill(0);
      for (let f = 0; f < 20_000; f++) {
        const h = hashOf(eth(A, B, 0x0800, ipv4({ src: `10.${f >> 8 & 255}.${f & 255}.1`, dst: '10.0.0.2', proto: 17 }, udp(1000 + (f % 7), 53, new Uint8Array(4)))));
        const w = workerOf(h, n);
        expect(w >= 0 && w < n).toBe(true);
        counts[w]++;
      }
      for (const c of counts) expect(Math.abs(c - 20_000 / n)).toBeLessThan(20_000 / n * 0.1);
    }
    expect(workerOf(0, 3)).toBe(0);
    expect(workerOf(0xffffffff, 3)).toBe(2);
  });
});

describe('Spread.take', () => {
  it('over N workers, the shares of a batch are disjoint, cover it, keep its order, and agree between a lazy and a full fill', () => {
    const recs = [];
    for (let i = 0; i < 600; i++) recs.push({ sec: 1_700_000_000 + i, usec: i, data: eth(A, B, 0x0800, ipv4({ src: `10.1.${i % 37}.1`, dst: '10.0.0.2', proto: 17 }, udp(2000 + (i % 5), 53, new Uint8Array([i >> 8, i & 255])))) });
    const cap = join(tempDir('spread'), 'in.pcap');
    writePcap(cap, recs);
    for (const lazy of [false, true]) {
      for (const n of [1, 2, 3]) {
        const reader = new CaptureReader(cap);
        const raw = new PacketBatch(256);
        const mine = new PacketBatch(256);
        const seen: number[] = [];
        while (reader.fill(raw, 7, lazy) > 0) {
          const taken = new Set<number>();
          for (let me = 0; me < n; me++) {
            const k = new Spread(me, n).take(raw, 0, raw.count, mine);
            expect(mine.unfilled).toBe(lazy);
            if (lazy && k > 0) mine.completeRecords(0);
            let last = -1;
            for (let j = 0; j < k; j++) {
              const o = mine.off[j];
              expect(taken.has(o)).toBe(false);
              taken.add(o);
              expect(o).toBeGreaterThan(last); // input order
              last = o;
              expect(mine.inPpid[j]).toBe(7);
              // The packet's number is in its last two bytes; its timestamp says the same.
              const i = (mine.buf[o + mine.caplen[j] - 2] << 8) | mine.buf[o + mine.caplen[j] - 1];
              expect(mine.tsB[j]).toBe(i);
              seen.push(i);
            }
          }
          expect(taken.size).toBe(raw.count);
        }
        reader.close();
        expect(seen.sort((a, b) => a - b)).toEqual(Array.from({ length: 600 }, (_, i) => i));
      }
    }
  });

  it('takes the demo capture\'s packets by hash: a flow\'s packets all to one worker', () => {
    const reader = new CaptureReader(join(FIXTURES, 'demo.pcap'));
    const raw = new PacketBatch(256);
    const mine = new PacketBatch(256);
    const owner = new Map<number, number>();
    while (reader.fill(raw, 1) > 0) {
      for (let me = 0; me < 3; me++) {
        const k = new Spread(me, 3).take(raw, 0, raw.count, mine);
        for (let j = 0; j < k; j++) {
          const h = flowHash(mine.buf, mine.dv, mine.off[j], mine.caplen[j]);
          expect(owner.get(h) ?? me).toBe(me);
          owner.set(h, me);
        }
      }
    }
    reader.close();
    expect(new Set(owner.values()).size).toBe(3);
  });
});
