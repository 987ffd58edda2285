import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { CS_DST_NAT, CS_EST, CS_INV, CS_NEW, CS_REL, CS_RPL, CS_SRC_NAT, CS_TRK, ConnTrack } from '../../../datapath/conntrack/conntrack.js';
import { NatRange } from '../../../datapath/conntrack/nat.js';
import { FIRST, parsedOne } from './frames.js';
import { PacketBatch } from '../../../datapath/batch.js';
import { MappingTable } from '../../../datapath/mapping/mapping-table.js';
import { Parse } from '../../../datapath/parse/parse.js';

const PARSE = new Parse(new MappingTable(100, 100).inPortKey);
import { checksum, concat, eth, icmpEcho, ipv4, ipv6, ip4, ip6, tcp, udp, writePcap } from '../../../fixtures/packets.js';
import { cleanTemp, needTool, tempDir } from '../../helpers.js';

afterAll(cleanTemp);

// NAT on tracked connections: packets built here with valid checksums, tracked and rewritten, then
// checked field by field and by summing every checksum again from scratch.


/** Sets the frame's TCP/UDP/ICMP(v6) checksum from scratch (IPv4 or IPv6, no options or extensions). */
function withChecksum(f: Uint8Array, udpZero = false): Uint8Array {
  const v6 = f[12] === 0x86 && f[13] === 0xdd;
  const l3 = 14;
  const proto = v6 ? f[l3 + 6] : f[l3 + 9];
  const l4 = l3 + (v6 ? 40 : (f[l3] & 15) * 4);
  const len = f.length - l4;
  const at = proto === 6 ? 16 : proto === 17 ? 6 : 2;
  f[l4 + at] = 0; f[l4 + at + 1] = 0;
  if (proto === 17 && udpZero) return f;
  const pseudo = v6
    ? concat(f.subarray(l3 + 8, l3 + 40), Uint8Array.of(0, 0, len >> 8, len & 255, 0, 0, 0, proto))
    : concat(f.subarray(l3 + 12, l3 + 20), Uint8Array.of(0, proto, len >> 8, len & 255));
  let c = checksum(proto === 1 ? f.subarray(l4) : concat(pseudo, f.subarray(l4)));
  if (proto === 17 && c === 0) c = 0xffff;
  f[l4 + at] = c >> 8; f[l4 + at + 1] = c & 255;
  return f;
}

/** Every checksum of the frame, summed again: true when all are right. */
function checksumsOk(f: Uint8Array): boolean {
  const v6 = f[12] === 0x86 && f[13] === 0xdd;
  if (!v6 && checksum(f.subarray(14, 14 + (f[14] & 15) * 4)) !== 0) return false;
  const proto = v6 ? f[14 + 6] : f[14 + 9];
  const l4 = 14 + (v6 ? 40 : (f[14] & 15) * 4);
  const at = proto === 6 ? 16 : proto === 17 ? 6 : 2;
  if (proto === 17 && !v6 && f[l4 + at] === 0 && f[l4 + at + 1] === 0) return true;
  const copy = Uint8Array.from(f);
  const want = (copy[l4 + at] << 8) | copy[l4 + at + 1];
  withChecksum(copy);
  return ((copy[l4 + at] << 8) | copy[l4 + at + 1]) === want;
}

/** Tracks one frame (rewritten in place) and returns its ct_state. */
function track(ct: ConnTrack, f: Uint8Array, nat: NatRange | null, commit = true): number {
  const b = parsedOne(f);
  expect(b.drop[0]).toBe(0);
  ct.process(b, FIRST, 1, 0, commit, 1000, nat);
  return b.ctState[0];
}

const addr4 = (f: Uint8Array, at: number) => [...f.subarray(at, at + 4)].join('.');
const port = (f: Uint8Array, at: number) => (f[at] << 8) | f[at + 1];
const tcpFrame = (src: string, sport: number, dst: string, dport: number, flags: number, data = 20) => withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src, dst, proto: 6, id: 77 }, tcp(sport, dport, new Uint8Array(data).fill(0x5a), flags))));

describe('NAT on tracked connections', () => {
  it('source NAT: the client\'s packets leave from the translated address and a port of the range, replies come back to the client; every checksum right', () => {
    const ct = new ConnTrack({ capacity: 16 });
    const snat = new NatRange('src', '192.0.2.1', '192.0.2.1', 5000, 5009);
    const syn = tcpFrame('10.0.0.1', 1000, '203.0.113.5', 80, 0x02, 0);
    expect(track(ct, syn, snat)).toBe(CS_TRK | CS_NEW | CS_SRC_NAT);
    expect(addr4(syn, 26)).toBe('192.0.2.1');
    const p = port(syn, 34);
    expect(p).toBeGreaterThanOrEqual(5000);
    expect(p).toBeLessThanOrEqual(5009);
    expect(addr4(syn, 30)).toBe('203.0.113.5');
    expect(port(syn, 36)).toBe(80);
    expect(checksumsOk(syn)).toBe(true);
    // The server answers the translated address; the reply goes back to 10.0.0.1:1000.
    const synack = tcpFrame('203.0.113.5', 80, '192.0.2.1', p, 0x12, 0);
    synack.set([0, 0, 0x03, 0xe9], 42); // ack 1001: SYN's seq 1000 + 1 (tcp() sends seq 1000)
    withChecksum(synack);
    expect(track(ct, synack, null)).toBe(CS_TRK | CS_EST | CS_RPL | CS_SRC_NAT);
    expect(addr4(synack, 30)).toBe('10.0.0.1');
    expect(port(synack, 36)).toBe(1000);
    expect(addr4(synack, 26)).toBe('203.0.113.5');
    expect(checksumsOk(synack)).toBe(true);
    const [c] = ct.list(1000);
    expect(c.orig).toEqual({ src: '10.0.0.1', dst: '203.0.113.5', sport: 1000, dport: 80 });
    expect(c.reply).toEqual({ src: '203.0.113.5', dst: '192.0.2.1', sport: 80, dport: p });
  });

  it('destination NAT: a virtual address and port reach the real server; its replies leave from the virtual address', () => {
    const ct = new ConnTrack({ capacity: 16 });
    const dnat = new NatRange('dst', '10.0.0.2', '10.0.0.2', 8080);
    const q = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '198.51.100.7', dst: '198.51.100.10', proto: 17 }, udp(40000, 53, new Uint8Array(30).fill(1)))));
    expect(track(ct, q, dnat)).toBe(CS_TRK | CS_NEW | CS_DST_NAT);
    expect([addr4(q, 30), port(q, 36), addr4(q, 26), port(q, 34)]).toEqual(['10.0.0.2', 8080, '198.51.100.7', 40000]);
    expect(checksumsOk(q)).toBe(true);
    const a = withChecksum(eth('02:00:00:00:00:01', '02:00:00:00:00:02', 0x0800, ipv4({ src: '10.0.0.2', dst: '198.51.100.7', proto: 17 }, udp(8080, 40000, new Uint8Array(30).fill(2)))));
    expect(track(ct, a, null)).toBe(CS_TRK | CS_EST | CS_RPL | CS_DST_NAT);
    expect([addr4(a, 26), port(a, 34), addr4(a, 30), port(a, 36)]).toEqual(['198.51.100.10', 53, '198.51.100.7', 40000]);
    expect(checksumsOk(a)).toBe(true);
    // A UDP checksum of 0 (none) stays 0.
    const z = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '198.51.100.8', dst: '198.51.100.10', proto: 17 }, udp(40001, 53, new Uint8Array(9)))), true);
    track(ct, z, dnat);
    expect([z[40], z[41]]).toEqual([0, 0]);
    expect(checksumsOk(z)).toBe(true);
  });

  it('IPv6 source NAT and ICMP echo through source NAT: addresses rewritten both ways, checksums right', () => {
    const ct = new ConnTrack({ capacity: 16 });
    const snat6 = new NatRange('src', '2001:db8::100', '2001:db8::100', 6000, 6000);
    const f = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x86dd, ipv6({ src: 'fd00::1', dst: '2001:db8:1::5', nh: 6 }, tcp(3333, 443, new Uint8Array(11), 0x02))));
    expect(track(ct, f, snat6)).toBe(CS_TRK | CS_NEW | CS_SRC_NAT);
    expect([...f.subarray(22, 38)]).toEqual([...ip6('2001:db8::100')]);
    expect(port(f, 54)).toBe(6000);
    expect(checksumsOk(f)).toBe(true);
    const snat = new NatRange('src', '192.0.2.9');
    const ping = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '10.0.0.1', dst: '203.0.113.5', proto: 1 }, icmpEcho(8, 4242, 1))));
    expect(track(ct, ping, snat)).toBe(CS_TRK | CS_NEW | CS_SRC_NAT);
    expect(addr4(ping, 26)).toBe('192.0.2.9');
    expect(checksumsOk(ping)).toBe(true);
    const pong = withChecksum(eth('02:00:00:00:00:01', '02:00:00:00:00:02', 0x0800, ipv4({ src: '203.0.113.5', dst: '192.0.2.9', proto: 1 }, icmpEcho(0, 4242, 1))));
    expect(track(ct, pong, null)).toBe(CS_TRK | CS_EST | CS_RPL | CS_SRC_NAT);
    expect(addr4(pong, 30)).toBe('10.0.0.1');
    expect(checksumsOk(pong)).toBe(true);
  });

  it('a range with no free translation left refuses the commit (counted), and the packet goes untranslated', () => {
    const ct = new ConnTrack({ capacity: 16 });
    const snat = new NatRange('src', '192.0.2.1', '192.0.2.1', 7000, 7001);
    const states = ['10.0.0.1', '10.0.0.2', '10.0.0.3'].map((a) => track(ct, tcpFrame(a, 1000, '203.0.113.5', 80, 0x02, 0), snat));
    expect(states).toEqual([CS_TRK | CS_NEW | CS_SRC_NAT, CS_TRK | CS_NEW | CS_SRC_NAT, CS_TRK | CS_NEW]);
    expect(ct.stats.natExhausted).toBe(1);
    expect(ct.count).toBe(2);
    expect(new Set(ct.list(1000).map((c) => c.reply.dport))).toEqual(new Set([7000, 7001]));
  });

  it('property: no two connections get the same translated tuple, every translation is in its range, and replies find their connection', () => {
    fc.assert(fc.property(fc.array(fc.tuple(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 1024, max: 1100 })), { minLength: 1, maxLength: 120 }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 40 }), (clients, addrs, ports) => {
      const ct = new ConnTrack({ capacity: 256 });
      const snat = new NatRange('src', '192.0.2.1', `192.0.2.${addrs}`, 20000, 20000 + ports - 1);
      for (const [host, sport] of clients) track(ct, tcpFrame(`10.0.0.${host}`, sport, '203.0.113.5', 80, 0x02, 0), snat);
      const conns = ct.list(1000);
      const distinctClients = new Set(clients.map(([h, p]) => `${h}:${p}`)).size;
      expect(conns.length).toBe(Math.min(distinctClients, addrs * ports));
      // Every client without a connection was refused for want of a translation (a client sent twice is refused twice).
      expect(ct.stats.natExhausted).toBeGreaterThanOrEqual(distinctClients - conns.length);
      expect(ct.stats.natExhausted).toBeLessThanOrEqual(clients.length - conns.length);
      if (conns.length === distinctClients) expect(ct.stats.natExhausted).toBe(0);
      const replies = conns.map((c) => `${c.reply.dst}:${c.reply.dport}`);
      expect(new Set(replies).size).toBe(replies.length);
      for (const c of conns) {
        expect(Number(c.reply.dst.split('.')[3])).toBeLessThanOrEqual(addrs);
        expect(c.reply.dport).toBeGreaterThanOrEqual(20000);
        expect(c.reply.dport).toBeLessThan(20000 + ports);
        const back = tcpFrame('203.0.113.5', 80, c.reply.dst, c.reply.dport, 0x10, 0); // the server's first segment, a plain ACK: found by its translated tuple
        const st = track(ct, back, null, false);
        expect(st & CS_RPL).toBe(CS_RPL);
      }
    }), { numRuns: 150 });
  });

  it('tshark finds every checksum of translated packets good (TCP, UDP, ICMP over IPv4; TCP and ICMPv6 over IPv6), both directions', (ctx) => {
    needTool(ctx, 'tshark', 'the independent checksum check');
    const ct = new ConnTrack({ capacity: 64 });
    const snat = new NatRange('src', '192.0.2.1', '192.0.2.4', 30000, 30099);
    const snat6 = new NatRange('src', '2001:db8::1', '2001:db8::4', 30000, 30099);
    const out: Uint8Array[] = [];
    for (let k = 0; k < 20; k++) {
      const t = tcpFrame(`10.0.0.${k + 1}`, 1000 + k, '203.0.113.5', 80, 0x02, k * 13);
      track(ct, t, snat);
      out.push(t);
      const u = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: `10.0.1.${k + 1}`, dst: '203.0.113.6', proto: 17 }, udp(2000 + k, 53, new Uint8Array(k * 7 + 1).fill(k)))));
      track(ct, u, snat);
      out.push(u);
      const i4 = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: `10.0.2.${k + 1}`, dst: '203.0.113.7', proto: 1 }, icmpEcho(8, 100 + k, k))));
      track(ct, i4, snat);
      out.push(i4);
      const t6 = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x86dd, ipv6({ src: `fd00::${k + 1}`, dst: '2001:db8:1::5', nh: 6 }, tcp(4000 + k, 443, new Uint8Array(k * 5), 0x02))));
      track(ct, t6, snat6);
      out.push(t6);
      const e6 = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x86dd, ipv6({ src: `fd00::1:${k + 1}`, dst: '2001:db8:1::6', nh: 58 }, icmpEcho(128, 200 + k, k))));
      track(ct, e6, snat6);
      out.push(e6);
    }
    // The replies, each to its translated tuple, come back rewritten.
    for (const c of ct.list(1000)) {
      const v6 = c.orig.src.includes(':');
      if (v6) continue;
      const reply = c.proto === 6 ? tcpFrame(c.reply.src, c.reply.sport, c.reply.dst, c.reply.dport, 0x10, 3)
        : c.proto === 17 ? withChecksum(eth('02:00:00:00:00:01', '02:00:00:00:00:02', 0x0800, ipv4({ src: c.reply.src, dst: c.reply.dst, proto: 17 }, udp(c.reply.sport, c.reply.dport, new Uint8Array(5)))))
          : withChecksum(eth('02:00:00:00:00:01', '02:00:00:00:00:02', 0x0800, ipv4({ src: c.reply.src, dst: c.reply.dst, proto: 1 }, icmpEcho(0, c.reply.sport, 1))));
      expect(track(ct, reply, null, false) & (CS_RPL | CS_SRC_NAT)).toBe(CS_RPL | CS_SRC_NAT); // found and translated back
      out.push(reply);
    }
    expect(out.every(checksumsOk)).toBe(true);
    const file = join(tempDir('nat'), 'nat.pcap');
    writePcap(file, out.map((data, k) => ({ sec: 1, usec: k, data })));
    const rows = execFileSync('tshark', ['-r', file, '-o', 'ip.check_checksum:TRUE', '-o', 'tcp.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE',
      '-T', 'fields', '-E', 'separator=|', '-e', 'ip.checksum.status', '-e', 'tcp.checksum.status', '-e', 'udp.checksum.status', '-e', 'icmp.checksum.status', '-e', 'icmpv6.checksum.status'], { encoding: 'utf8' }).trim().split('\n');
    expect(rows.length).toBe(out.length);
    // 1 = Good; every field present on a row says so (ICMP's and ICMPv6's are always checked).
    for (const r of rows) {
      const [ip, ...l4] = r.split('|');
      const v4 = ip !== '';
      if (v4) expect(ip, r).toBe('1');
      expect(l4.filter((x) => x !== ''), r).toEqual(['1']); // one transport checksum a row, checked and good
    }
  });

  it('review findings (2026-12-04): an ICMP error about a translated packet is rel; a cut header is inv and never leaves untranslated; a reply tuple already held is a clash', () => {
    const ct = new ConnTrack({ capacity: 16 });
    const snat = new NatRange('src', '192.0.2.9', '192.0.2.9', 5000, 5000);
    const q = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '10.0.0.1', dst: '198.51.100.7', proto: 17 }, udp(4000, 53, new Uint8Array(12)))));
    expect(track(ct, q, snat)).toBe(CS_TRK | CS_NEW | CS_SRC_NAT);
    // The server's port unreachable quotes the packet as it saw it: from 192.0.2.9:5000.
    const quoted = q.subarray(14, 14 + 28);
    const err = withChecksum(eth('02:00:00:00:00:01', '02:00:00:00:00:02', 0x0800, ipv4({ src: '198.51.100.7', dst: '192.0.2.9', proto: 1 }, concat(Uint8Array.of(3, 3, 0, 0, 0, 0, 0, 0), quoted))));
    expect(track(ct, err, null, false)).toBe(CS_TRK | CS_REL | CS_RPL | CS_SRC_NAT);
    expect(ct.stats.relatedNat).toBe(1);
    // Translated back, as Linux does: to the client, quoting the packet as the client sent it.
    expect(addr4(err, 30)).toBe('10.0.0.1');
    expect(addr4(err, 26)).toBe('198.51.100.7');
    expect([addr4(err, 42 + 12), port(err, 42 + 20)]).toEqual(['10.0.0.1', 4000]);
    expect(checksumsOk(err)).toBe(true); // outer IPv4 header and ICMP over the changed quote
    expect(checksum(err.subarray(42, 62))).toBe(0); // the quoted IPv4 header's own checksum
    // A UDP packet whose ports the capture cut: inv, nothing committed, nothing sent on with a private address as translated.
    const before = ct.count;
    const cut = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '10.0.0.2', dst: '198.51.100.7', proto: 17 }, udp(4001, 53, new Uint8Array(40)))));
    const b = parsedOne(cut, undefined, 36);
    ct.process(b, FIRST, 1, 0, true, 1000, snat);
    expect(b.ctState[0]).toBe(CS_TRK | CS_INV);
    expect(ct.count).toBe(before);
    // From the NAT address itself, on the translated tuple's reverse: the reply tuple is taken — a clash, refused.
    const spoof = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.9', dst: '198.51.100.7', proto: 17 }, udp(5000, 53, new Uint8Array(12)))));
    expect(track(ct, spoof, null)).toBe(CS_TRK | CS_NEW);
    expect(ct.stats.clash).toBe(1);
    expect(ct.count).toBe(before);
    // The server's answer still goes to the client.
    const ans = withChecksum(eth('02:00:00:00:00:01', '02:00:00:00:00:02', 0x0800, ipv4({ src: '198.51.100.7', dst: '192.0.2.9', proto: 17 }, udp(53, 5000, new Uint8Array(12)))));
    expect(track(ct, ans, null, false)).toBe(CS_TRK | CS_EST | CS_RPL | CS_SRC_NAT);
    expect(addr4(ans, 30)).toBe('10.0.0.1');
  });

  it('ICMP errors of translated connections go back translated, quote and all (SNAT and DNAT, IPv4 and IPv6): tshark finds every checksum good, the quoted ones too', (ctx) => {
    needTool(ctx, 'tshark', 'the independent checksum check');
    const ct = new ConnTrack({ capacity: 16 });
    const out: Uint8Array[] = [];
    // SNAT, IPv4: the server's port unreachable quotes the whole datagram as it arrived (from 192.0.2.9:6000).
    const q = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '10.0.0.1', dst: '198.51.100.7', proto: 17 }, udp(4000, 53, new Uint8Array(12).fill(7)))));
    track(ct, q, new NatRange('src', '192.0.2.9', '192.0.2.9', 6000, 6000));
    const e4 = withChecksum(eth('02:00:00:00:00:01', '02:00:00:00:00:02', 0x0800, ipv4({ src: '198.51.100.7', dst: '192.0.2.9', proto: 1 }, concat(Uint8Array.of(3, 3, 0, 0, 0, 0, 0, 0), q.subarray(14)))));
    expect(track(ct, e4, null, false)).toBe(CS_TRK | CS_REL | CS_RPL | CS_SRC_NAT);
    expect([addr4(e4, 30), addr4(e4, 54), port(e4, 62)]).toEqual(['10.0.0.1', '10.0.0.1', 4000]);
    out.push(e4);
    // DNAT, IPv4: the real server (10.0.0.2:8080) behind 198.51.100.10:80 says "fragmentation needed"
    // about its own reply; it goes to the client from the virtual address, quoting the reply as the client would see it.
    const d = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '203.0.113.9', dst: '198.51.100.10', proto: 17 }, udp(5555, 80, new Uint8Array(8)))));
    track(ct, d, new NatRange('dst', '10.0.0.2', '10.0.0.2', 8080));
    const quoteD = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '203.0.113.9', dst: '10.0.0.2', proto: 17 }, udp(5555, 8080, new Uint8Array(8))))).subarray(14);
    const eD = withChecksum(eth('02:00:00:00:00:01', '02:00:00:00:00:02', 0x0800, ipv4({ src: '10.0.0.2', dst: '203.0.113.9', proto: 1 }, concat(Uint8Array.of(3, 4, 0, 0, 0, 0, 5, 0xdc), quoteD))));
    expect(track(ct, eD, null, false)).toBe(CS_TRK | CS_REL | CS_RPL | CS_DST_NAT);
    expect([addr4(eD, 26), addr4(eD, 30), addr4(eD, 42 + 16), port(eD, 62 + 2)]).toEqual(['198.51.100.10', '203.0.113.9', '198.51.100.10', 80]);
    out.push(eD);
    // SNAT, IPv6: a TCP segment's destination unreachable (ICMPv6 type 1).
    const t6 = withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x86dd, ipv6({ src: 'fd00::1', dst: '2001:db8:1::5', nh: 6 }, tcp(3333, 443, new Uint8Array(0), 0x02))));
    track(ct, t6, new NatRange('src', '2001:db8::100', '2001:db8::100', 7000, 7000));
    const e6 = withChecksum(eth('02:00:00:00:00:01', '02:00:00:00:00:02', 0x86dd, ipv6({ src: '2001:db8:1::5', dst: '2001:db8::100', nh: 58 }, concat(Uint8Array.of(1, 4, 0, 0, 0, 0, 0, 0), t6.subarray(14)))));
    expect(track(ct, e6, null, false)).toBe(CS_TRK | CS_REL | CS_RPL | CS_SRC_NAT);
    expect([...e6.subarray(38, 54)]).toEqual([...ip6('fd00::1')]);
    expect([...e6.subarray(62 + 8, 62 + 24)]).toEqual([...ip6('fd00::1')]);
    expect(port(e6, 62 + 40)).toBe(3333);
    out.push(e6);
    for (const f of out) expect(checksumsOk(f)).toBe(true);
    const file = join(tempDir('naticmp'), 'err.pcap');
    writePcap(file, out.map((data, k) => ({ sec: 1, usec: k, data })));
    const rows = execFileSync('tshark', ['-r', file, '-o', 'ip.check_checksum:TRUE', '-o', 'tcp.check_checksum:TRUE', '-o', 'udp.check_checksum:TRUE',
      '-T', 'fields', '-E', 'separator=|', '-E', 'occurrence=a', '-E', 'aggregator=,', '-e', 'ip.checksum.status', '-e', 'udp.checksum.status', '-e', 'tcp.checksum.status', '-e', 'icmp.checksum.status', '-e', 'icmpv6.checksum.status'], { encoding: 'utf8' }).trim().split('\n');
    expect(rows.length).toBe(3);
    // Row by row: outer and quoted IPv4 headers good, the quoted UDP good (whole in the quote), ICMP good; IPv6: ICMPv6 good (the quoted TCP has no data to check).
    expect(rows[0]).toBe('1,1|1||1|');
    expect(rows[1]).toBe('1,1|1||1|');
    expect(rows[2].split('|')[4]).toBe('1');
  });

  it('a checksum left for the NIC (virtio-net NEEDS_CSUM, a port with offloads): NAT keeps the partial sum right, and the NIC\'s finish gives the right checksum (TCP and UDP, IPv4 and IPv6)', () => {
    const cases: [string, (sport: number) => Uint8Array, NatRange][] = [
      ['tcp4', (sp) => tcpFrame('10.0.0.1', sp, '10.0.0.2', 80, 0x18), new NatRange('src', '192.0.2.7', '192.0.2.7', 2000, 2000)],
      ['udp4', (sp) => withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x0800, ipv4({ src: '10.0.0.1', dst: '10.0.0.2', proto: 17 }, udp(sp, 53, new Uint8Array(30).fill(7))))), new NatRange('dst', '10.9.9.9', '10.9.9.9', 5353, 5353)],
      ['tcp6', (sp) => withChecksum(eth('02:00:00:00:00:02', '02:00:00:00:00:01', 0x86dd, ipv6({ src: 'fd00::1', dst: 'fd00::2', nh: 6 }, tcp(sp, 80, new Uint8Array(9).fill(3), 0x18)))), new NatRange('src', 'fd00::99', 'fd00::99', 3000, 3000)],
    ];
    for (const [name, make, nat] of cases) {
      const full = make(40000);
      const v6 = full[12] === 0x86;
      const l4 = 14 + (v6 ? 40 : 20);
      const at = l4 + (full[l4 - (v6 ? 34 : 11)] === 6 ? 16 : 6);
      // As a guest sends it with offloads: the field holds the pseudo-header's sum, uncomplemented.
      const partialOf = (f: Uint8Array) => {
        const len = f.length - l4;
        const proto = v6 ? f[14 + 6] : f[14 + 9];
        const pseudo = v6 ? concat(f.subarray(22, 54), Uint8Array.of(0, 0, len >> 8, len & 255, 0, 0, 0, proto)) : concat(f.subarray(26, 34), Uint8Array.of(0, proto, len >> 8, len & 255));
        return (~checksum(pseudo)) & 0xffff;
      };
      const frame = Uint8Array.from(full);
      const p = partialOf(frame);
      frame[at] = p >> 8; frame[at + 1] = p & 255;
      const buf = concat(Uint8Array.of(1, 0, 0, 0, 0, 0, l4, 0, at - l4, 0), frame); // flags NEEDS_CSUM, csum_start, csum_offset
      const ct = new ConnTrack({ capacity: 16 });
      const pb = new PacketBatch(1);
      pb.batchSetBuffer(buf); pb.count = 1; pb.off[0] = 10; pb.caplen[0] = frame.length; pb.wirelen[0] = frame.length; pb.inPpid[0] = 1; pb.drop[0] = 0; pb.vnet = true;
      PARSE.process(pb);
      ct.process(pb, FIRST, 1, 0, true, 1000, nat);
      expect(pb.ctState[0] & (CS_SRC_NAT | CS_DST_NAT), name).not.toBe(0);
      const out = buf.slice(10);
      // The partial sum is what the translated packet's pseudo-header sums to…
      expect((out[at] << 8) | out[at + 1], name).toBe(partialOf(out));
      // …and the NIC's finish (the segment summed with it) is the checksum summed from scratch.
      const finished = checksum(out.subarray(l4));
      const fresh = withChecksum(Uint8Array.from(out));
      expect(finished === 0 ? 0xffff : finished, name).toBe((fresh[at] << 8) | fresh[at + 1]);
      expect(port(out, l4) !== 40000 || port(out, l4 + 2) !== port(full, l4 + 2), name).toBe(true); // a port did change
    }
  });

  it('refuses a bad range, naming it', () => {
    expect(() => new NatRange('src', '10.0.0.300')).toThrow(/not a range of IPv4 or IPv6 addresses/);
    expect(() => new NatRange('src', '10.0.0.9', '10.0.0.1')).toThrow(/is empty/);
    expect(() => new NatRange('src', '10.0.0.1', '10.0.0.2', 9000, 8000)).toThrow(/ports 9000–8000/);
    expect(() => new NatRange('src', 'fd00::1', 'fd01::1')).toThrow(/last 32 bits/);
    expect(() => new NatRange('src', '10.0.0.1', 'fd00::1')).toThrow(/not a range/);
    // An IPv6 text with too many groups around "::" is refused, not a RangeError (parseIpText, shared with the topology's tunnel addresses).
    expect(() => new NatRange('src', '1:2:3:4:5:6:7:8::9')).toThrow(/not a range/);
    expect(() => new NatRange('src', '010.0.0.1')).toThrow(/not a range/);
    expect(ip4('1.2.3.4').length).toBe(4);
  });
});
