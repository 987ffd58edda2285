import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ABSENT, PacketBatch } from '../../../datapath/batch.js';
import { FRAG_ANY, FRAG_LATER, KEY_WORDS, TUN_PRESENT, W_ETH_DST_HI, W_ETH_MID, W_ETH_SRC_LO, W_ETH_TYPE, W_IP_DST, W_IP_SRC, W_TP, W_TUN, W_VLAN, ipv4ToString, ipv6ToString, macToString } from '../../../datapath/classifier/flow-key.js';
import { D, DROP_NAMES } from '../../../datapath/drops.js';
import { MappingTable } from '../../../datapath/mapping/mapping-table.js';
import { Parse, parsePacket } from '../../../datapath/parse/parse.js';
import { CaptureReader } from '../../../datapath/ports/capture-reader.js';
import { parseFrames } from '../../../fixtures/make.js';
import { eth, ipv4, ipv6, pad60, tcp, udp, vxlan, geneve, writePcap } from '../../../fixtures/packets.js';
import { CORPUS, FIXTURES, cleanTemp, needTool, tempDir, tsharkFields, tsharkProtoPositions } from '../../helpers.js';

afterAll(cleanTemp);

/** Parses every record of a capture; returns one view per packet. */
function parseFile(path: string) {
  const mapping = new MappingTable(100, 100);
  const parse = new Parse(mapping.inPortKey);
  const r = new CaptureReader(path);
  const b = new PacketBatch(32);
  const out: { key: Uint32Array; l3: number; l4: number; inner: number; vni: number; drop: number }[] = [];
  while (r.fill(b, 1) > 0) {
    parse.process(b);
    for (let i = 0; i < b.count; i++) out.push({ key: b.key.slice(i * KEY_WORDS, (i + 1) * KEY_WORDS), l3: b.l3Off[i], l4: b.l4Off[i], inner: b.innerOff[i], vni: b.vni[i], drop: b.drop[i] });
  }
  r.close();
  return out;
}

function parseOne(frame: Uint8Array, wirelen?: number) {
  const p = join(tempDir(), 'one.pcap');
  writePcap(p, [{ sec: 1, usec: 0, data: frame, wirelen }]);
  return parseFile(p)[0];
}

const first = (s: string) => (s ? s.split(',')[0] : '');
const last = (s: string) => (s ? s.split(',').at(-1)! : '');
const num = (s: string) => (s === '' ? 0 : s.startsWith('0x') ? parseInt(s, 16) : Number(s));

describe('Parse against tshark', () => {
  it('fields and header offsets of every fixture frame agree with tshark', (ctx) => {
    needTool(ctx, 'tshark', 'the reference decoder for this test');
    const path = join(FIXTURES, 'parse.pcap');
    const ours = parseFile(path);
    const fields = ['eth.dst', 'eth.src', 'vlan.id', 'vlan.etype', 'eth.type', 'ip.src', 'ip.dst', 'ip.proto', 'ipv6.src', 'ipv6.dst', 'ipv6.nxt', 'tcp.srcport', 'tcp.dstport', 'udp.srcport', 'udp.dstport', 'icmp.type', 'icmpv6.type', 'vxlan.vni', 'geneve.vni', 'arp.src.proto_ipv4', 'arp.dst.proto_ipv4', 'ip.flags.mf', 'ip.frag_offset', 'ieee8021ad.id'];
    const theirs = tsharkFields(path, fields);
    const pos = tsharkProtoPositions(path);
    expect(ours.length).toBe(parseFrames().length);
    expect(theirs.length).toBe(ours.length);
    for (let i = 0; i < ours.length; i++) {
      const o = ours[i];
      const t = Object.fromEntries(fields.map((f, j) => [f, theirs[i][j] ?? '']));
      const at = `frame ${i + 1}`;
      expect(o.drop, at).toBe(0);
      const k = o.key;
      expect(macToString(k[W_ETH_DST_HI], k[W_ETH_MID] >>> 16), at).toBe(first(t['eth.dst']));
      expect(macToString(((k[W_ETH_MID] & 0xffff) << 16 | k[W_ETH_SRC_LO] >>> 16) >>> 0, k[W_ETH_SRC_LO] & 0xffff), at).toBe(first(t['eth.src']));
      // The key keeps the outer tag: tshark calls an 802.1ad tag ieee8021ad, an 802.1Q one vlan.
      expect(k[W_VLAN] & 0xfff, at).toBe(num(first(t['ieee8021ad.id']) || first(t['vlan.id'])));
      const ethType = t['vlan.etype'] ? last(t['vlan.etype']) : first(t['eth.type']);
      expect(k[W_ETH_TYPE] >>> 16, at).toBe(num(ethType));
      const p = pos[i];
      const l3 = p.find((x) => x.name === 'ip' || x.name === 'ipv6' || x.name === 'arp');
      expect(o.l3 === ABSENT ? undefined : o.l3, at).toBe(l3?.pos);
      // Compare the outer network header only (an inner one comes later in tshark's list).
      if (t['ip.src'] && k[W_ETH_TYPE] >>> 16 === 0x0800) {
        expect(ipv4ToString(k[W_IP_SRC]), at).toBe(first(t['ip.src']));
        expect(ipv4ToString(k[W_IP_DST]), at).toBe(first(t['ip.dst']));
        expect((k[W_ETH_TYPE] >>> 8) & 0xff, at).toBe(num(first(t['ip.proto'])));
        const mf = first(t['ip.flags.mf']) === '1' || first(t['ip.flags.mf']) === 'True';
        const off = num(first(t['ip.frag_offset']));
        expect(k[W_ETH_TYPE] & 0xff, at).toBe(mf || off ? (off ? FRAG_ANY | FRAG_LATER : FRAG_ANY) : 0);
      }
      if (t['ipv6.src'] && k[W_ETH_TYPE] >>> 16 === 0x86dd) {
        expect(ipv6ToString(k, W_IP_SRC), at).toBe(first(t['ipv6.src']));
        expect(ipv6ToString(k, W_IP_DST), at).toBe(first(t['ipv6.dst']));
      }
      if (t['arp.src.proto_ipv4']) {
        expect(ipv4ToString(k[W_IP_SRC]), at).toBe(t['arp.src.proto_ipv4']);
        expect(ipv4ToString(k[W_IP_DST]), at).toBe(t['arp.dst.proto_ipv4']);
      }
      const l4 = p.find((x) => ['tcp', 'udp', 'icmp', 'icmpv6'].includes(x.name));
      // tshark does not dissect L4 in a first fragment (it waits to reassemble); we do, as OVS does.
      if (k[W_ETH_TYPE] & FRAG_LATER) expect(o.l4, at).toBe(ABSENT);
      else if (!(k[W_ETH_TYPE] & FRAG_ANY)) expect(o.l4 === ABSENT ? undefined : o.l4, at).toBe(l4?.pos);
      const sport = first(t['tcp.srcport']) || first(t['udp.srcport']);
      const dport = first(t['tcp.dstport']) || first(t['udp.dstport']);
      if (sport && !(k[W_ETH_TYPE] & FRAG_LATER)) expect([k[W_TP] >>> 16, k[W_TP] & 0xffff], at).toEqual([num(sport), num(dport)]);
      const icmpType = first(t['icmp.type']) || first(t['icmpv6.type']);
      if (icmpType) expect(k[W_TP] >>> 16, at).toBe(num(icmpType));
      const vni = first(t['vxlan.vni']) || first(t['geneve.vni']);
      // The parser records a tunnel's VNI and inner offset; the key keeps the outer headers
      // (tun_id is set only when the flag-check stage decapsulates a packet for this host).
      expect(k[W_TUN], at).toBe(0);
      if (vni) {
        expect(o.vni, at).toBe((TUN_PRESENT | num(vni)) >>> 0);
        const innerEth = p.filter((x) => x.name === 'eth')[1];
        expect(o.inner, at).toBe(innerEth.pos);
      } else {
        expect(o.vni, at).toBe(0);
        expect(o.inner, at).toBe(ABSENT);
      }
    }
  });

  it('outer headers of the corpus VXLAN and Geneve captures agree with tshark', (ctx) => {
    needTool(ctx, 'tshark', 'the reference decoder for this test');
    let checked = 0;
    for (const f of ['geneve.pcap', 'geneve-gcp.pcap', 'vxlan.pcap', 'gso-ipv4-geneve-ipv6.pcap', 'gso-ipv6-vxlan-ipv4.pcap', 'bigtcp-ipv6-geneve-ipv4.pcap', 'bigtcp-ipv4-vxlan-ipv6.pcap']) {
      const path = join(CORPUS, f);
      const ours = parseFile(path);
      const theirs = tsharkFields(path, ['vxlan.vni', 'geneve.vni', 'udp.dstport']);
      const pos = tsharkProtoPositions(path);
      for (let i = 0; i < ours.length; i++) {
        const vni = first(theirs[i][0]) || first(theirs[i][1]);
        if (!vni || ours[i].drop !== 0) continue;
        expect(ours[i].vni & 0xffffff, `${f} frame ${i + 1}`).toBe(num(vni));
        const innerEth = pos[i].filter((x) => x.name === 'eth')[1];
        if (innerEth) expect(ours[i].inner, `${f} frame ${i + 1}`).toBe(innerEth.pos);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(10);
  });
});

describe('Parse outcomes', () => {
  const A = '02:00:00:00:00:0a';
  const B = '02:00:00:00:00:0b';
  const drop = (f: Uint8Array, wl?: number) => DROP_NAMES[parseOne(f, wl).drop];

  it('a frame shorter than 14 bytes is a runt', () => {
    expect(drop(Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9, 10))).toBe('runt');
  });
  it('an IPv4 header with IHL 3 is dropped as malformed', () => {
    expect(drop(pad60(eth(B, A, 0x0800, ipv4({ src: '1.1.1.1', dst: '2.2.2.2', proto: 6, ihl: 3 }, tcp(1, 2)))))).toBe('ipv4BadHeaderLength');
  });
  it('IPv4 version 6 in an IPv4 frame is dropped', () => {
    expect(drop(eth(B, A, 0x0800, ipv4({ src: '1.1.1.1', dst: '2.2.2.2', proto: 6, version: 6 }, tcp(1, 2))))).toBe('ipv4BadVersion');
  });
  it('an IPv4 total length past the frame is dropped', () => {
    expect(drop(eth(B, A, 0x0800, ipv4({ src: '1.1.1.1', dst: '2.2.2.2', proto: 6, totalLength: 1000 }, tcp(1, 2))))).toBe('ipv4BadTotalLength');
  });
  it('a UDP length longer than the IP payload is dropped', () => {
    expect(drop(eth(B, A, 0x0800, ipv4({ src: '1.1.1.1', dst: '2.2.2.2', proto: 17 }, udp(1, 2, new Uint8Array(4), 300))))).toBe('udpBadLength');
  });
  it('a TCP data offset of 4 is dropped', () => {
    expect(drop(eth(B, A, 0x0800, ipv4({ src: '1.1.1.1', dst: '2.2.2.2', proto: 6 }, tcp(1, 2, new Uint8Array(0), 0x10, 4))))).toBe('tcpBadDataOffset');
  });
  it('an IPv6 extension header running past the packet is dropped', () => {
    const f = eth(B, A, 0x86dd, ipv6({ src: '::1', dst: '::2', nh: 0, payloadLength: 8 }, Uint8Array.of(17, 5, 0, 0, 0, 0, 0, 0)));
    expect(drop(f)).toBe('ipv6BadExtHeader');
  });
  it('a VXLAN header without the I flag is dropped', () => {
    const inner = eth(B, A, 0x0800, ipv4({ src: '1.1.1.1', dst: '2.2.2.2', proto: 17 }, udp(1, 2, new Uint8Array(8))));
    expect(drop(eth(B, A, 0x0800, ipv4({ src: '1.1.1.1', dst: '2.2.2.2', proto: 17 }, udp(9, 4789, vxlan(5, inner, 0)))))).toBe('vxlanBad');
  });
  it('Geneve options past the packet are dropped', () => {
    const g = geneve(5, new Uint8Array(0));
    g[0] = 10; // 40 bytes of options that are not there
    expect(drop(eth(B, A, 0x0800, ipv4({ src: '1.1.1.1', dst: '2.2.2.2', proto: 17 }, udp(9, 6081, g))))).toBe('geneveBad');
  });
  it('a header cut by the snap length (caplen < wirelen) stops parsing and the packet lives', () => {
    const full = eth(B, A, 0x0800, ipv4({ src: '1.1.1.1', dst: '2.2.2.2', proto: 6 }, tcp(1234, 80, new Uint8Array(100))));
    const r = parseOne(full.subarray(0, 40), full.length);
    expect(r.drop).toBe(0);
    expect(ipv4ToString(r.key[W_IP_DST])).toBe('2.2.2.2');
    expect(r.l4).toBe(ABSENT);
  });
  it('the same header cut short with caplen = wirelen is malformed', () => {
    const full = eth(B, A, 0x0800, ipv4({ src: '1.1.1.1', dst: '2.2.2.2', proto: 6, totalLength: 30 }, new Uint8Array(10)));
    expect(drop(full)).toBe('tcpTruncated');
  });
  it('an unknown ethertype keeps L2 fields only', () => {
    const r = parseOne(pad60(eth(B, A, 0x88b5, new Uint8Array(10))));
    expect(r.drop).toBe(0);
    expect(r.key[W_ETH_TYPE] >>> 16).toBe(0x88b5);
    expect(r.l3).toBe(ABSENT);
  });
  it('drop reason names are unique and 0 means not dropped', () => {
    expect(DROP_NAMES[0]).toBe('none');
    expect(D.runt).toBeGreaterThan(0);
    expect(new Set(DROP_NAMES).size).toBe(DROP_NAMES.length);
  });
});

describe('Parse of tunnelled corpus captures, inner headers', () => {
  it('the inner frame of every VXLAN/Geneve packet parses to what tshark shows inside', (ctx) => {
    needTool(ctx, 'tshark', 'the reference decoder for this test');
    let checked = 0;
    for (const f of ['geneve.pcap', 'geneve-gcp.pcap', 'vxlan.pcap', 'gso-ipv4-geneve-ipv4.pcap', 'gso-ipv6-vxlan-ipv4.pcap']) {
      const path = join(CORPUS, f);
      const mapping = new MappingTable(100, 100);
      const r = new CaptureReader(path);
      const b = new PacketBatch(1);
      const theirs = tsharkFields(path, ['eth.dst', 'ip.src', 'ip.dst', 'ipv6.src', 'ipv6.dst']);
      for (let n = 0; r.fill(b, 1) > 0; n++) {
        new Parse(mapping.inPortKey).process(b);
        if (b.drop[0] !== 0 || b.innerOff[0] === ABSENT) continue;
        // Decapsulate as the flag-check stage does, then parse the inner frame.
        b.off[0] += b.innerOff[0];
        b.caplen[0] -= b.innerOff[0];
        b.wirelen[0] -= b.innerOff[0];
        if (parsePacket(b, 0, mapping.inPortKey) !== 0) continue;
        const t = theirs[n].map((x) => x.split(','));
        const at = `${f} frame ${n + 1}`;
        expect(macToString(b.key[W_ETH_DST_HI], b.key[W_ETH_MID] >>> 16), at).toBe(t[0].at(-1));
        const et = b.key[W_ETH_TYPE] >>> 16;
        if (et === 0x0800) {
          expect(ipv4ToString(b.key[W_IP_SRC]), at).toBe(t[1].at(-1));
          expect(ipv4ToString(b.key[W_IP_DST]), at).toBe(t[2].at(-1));
        } else if (et === 0x86dd) {
          expect(ipv6ToString(b.key, W_IP_SRC), at).toBe(t[3].at(-1));
          expect(ipv6ToString(b.key, W_IP_DST), at).toBe(t[4].at(-1));
        }
        checked++;
      }
      r.close();
    }
    expect(checked).toBeGreaterThan(10);
  });
});

describe('Parse fast path', () => {
  it('the straight-line IPv4 path writes what parseOne writes, for random and mutated packets (property)', async () => {
    const fc = (await import('fast-check')).default;
    const mapping = new MappingTable(100, 100);
    const parse = new Parse(mapping.inPortKey);
    const a = new PacketBatch(1);
    const b = new PacketBatch(1);
    // TCP, UDP (plain, VXLAN, Geneve), ICMP, ICMPv6 carried in IPv4, GRE, hop-by-hop (0)
    const l4 = fc.constantFrom(6, 17, 1, 58, 47, 0);
    fc.assert(fc.property(l4, fc.integer({ min: 0, max: 65535 }), fc.integer({ min: 0, max: 65535 }), fc.array(fc.tuple(fc.integer({ min: 0, max: 80 }), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }), fc.integer({ min: 0, max: 12 }), fc.boolean(), (proto, sport, dport, flips, cut, snap) => {
      // Other protocols get 0..7 bytes of payload too: a transport header cut short by the IP length.
      const payload = proto === 6 ? tcp(sport, dport, new Uint8Array(8)) : proto === 17 ? udp(sport, [dport, 4789, 6081][sport % 3], new Uint8Array(10)) : new Uint8Array(dport % 3 === 0 ? dport % 8 : 24).fill(sport & 255);
      const frame = eth('02:00:00:00:00:01', '02:00:00:00:00:02', 0x0800, ipv4({ src: '10.1.2.3', dst: '10.4.5.6', proto }, payload));
      for (const [at, v] of flips) frame[14 + (at % (frame.length - 14))] = v; // mutate IP and L4 header bytes
      const cl = Math.max(0, frame.length - cut);
      for (const batch of [a, b]) {
        batch.batchSetBuffer(frame);
        batch.count = 1;
        batch.off[0] = 0;
        batch.caplen[0] = cl;
        batch.wirelen[0] = snap ? frame.length : cl;
        batch.inPpid[0] = 3;
        batch.drop[0] = 0;
      }
      parse.process(a);
      const r = parsePacket(b, 0, mapping.inPortKey);
      expect(a.drop[0]).toBe(r > 0 ? r : 0);
      if (r > 0) return;
      expect([...a.key]).toEqual([...b.key]);
      expect([a.l3Off[0], a.l4Off[0], a.innerOff[0], a.vni[0]]).toEqual([b.l3Off[0], b.l4Off[0], b.innerOff[0], b.vni[0]]);
    }), { numRuns: 5000 });
  });
});
