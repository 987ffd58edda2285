import { execFileSync } from 'node:child_process';
import fc from 'fast-check';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Encap } from '../../../datapath/actions/encap.js';
import { ABSENT, PacketBatch } from '../../../datapath/batch.js';
import { FlagCheck } from '../../../datapath/classifier/flag-check.js';
import { KEY_WORDS, W_TUN, W_TUN_SRC } from '../../../datapath/classifier/flow-key.js';
import { Parse } from '../../../datapath/parse/parse.js';
import { writePcap } from '../../../fixtures/packets.js';
import { FIXTURES, cleanTemp, needTool, tempDir, tsharkFields } from '../../helpers.js';
import { readFileSync, writeFileSync } from 'node:fs';
import { replay } from '../../../control/replay.js';

afterAll(cleanTemp);

const mac = (x: number) => Uint8Array.of(2, 0, 0, 0, 0, x);
const V4A = Uint8Array.of(192, 168, 0, 2);
const V4B = Uint8Array.of(192, 168, 0, 1);
const V6A = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 2]);
const V6B = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 1]);

/** Encapsulates `inner` as encap would on tx; returns the outer frame. */
function encapsulate(e: Encap, id: number, flagged: boolean, inner: Uint8Array, hash: number): Uint8Array {
  const hl = e.headerLength(id, flagged);
  const out = new Uint8Array(hl + inner.length);
  const n = e.write(out, 0, id, flagged, inner.length, hash);
  expect(n).toBe(hl);
  out.set(inner, hl);
  e.finish(out, 0, id, hl, inner.length);
  return out;
}

/** Runs a frame through outer parse and the flag check as the receiving host 192.168.0.1 would. */
function receive(frame: Uint8Array) {
  const batch = new PacketBatch(1);
  batch.batchSetBuffer(frame);
  batch.count = 1;
  batch.off[0] = 0;
  batch.caplen[0] = frame.length;
  batch.wirelen[0] = frame.length;
  batch.drop[0] = 0;
  const inPort = new Uint32Array(8);
  const parse = new Parse(inPort);
  const fc = new FlagCheck(inPort);
  fc.vtep = 0xc0a80001;
  parse.process(batch);
  const flagged = fc.process(batch) === 1;
  return { batch, flagged, bytes: frame.subarray(batch.off[0], batch.off[0] + batch.caplen[0]) };
}

const innerFrame = fc.tuple(fc.integer({ min: 1, max: 250 }), fc.uint8Array({ minLength: 0, maxLength: 400 })).map(([d, body]) => {
  const f = new Uint8Array(14 + body.length);
  f.set(mac(d), 0);
  f.set(mac(255 - d), 6);
  f[12] = 0x88; f[13] = 0xb5; // a local experimental ethertype: no inner header to get in the way
  f.set(body, 14);
  return f;
});

/** tshark fields with IPv4 and UDP checksum validation on (status 1 = good, 0 = bad). */
function checked(file: string, fields: string[]): string[][] {
  const args = ['-r', file, '-o', 'ip.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE', '-T', 'fields', '-E', 'separator=|', '-E', 'occurrence=a', '-E', 'aggregator=,'];
  for (const f of fields) args.push('-e', f);
  return execFileSync('tshark', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).split('\n').filter((l) => l).map((l) => l.split('|'));
}

describe('Encap', () => {
  it('decap(encap(p)) = p for random packets, VXLAN and Geneve, flagged or not, and the flag is read back exactly', () => {
    fc.assert(fc.property(innerFrame, fc.constantFrom<'vxlan' | 'geneve'>('vxlan', 'geneve'), fc.boolean(), fc.integer({ min: 0, max: 0xffffff }), fc.integer(), (inner, kind, flagged, vni, hash) => {
      const e = new Encap();
      const t = e.addTunnel({ kind, srcMac: mac(0xfe), dstMac: mac(0xfd), srcIp: V4A, dstIp: V4B });
      const frame = encapsulate(e, e.encapId(t, vni), flagged, inner, hash);
      const r = receive(frame);
      expect(r.flagged).toBe(flagged);
      if (flagged) {
        expect(r.bytes).toEqual(frame); // untouched
      } else {
        expect(r.batch.drop[0]).toBe(0);
        expect(r.bytes).toEqual(inner);
        expect(r.batch.key[W_TUN] & 0xffffff).toBe(vni);
        expect(r.batch.key[W_TUN_SRC]).toBe(0xc0a80002);
      }
    }), { numRuns: 300 });
  });

  it('setTunnel gives a tunnel new ends: the next frame goes to the new address and MAC, in the new kind, with the id kept', () => {
    const e = new Encap();
    const t = e.addTunnel({ kind: 'vxlan', srcMac: mac(0xfe), dstMac: mac(0xfd), srcIp: V4A, dstIp: V4B });
    const id = e.encapId(t, 77);
    const inner = new Uint8Array(60).fill(7);
    const a = encapsulate(e, id, false, inner, 1);
    expect(a.subarray(30, 34)).toEqual(V4B); // IPv4 destination
    const moved = Uint8Array.from([192, 168, 9, 2]);
    e.setTunnel(t, { kind: 'geneve', srcMac: mac(0xfe), dstMac: mac(0xfc), srcIp: V4A, dstIp: moved });
    const b = encapsulate(e, id, false, inner, 1);
    expect(b.subarray(0, 6)).toEqual(mac(0xfc));
    expect(b.subarray(30, 34)).toEqual(moved);
    expect((b[36] << 8) | b[37]).toBe(6081); // Geneve's UDP port now
    expect(b.subarray(b.length - inner.length)).toEqual(inner);
    expect(() => e.setTunnel(9, { kind: 'geneve', srcMac: mac(0xfe), dstMac: mac(0xfc), srcIp: V4A, dstIp: moved })).toThrow(/no tunnel 9/);
    expect(() => e.setTunnel(t, { kind: 'geneve', srcMac: mac(0xfe), dstMac: mac(0xfc), srcIp: V4A, dstIp: V6B })).toThrow(/must both be IPv4 or both IPv6/);
    expect(() => e.setTunnel(t, { kind: 'geneve', srcMac: mac(0xfe), dstMac: mac(0xfc).subarray(1), srcIp: V4A, dstIp: moved })).toThrow(/MACs must be 6 bytes/);
    // Refused, nothing changed: the tunnel's frames as before the refusals.
    expect(encapsulate(e, id, false, inner, 1)).toEqual(b);
  });

  it('addTunnel refuses ends it cannot send from (a MAC not 6 bytes, an IPv4 and an IPv6 address) and takes no id for them', () => {
    const e = new Encap();
    expect(() => e.addTunnel({ kind: 'vxlan', srcMac: Uint8Array.of(2, 0, 0, 0, 0, 1, 9), dstMac: mac(0xfd), srcIp: V4A, dstIp: V4B })).toThrow(/MACs must be 6 bytes/);
    expect(() => e.addTunnel({ kind: 'vxlan', srcMac: mac(0xfe), dstMac: mac(0xfd), srcIp: V4A, dstIp: V6B })).toThrow(/must both be IPv4 or both IPv6/);
    expect(() => e.addTunnel({ kind: 'vxlan', srcMac: mac(0xfe), dstMac: mac(0xfd), srcIp: V4A.subarray(1), dstIp: V4B.subarray(1) })).toThrow(/must both be IPv4 or both IPv6/);
    expect(e.addTunnel({ kind: 'vxlan', srcMac: mac(0xfe), dstMac: mac(0xfd), srcIp: V4A, dstIp: V4B })).toBe(0);
  });

  it('over IPv6 the inner frame comes back intact after the outer parse', () => {
    fc.assert(fc.property(innerFrame, fc.constantFrom<'vxlan' | 'geneve'>('vxlan', 'geneve'), fc.boolean(), (inner, kind, flagged) => {
      const e = new Encap();
      const t = e.addTunnel({ kind, srcMac: mac(0xfe), dstMac: mac(0xfd), srcIp: V6A, dstIp: V6B });
      const frame = encapsulate(e, e.encapId(t, 77), flagged, inner, 1);
      const r = receive(frame);
      expect(r.batch.innerOff[0]).not.toBe(ABSENT);
      expect(frame.subarray(r.batch.innerOff[0])).toEqual(inner);
      void KEY_WORDS;
    }), { numRuns: 100 });
  });

  it('tshark reads our headers as valid: lengths, IPv4 header checksum, IPv6 UDP checksum, VNI, flag', (ctx) => {
    needTool(ctx, 'tshark', 'the independent decoder');
    const inner = Uint8Array.from([...mac(1), ...mac(2), 0x08, 0x00, 0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 0x13, 0x88, 0x13, 0x89, 0, 8, 0, 0]);
    // Fix the inner IPv4 checksum so tshark has nothing to complain about inside.
    let s = 0;
    for (let j = 14; j < 34; j += 2) s += (inner[j] << 8) | inner[j + 1];
    while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
    inner[24] = (~s >> 8) & 255; inner[25] = ~s & 255;
    const e = new Encap();
    const recs = [];
    for (const kind of ['vxlan', 'geneve'] as const) {
      for (const [src, dst] of [[V4A, V4B], [V6A, V6B]]) {
        const t = e.addTunnel({ kind, srcMac: mac(0xfe), dstMac: mac(0xfd), srcIp: src, dstIp: dst });
        for (const flagged of [false, true]) recs.push({ sec: 1, usec: recs.length, data: encapsulate(e, e.encapId(t, 4242), flagged, inner, 0x1234) });
      }
    }
    const p = join(tempDir(), 'encap.pcap');
    writePcap(p, recs);
    const rows = checked(p, ['ip.checksum.status', 'udp.checksum.status', 'vxlan.vni', 'geneve.vni', 'geneve.option.class', 'vxlan.flags', 'udp.srcport']);
    expect(rows.length).toBe(8);
    rows.forEach((r, i) => {
      const flagged = i % 2 === 1;
      const kind = i < 4 ? 'vxlan' : 'geneve';
      const v6 = Math.floor(i / 2) % 2 === 1;
      expect(Number((r[2] || r[3]).split(',')[0])).toBe(4242);
      if (!v6) expect(r[0].split(',')[0]).toBe('1'); // IPv4 header checksum: good
      else expect(r[1].split(',')[0]).toBe('1'); // IPv6 UDP checksum: good
      if (kind === 'geneve') expect(r[4].includes('0xfff0'), `geneve ${i}`).toBe(flagged);
      else expect((parseInt(r[5].split(',')[0], 16) & 0x0080) !== 0, `vxlan ${i}`).toBe(flagged);
      expect(Number(r[6].split(',')[0])).toBe(49152 | (0x1234 & 0x3fff));
    });
  });

  it('the IPv6 UDP checksum is correct (tshark with checksum validation)', (ctx) => {
    needTool(ctx, 'tshark', 'validates the checksum');
    const e = new Encap();
    const t = e.addTunnel({ kind: 'vxlan', srcMac: mac(0xfe), dstMac: mac(0xfd), srcIp: V6A, dstIp: V6B });
    const inner = Uint8Array.from([...mac(1), ...mac(2), 0x88, 0xb5, 1, 2, 3, 4, 5]);
    const p = join(tempDir(), 'v6.pcap');
    writePcap(p, [{ sec: 1, usec: 0, data: encapsulate(e, e.encapId(t, 9), false, inner, 7) }]);
    expect(checked(p, ['udp.checksum.status'])).toEqual([['1']]); // 1 = Good
  });
});

describe('an inner frame too long for the outer length field', () => {
  // Host A of fixtures/two-hosts.json, sending vmA1 → vmB1 and vmA2 (flagged) → vmB2.
  const hostA = (JSON.parse(readFileSync(join(FIXTURES, 'two-hosts.json'), 'utf8')) as { hosts: Record<string, unknown>[] }).hosts[0];
  const big = (dst: string, src: string, len: number) => {
    const f = new Uint8Array(len);
    f.set(dst.split(':').map((x) => parseInt(x, 16)), 0);
    f.set(src.split(':').map((x) => parseInt(x, 16)), 6);
    f[12] = 0x88; f[13] = 0xb5; // no inner header to check: the length alone counts
    return f;
  };
  const cases = [
    // outer IPv4 total length = 20 + 8 + 8 (+ 4: Geneve's flag option) + inner; IPv6 payload length = 8 + 8 (+ 4) + inner.
    { kind: 'vxlan', v6: false, max: 65535 - 36, maxFlagged: 65535 - 36 },
    { kind: 'geneve', v6: false, max: 65535 - 36, maxFlagged: 65535 - 40 },
    { kind: 'vxlan', v6: true, max: 65535 - 16, maxFlagged: 65535 - 16 },
    { kind: 'geneve', v6: true, max: 65535 - 16, maxFlagged: 65535 - 20 },
  ] as const;
  for (const c of cases) {
    it(`${c.kind} over IPv${c.v6 ? 6 : 4}: up to ${c.max} (flagged ${c.maxFlagged}) bytes go out with exact lengths; one more, or 70 KB, is dropped as encapTooLong (tshark finds no malformed frame)`, (ctx) => {
      needTool(ctx, 'tshark', 'reads the encapsulated output');
      const dir = tempDir('encap-long');
      const topo = structuredClone(hostA) as { tunnel: { kind: string; sendFrom?: string; remotes: { vtep: string }[]; policy: { firstPackets: number } } };
      topo.tunnel.kind = c.kind;
      topo.tunnel.policy.firstPackets = 0; // flagged: vmA2's packets only
      if (c.v6) { topo.tunnel.sendFrom = '2001:db8::1'; topo.tunnel.remotes[0].vtep = '2001:db8::2'; }
      writeFileSync(join(dir, 'topo.json'), JSON.stringify(topo));
      const a1 = ['02:00:00:00:0b:01', '02:00:00:00:0a:01'] as const;
      const a2 = ['02:00:00:00:0b:02', '02:00:00:00:0a:02'] as const;
      const sizes = [[a1, 100], [a1, c.max], [a1, c.max + 1], [a1, 70_000], [a2, c.maxFlagged], [a2, c.maxFlagged + 1]] as const;
      writePcap(join(dir, 'in.pcap'), sizes.map(([m, len], i) => ({ sec: 1_700_000_000, usec: i, data: big(m[0], m[1], len) })));
      const { report } = replay({ capture: join(dir, 'in.pcap'), topology: join(dir, 'topo.json'), outDir: join(dir, 'out') });
      expect(report.packets.in).toBe(6);
      expect(report.drops).toEqual({ encapTooLong: 3 });
      expect(report.packets.out).toBe(3);
      expect(report.packets.in).toBe(report.packets.out + report.packets.dropped);
      const rows = tsharkFields(join(dir, 'out', 'uplink0.pcap'), ['frame.len', c.v6 ? 'ipv6.plen' : 'ip.len', '_ws.malformed', '_ws.expert.severity']);
      expect(rows.length).toBe(3);
      const want = [[a1, 100], [a1, c.max], [a2, c.maxFlagged]] as const;
      rows.forEach(([frameLen, ipLen, malformed], j) => {
        const inner = want[j][1];
        const flagged = want[j][0] === a2 && c.kind === 'geneve' ? 4 : 0;
        const outerIp = (c.v6 ? 16 : 36) + flagged + inner;
        expect(Number(ipLen)).toBe(outerIp);
        expect(Number(frameLen)).toBe(14 + (c.v6 ? 40 : 0) + outerIp);
        expect(malformed).toBe('');
      });
      expect(Number(rows[1][1])).toBe(65535); // the longest that fits fills the field to its top
      expect(Number(rows[2][1])).toBe(65535);
    });
  }
});
