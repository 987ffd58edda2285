import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { PacketBatch } from '../../../datapath/batch.js';
import { GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, SoftOffload, VNET_NEEDS_CSUM, needsSoftware, vnetValid } from '../../../datapath/ports/offload.js';
import { PortMemory } from '../../../datapath/ports/port-memory.js';
import { checksum, concat, eth, ip4, ip6, ipv4, ipv6, tcp, udp, writePcap } from '../../../fixtures/packets.js';
import { cleanTemp, needTool, tempDir, tsharkFields } from '../../helpers.js';

// SoftOffload cuts a GSO packet as a NIC would, and finishes a partial checksum. Packets are written
// into port memory behind a virtio-net header, as a ring port with offloads reads them; the frames
// cut are checked field by field against a model here and by tshark's checksum validation.

afterAll(() => cleanTemp());

const mem = PortMemory.get();
const area = mem.anon(1 << 18, 'offload test');
const batch = new PacketBatch(1);

/** Puts `frame` behind a virtio-net header in port memory and cuts it; returns the frames and what cut said. */
function cutFrame(frame: Uint8Array, hdr: { flags: number; gso: number; gsoSize: number; csumStart: number; csumOffset: number }): { n: number; frames: Uint8Array[] } {
  const b = mem.bytes;
  const off = area + 16;
  b[off - 10] = hdr.flags;
  b[off - 9] = hdr.gso;
  b[off - 8] = 0; b[off - 7] = 0;
  b[off - 6] = hdr.gsoSize & 0xff; b[off - 5] = hdr.gsoSize >> 8;
  b[off - 4] = hdr.csumStart & 0xff; b[off - 3] = hdr.csumStart >> 8;
  b[off - 2] = hdr.csumOffset & 0xff; b[off - 1] = hdr.csumOffset >> 8;
  b.set(frame, off);
  batch.batchSetBuffer(b);
  batch.vnet = true;
  batch.count = 1;
  batch.off[0] = off;
  batch.caplen[0] = frame.length;
  batch.wirelen[0] = frame.length;
  const frames: Uint8Array[] = [];
  const n = SoftOffload.get().cut(batch, 0, { segment: (src, o, len) => { frames.push(Uint8Array.from(src.subarray(o, o + len))); return true; }, segmentsLost: () => undefined });
  return { n, frames };
}

const be16 = (b: Uint8Array, o: number) => (b[o] << 8) | b[o + 1];
const be32 = (b: Uint8Array, o: number) => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
/** The L4 checksum over a pseudo-header as the receiver checks it: 0 when right. */
function l4Check(v4: boolean, l3: Uint8Array, proto: number, l4: Uint8Array): number {
  const pseudo = v4 ? concat(l3.subarray(12, 20), Uint8Array.of(0, proto, l4.length >> 8, l4.length & 255))
    : concat(l3.subarray(8, 40), Uint8Array.of(0, 0, l4.length >> 8, l4.length & 255, 0, 0, 0, proto));
  return checksum(concat(pseudo, l4));
}

describe('SoftOffload', () => {
  it('cuts TCP (IPv4 and IPv6, tagged or not) and UDP GSO packets into frames of gso_size bytes: payload in order, headers and every checksum right, FIN/PSH on the last, CWR on the first (property; tshark checks the checksums too)', (ctx) => {
    needTool(ctx, 'tshark', 'validates the checksums of the frames cut');
    const all: Uint8Array[] = [];
    let cases = 0;
    fc.assert(fc.property(
      fc.record({
        v4: fc.boolean(), udpL4: fc.boolean(), tagged: fc.boolean(),
        payload: fc.integer({ min: 1, max: 30_000 }), mss: fc.integer({ min: 200, max: 1460 }),
        flags: fc.integer({ min: 0, max: 255 }), doff: fc.integer({ min: 5, max: 10 }), id: fc.integer({ min: 0, max: 0xffff }), seed: fc.integer({ min: 0, max: 255 }),
      }),
      (c) => {
        cases++;
        const data = Uint8Array.from({ length: c.payload }, (_, i) => (i * 31 + c.seed) & 0xff);
        const l4 = c.udpL4 ? udp(4000, 5000, data) : tcp(4000, 5000, data, c.flags, c.doff);
        const proto = c.udpL4 ? 17 : 6;
        const l3 = c.v4 ? ipv4({ src: '10.1.0.1', dst: '10.1.0.2', proto, id: c.id }, l4) : ipv6({ src: 'fd00::1', dst: 'fd00::2', nh: proto }, l4);
        const frame = eth('02:00:00:00:00:02', '02:00:00:00:00:01', c.v4 ? 0x0800 : 0x86dd, l3, c.tagged ? [[0x8100, 7]] : []);
        const l3At = c.tagged ? 18 : 14;
        const l4At = l3At + (c.v4 ? 20 : 40);
        const gso = c.udpL4 ? GSO_UDP_L4 : c.v4 ? GSO_TCPV4 : GSO_TCPV6;
        const { n, frames } = cutFrame(frame, { flags: VNET_NEEDS_CSUM, gso, gsoSize: c.mss, csumStart: l4At, csumOffset: c.udpL4 ? 6 : 16 });
        const hlen = l4At + (c.udpL4 ? 8 : c.doff * 4);
        expect(n).toBe(Math.ceil(c.payload / c.mss));
        expect(frames.length).toBe(n);
        const got: number[] = [];
        frames.forEach((f, k) => {
          const last = k === n - 1;
          expect(f.length).toBe(hlen + (last ? c.payload - k * c.mss : c.mss));
          expect(Array.from(f.subarray(0, l3At))).toEqual(Array.from(frame.subarray(0, l3At)));
          const fl3 = f.subarray(l3At, l4At);
          const fl4 = f.subarray(l4At);
          if (c.v4) {
            expect(be16(f, l3At + 2)).toBe(f.length - l3At);
            expect(be16(f, l3At + 4)).toBe((c.id + k) & 0xffff);
            expect(checksum(fl3)).toBe(0);
          } else expect(be16(f, l3At + 4)).toBe(f.length - l4At);
          if (c.udpL4) expect(be16(f, l4At + 4)).toBe(fl4.length);
          else {
            expect(be32(f, l4At + 4)).toBe((1000 + k * c.mss) >>> 0);
            const want = c.flags & ~(last ? 0 : 0x09) & ~(k > 0 ? 0x80 : 0);
            expect(f[l4At + 13]).toBe(want);
          }
          expect(l4Check(c.v4, fl3, proto, fl4)).toBe(0);
          got.push(...f.subarray(hlen));
        });
        expect(Uint8Array.from(got)).toEqual(data);
        all.push(...frames);
      },
    ), { numRuns: 60 });
    expect(cases).toBe(60);
    const file = join(tempDir('offload'), 'cut.pcap');
    writePcap(file, all.map((data, i) => ({ sec: 1_700_000_000, usec: i, data })));
    expect(tsharkFields(file, ['frame.len']).map((r) => Number(r[0]))).toEqual(all.map((f) => f.length));
    // tshark, told to check: every IPv4 header and every TCP/UDP checksum is good (status 1).
    const checked = tsharkFieldsChecked(file);
    expect(checked.length).toBe(all.length);
    for (const r of checked) {
      const statuses = r.filter((x) => x !== '');
      expect(statuses.length).toBeGreaterThanOrEqual(1); // the L4 checksum at least was checked
      for (const s of statuses) expect(s).toBe('1');
    }
  });

  it('finishes a partial checksum (TCP and UDP, IPv4 and IPv6) over the pseudo-header sum the sender left in the field', () => {
    for (const v4 of [true, false]) for (const isUdp of [false, true]) {
      const data = Uint8Array.from({ length: 333 }, (_, i) => (i * 7) & 0xff);
      const l4 = isUdp ? udp(53, 5353, data) : tcp(80, 8080, data);
      const proto = isUdp ? 17 : 6;
      const l3 = v4 ? ipv4({ src: '10.1.0.1', dst: '10.1.0.2', proto }, l4) : ipv6({ src: 'fd00::1', dst: 'fd00::2', nh: proto }, l4);
      const frame = eth('02:00:00:00:00:02', '02:00:00:00:00:01', v4 ? 0x0800 : 0x86dd, l3);
      const l4At = 14 + (v4 ? 20 : 40);
      const co = isUdp ? 6 : 16;
      // The field holds the pseudo-header's sum, folded and not complemented (CHECKSUM_PARTIAL).
      const pseudo = v4 ? concat(ip4('10.1.0.1'), ip4('10.1.0.2'), Uint8Array.of(0, proto, l4.length >> 8, l4.length & 255))
        : concat(ip6('fd00::1'), ip6('fd00::2'), Uint8Array.of(0, 0, l4.length >> 8, l4.length & 255, 0, 0, 0, proto));
      const p = ~checksum(pseudo) & 0xffff;
      frame[l4At + co] = p >> 8;
      frame[l4At + co + 1] = p & 0xff;
      batch.vnet = true;
      const { n, frames } = cutFrame(frame, { flags: VNET_NEEDS_CSUM, gso: GSO_NONE, gsoSize: 0, csumStart: l4At, csumOffset: co });
      expect(n).toBe(1);
      expect(frames[0].length).toBe(frame.length);
      expect(l4Check(v4, frames[0].subarray(14, l4At), proto, frames[0].subarray(l4At))).toBe(0);
      expect(needsSoftware(batch, 0)).toBe(true);
    }
  });

  it('refuses what it does not cut (UFO, a checksum start past the frame, a segment size below 64), and leaves plain packets to the port', () => {
    const frame = eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '10.1.0.1', dst: '10.1.0.2', proto: 17 }, udp(1, 2, new Uint8Array(3000))));
    const before = SoftOffload.get().refused;
    expect(cutFrame(frame, { flags: VNET_NEEDS_CSUM, gso: 3, gsoSize: 1400, csumStart: 34, csumOffset: 6 }).n).toBe(0);
    expect(cutFrame(frame, { flags: VNET_NEEDS_CSUM, gso: GSO_NONE, gsoSize: 0, csumStart: 5000, csumOffset: 6 }).n).toBe(0);
    // A segment size that would make a 3 KB packet 1500 frames (a VM spending fpo's time): refused.
    expect(cutFrame(frame, { flags: VNET_NEEDS_CSUM, gso: GSO_UDP_L4, gsoSize: 2, csumStart: 34, csumOffset: 6 }).n).toBe(0);
    expect(SoftOffload.get().refused).toBe(before + 3);
    cutFrame(frame, { flags: 0, gso: GSO_NONE, gsoSize: 0, csumStart: 0, csumOffset: 0 });
    expect(needsSoftware(batch, 0)).toBe(false);
  });
});

describe('vnetValid: a virtio-net header is taken only when it matches its frame', () => {
  /** The frame behind a header in port memory; whether it is taken. */
  function valid(frame: Uint8Array, flags: number, gso: number, cs: number, co: number): boolean {
    const b = mem.bytes;
    const off = area + 16;
    b.set([flags, gso, 0, 0, 0x05, 0x05, cs & 0xff, cs >> 8, co & 0xff, co >> 8], off - 10);
    b.set(frame, off);
    return vnetValid(b, off, frame.length);
  }
  const tcp4 = eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '10.1.0.1', dst: '10.1.0.2', proto: 6 }, tcp(1, 2, new Uint8Array(100))));
  const udp6 = eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x86dd, ipv6({ src: 'fd00::1', dst: 'fd00::2', nh: 17, ext: [[60, new Uint8Array(6)]] }, udp(1, 2, new Uint8Array(100))), [[0x8100, 5]]);
  it('takes the checksum at the frame\'s own TCP/UDP header (after tags and IPv6 extension headers) and a segment type of its protocol', () => {
    expect(valid(tcp4, 0, GSO_NONE, 0, 0)).toBe(true);
    expect(valid(tcp4, VNET_NEEDS_CSUM, GSO_NONE, 34, 16)).toBe(true);
    expect(valid(tcp4, VNET_NEEDS_CSUM, GSO_TCPV4, 34, 16)).toBe(true);
    expect(valid(udp6, VNET_NEEDS_CSUM, GSO_NONE, 18 + 40 + 8, 6)).toBe(true);
    expect(valid(udp6, VNET_NEEDS_CSUM, GSO_UDP_L4, 18 + 40 + 8, 6)).toBe(true);
  });
  it('refuses a checksum pointed anywhere else (the IPv4 source: a VM getting round port security), the wrong field, a segment type of another protocol, UFO', () => {
    expect(valid(tcp4, VNET_NEEDS_CSUM, GSO_NONE, 26, 0)).toBe(false);
    expect(valid(tcp4, VNET_NEEDS_CSUM, GSO_NONE, 34, 6)).toBe(false);
    expect(valid(tcp4, VNET_NEEDS_CSUM, GSO_TCPV6, 34, 16)).toBe(false);
    expect(valid(tcp4, 0, GSO_TCPV4, 34, 16)).toBe(false);
    expect(valid(udp6, VNET_NEEDS_CSUM, GSO_NONE, 18 + 40, 6)).toBe(false);
    expect(valid(udp6, VNET_NEEDS_CSUM, 3, 18 + 40 + 8, 6)).toBe(false);
    expect(valid(udp6, VNET_NEEDS_CSUM, GSO_TCPV6, 18 + 40 + 8, 6)).toBe(false);
  });
});

/** tshark with IPv4/TCP/UDP checksum validation on: per frame, the status fields (1 good, 0 bad). */
function tsharkFieldsChecked(file: string): string[][] {
  const out = execFileSync('tshark', ['-r', file, '-o', 'ip.check_checksum:TRUE', '-o', 'tcp.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE',
    '-T', 'fields', '-E', 'separator=|', '-e', 'ip.checksum.status', '-e', 'tcp.checksum.status', '-e', 'udp.checksum.status'], { encoding: 'utf8', maxBuffer: 256 << 20 });
  return out.split('\n').filter((l) => l.length > 0).map((l) => l.split('|'));
}
