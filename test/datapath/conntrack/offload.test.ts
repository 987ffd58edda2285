import { describe, expect, it } from 'vitest';
import { PacketBatch } from '../../../datapath/batch.js';
import { Datapath, type TxPort } from '../../../datapath/datapath.js';
import { addrWords } from '../../../datapath/conntrack/nat.js';
import type { OffloadRoute } from '../../../datapath/conntrack/offload.js';
import { Fpag } from '../../../control/fpag.js';
import { parseMac, topologyFrom } from '../../../control/topology.js';
import { checksum, concat, eth, icmpEcho, ip4, ipv4 } from '../../../fixtures/packets.js';

// A service VM (svc: "in" on the inside segment, "out" on the outside one) between a client
// and a server, all on ports of one datapath with the FPAG's L2 forwarding. The VM masquerades
// the client's connections to its outside address; a connection it handed over is served by
// the offload stage. Frames are built here, sent in as batches, and what each port sends is kept.

const CLIENT = { mac: '02:00:00:00:01:01', ip: '10.1.0.2' };
const SVC_IN = { mac: '02:00:00:00:0a:01', ip: '10.1.0.1' };
const SVC_OUT = { mac: '02:00:00:00:0a:02', ip: '10.2.0.1' };
const SERVER = { mac: '02:00:00:00:02:01', ip: '10.2.0.2' };
const ZONE = 7;

const topo = topologyFrom({
  name: 'offload',
  ports: [1, 2, 3, 4].map((p) => ({ name: `p${p}`, ppid: p })),
  segments: [{ name: 'inside' }, { name: 'outside' }],
  nodes: [
    { name: 'client', interfaces: [{ name: 'client-eth0', ...CLIENT, segment: 'inside', port: 'p1' }] },
    { name: 'svc', interfaces: [
      { name: 'svc-in', ...SVC_IN, segment: 'inside', port: 'p2', portSecurity: false },
      { name: 'svc-out', ...SVC_OUT, segment: 'outside', port: 'p3', portSecurity: false },
    ] },
    { name: 'server', interfaces: [{ name: 'server-eth0', ...SERVER, segment: 'outside', port: 'p4' }] },
  ],
}, 'offload-test');
const vpid = (name: string) => topo.interfaces.find((i) => i.name === name)!.vpid;

/** A TCP segment with a right checksum. */
function tcpSeg(src: string, dst: string, sport: number, dport: number, flags: number, payload = new Uint8Array(0), seq = 1000, ack = 1): Uint8Array {
  const h = new Uint8Array(20);
  const dv = new DataView(h.buffer);
  dv.setUint16(0, sport); dv.setUint16(2, dport); dv.setUint32(4, seq); dv.setUint32(8, ack);
  h[12] = 5 << 4; h[13] = flags; dv.setUint16(14, 65535);
  const seg = concat(h, payload);
  const pseudo = concat(ip4(src), ip4(dst), Uint8Array.of(0, 6, seg.length >> 8, seg.length & 255));
  const sum = checksum(concat(pseudo, seg));
  seg[16] = sum >> 8;
  seg[17] = sum & 255;
  return seg;
}

/** Whether the IPv4 header and TCP checksums of an Ethernet frame are right. */
function checksumsRight(f: Uint8Array): boolean {
  const ip = f.subarray(14, 34);
  if (checksum(ip) !== 0) return false;
  const seg = f.subarray(34, 14 + ((ip[2] << 8) | ip[3]));
  if (ip[9] !== 6) return true;
  const pseudo = concat(ip.subarray(12, 20), Uint8Array.of(0, 6, seg.length >> 8, seg.length & 255));
  return checksum(concat(pseudo, seg)) === 0;
}

/** Per VPID, its interface's segment number, as the control plane gives it to the offload stage (handover.ts). */
function segments(): Uint16Array {
  const seg = new Uint16Array(65536);
  for (const itf of topo.interfaces) seg[itf.vpid] = itf.segment === 'inside' ? 1 : 2;
  return seg;
}

function rig(offloading = true) {
  const dp = new Datapath({ batchCapacity: 32, conntrackCapacity: 64 });
  if (offloading) dp.offload.setSegments(segments());
  const sent = new Map<number, Uint8Array[]>();
  for (const p of topo.ports) {
    const tx: TxPort = {
      writeBatch(b, idx, from, n) {
        for (let j = from; j < from + n; j++) {
          const i = idx[j];
          (sent.get(p.ppid) ?? sent.set(p.ppid, []).get(p.ppid)!).push(b.buf.slice(b.off[i], b.off[i] + b.caplen[i]));
        }
      },
    };
    dp.addPort(p.ppid, tx);
  }
  const fpag = new Fpag(topo, dp);
  fpag.start();
  const batch = new PacketBatch(32);
  /** Sends frames in on port ppid as one batch; returns what each port sent. */
  const send = (ppid: number, frames: Uint8Array[], now = 1000) => {
    sent.clear();
    let total = 0;
    for (const f of frames) total += f.length + 16;
    const buf = new Uint8Array(total);
    let at = 0;
    frames.forEach((f, i) => { at += 16; buf.set(f, at); batch.off[i] = at; batch.caplen[i] = f.length; batch.wirelen[i] = f.length; batch.inPpid[i] = ppid; batch.drop[i] = 0; at += f.length; });
    batch.batchSetBuffer(buf);
    batch.count = frames.length;
    batch.vnet = false;
    dp.process(batch, now);
    return sent;
  };
  return { dp, send };
}

const route = (out: string, src: string, nh: string): OffloadRoute => ({ outVpid: vpid(out), srcMac: parseMac(src), nextHopMac: parseMac(nh) });
/** The client's connection to the server's port 5201, masqueraded to the VM's outside address (port kept). */
function tuples(sport = 40000, zone = ZONE) {
  const w = (a: string) => addrWords(a)!.words;
  const orig = new Uint32Array(10);
  orig[0] = ((zone << 16) | (6 << 8) | 4) >>> 0; orig.set(w(CLIENT.ip), 1); orig.set(w(SERVER.ip), 5); orig[9] = ((sport << 16) | 5201) >>> 0;
  const reply = new Uint32Array(10);
  reply[0] = orig[0]; reply.set(w(SERVER.ip), 1); reply.set(w(SVC_OUT.ip), 5); reply[9] = ((5201 << 16) | sport) >>> 0;
  return { orig, reply };
}
const ROUTES = { orig: route('svc-out', SVC_OUT.mac, SERVER.mac), reply: route('svc-in', SVC_IN.mac, CLIENT.mac) };

const fromClient = (flags: number, opts: { ttl?: number; sport?: number; data?: number } = {}) =>
  eth(SVC_IN.mac, CLIENT.mac, 0x0800, ipv4({ src: CLIENT.ip, dst: SERVER.ip, proto: 6, ttl: opts.ttl }, tcpSeg(CLIENT.ip, SERVER.ip, opts.sport ?? 40000, 5201, flags, new Uint8Array(opts.data ?? 100))));
const fromServer = (flags: number) =>
  eth(SVC_OUT.mac, SERVER.mac, 0x0800, ipv4({ src: SERVER.ip, dst: SVC_OUT.ip, proto: 6 }, tcpSeg(SERVER.ip, SVC_OUT.ip, 5201, 40000, flags, new Uint8Array(0), 5000, 1100)));

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const ipOf = (f: Uint8Array, at: number) => [...f.subarray(at, at + 4)].join('.');
const macOf = (f: Uint8Array, at: number) => [...f.subarray(at, at + 6)].map((x) => x.toString(16).padStart(2, '0')).join(':');

describe('Offload: a connection the service VM handed over', () => {
  it('before the hand-over the client\'s packets go to the service VM unchanged; the stage is not even run', () => {
    const { dp, send } = rig(false);
    const f = fromClient(0x10);
    const out = send(1, [f]);
    expect([...out.keys()]).toEqual([2]);
    expect(hex(out.get(2)![0])).toBe(hex(f));
    expect(dp.hasOffload).toBe(false);
  });

  it('once adopted, its packets go straight between client and server as the VM would send them: masquerade, TTL one less, MACs, checksums right', () => {
    const { dp, send } = rig();
    const { orig, reply } = tuples();
    expect(dp.offload.adopt(orig, reply, 1000, 60_000, ROUTES)).toBeGreaterThanOrEqual(0);
    dp.offload.enable(vpid('svc-in'), parseMac(SVC_IN.mac), ZONE);
    dp.offload.enable(vpid('svc-out'), parseMac(SVC_OUT.mac), ZONE);
    expect(checksumsRight(fromClient(0x10))).toBe(true);
    expect(checksumsRight(fromServer(0x10))).toBe(true);
    const out = send(1, [fromClient(0x10), fromClient(0x18)]);
    expect(checksum(out.get(4)![0].subarray(14, 34))).toBe(0);
    expect([...out.keys()]).toEqual([4]); // the server's port, not the VM's
    for (const f of out.get(4)!) {
      expect(macOf(f, 0)).toBe(SERVER.mac);
      expect(macOf(f, 6)).toBe(SVC_OUT.mac);
      expect(ipOf(f, 26)).toBe(SVC_OUT.ip); // masqueraded
      expect(ipOf(f, 30)).toBe(SERVER.ip);
      expect(f[22]).toBe(63);
      expect(checksumsRight(f)).toBe(true);
    }
    const back = send(4, [fromServer(0x10)]);
    expect([...back.keys()]).toEqual([1]);
    const r = back.get(1)![0];
    expect(macOf(r, 0)).toBe(CLIENT.mac);
    expect(macOf(r, 6)).toBe(SVC_IN.mac);
    expect(ipOf(r, 26)).toBe(SERVER.ip);
    expect(ipOf(r, 30)).toBe(CLIENT.ip); // translated back
    expect(checksumsRight(r)).toBe(true);
    expect(dp.offload.stats.served).toBe(3);
    const [c] = dp.conntrack.list(1000);
    expect(c.owner).toBe('vnic');
    expect(c.nat).toBe('src');
    expect(c.packets).toEqual([2, 1]);
    const st = dp.stats();
    expect(st.packetsIn).toBe(3);
    expect(st.packetsIn).toBe(st.delivered + st.dropped);
  });

  it('served before the fast lane: the served packet counts as received on the client\'s port, not the VM\'s, and goes out on the server\'s', () => {
    const { dp, send } = rig();
    const { orig, reply } = tuples();
    dp.offload.adopt(orig, reply, 1000, 60_000, ROUTES);
    dp.offload.enable(vpid('svc-in'), parseMac(SVC_IN.mac), ZONE);
    dp.offload.enable(vpid('svc-out'), parseMac(SVC_OUT.mac), ZONE);
    const f = fromClient(0x10);
    const out = send(1, [f, fromClient(0x10, { sport: 40001 })]);
    expect(out.get(4)!.length).toBe(1); // served: to the server
    expect(out.get(2)!.length).toBe(1); // another connection: to the VM
    const port = (ppid: number) => dp.stats().ports.find((p) => p.ppid === ppid)!;
    expect(port(1).rxPackets).toBe(2);
    expect(port(1).rxBytes).toBe(2 * f.length);
    expect(port(3).rxPackets).toBe(0); // the VM's outside port received nothing
    expect(port(4).txPackets).toBe(1);
    const st = dp.stats();
    expect(st.packetsIn).toBe(st.delivered + st.dropped);
  });

  it('a frame from the other segment addressed to the VM\'s interface, or by the wrong one of its interfaces, is not served (L2 would never have given it to the VM there)', () => {
    const { dp, send } = rig();
    const { orig, reply } = tuples();
    dp.offload.adopt(orig, reply, 1000, 60_000, ROUTES);
    dp.offload.enable(vpid('svc-in'), parseMac(SVC_IN.mac), ZONE);
    dp.offload.enable(vpid('svc-out'), parseMac(SVC_OUT.mac), ZONE);
    // The client's own frame, sent in on the server's port (the outside segment): a spoofed injection.
    const spoof = fromClient(0x10);
    const out = send(4, [spoof]);
    expect(out.has(4)).toBe(false);
    expect(dp.offload.stats.served).toBe(0);
    expect(dp.offload.stats.toGuestWrongSide).toBe(1);
    // The server's answer addressed to the VM's inside MAC (the wrong interface for its direction), from the outside.
    const wrong = fromServer(0x10);
    wrong.set(parseMac(SVC_IN.mac), 0);
    send(4, [wrong]);
    expect(dp.offload.stats.served).toBe(0);
    expect(dp.offload.stats.toGuestWrongSide).toBe(2);
    // The real thing is served.
    expect(send(1, [fromClient(0x10)]).get(4)!.length).toBe(1);
    const st = dp.stats();
    expect(st.packetsIn).toBe(st.delivered + st.dropped);
  });

  it('TTL 1, another connection, another zone\'s MAC: to the service VM unchanged; each packet counted once', () => {
    const { dp, send } = rig();
    const { orig, reply } = tuples();
    dp.offload.adopt(orig, reply, 1000, 60_000, ROUTES);
    dp.offload.enable(vpid('svc-in'), parseMac(SVC_IN.mac), ZONE + 1); // this MAC serves another zone
    const frames = [fromClient(0x10, { ttl: 1 }), fromClient(0x10, { sport: 40001 }), fromClient(0x10)];
    const out = send(1, frames);
    expect([...out.keys()]).toEqual([2]);
    expect(out.get(2)!.map(hex)).toEqual(frames.map(hex));
    dp.offload.enable(vpid('svc-in'), parseMac(SVC_IN.mac), ZONE);
    const out2 = send(1, frames);
    expect(out2.get(2)!.map(hex)).toEqual(frames.slice(0, 2).map(hex));
    expect(out2.get(4)!.length).toBe(1);
    expect(dp.offload.stats.toGuestTtl).toBe(1);
    const st = dp.stats();
    expect(st.packetsIn).toBe(6);
    expect(st.delivered + st.dropped).toBe(6);
  });

  it('a FIN hands the connection back: the FIN and every later packet go to the VM unchanged, and the control plane learns it once', () => {
    const { dp, send } = rig();
    const { orig, reply } = tuples();
    const id = dp.offload.adopt(orig, reply, 1000, 60_000, ROUTES);
    dp.offload.enable(vpid('svc-in'), parseMac(SVC_IN.mac), ZONE);
    dp.offload.enable(vpid('svc-out'), parseMac(SVC_OUT.mac), ZONE);
    expect(send(1, [fromClient(0x10)]).get(4)!.length).toBe(1);
    const fin = fromClient(0x11);
    const later = fromClient(0x10);
    const out = send(1, [fin, later]);
    expect(out.get(2)!.map(hex)).toEqual([hex(fin), hex(later)]);
    expect(out.has(4)).toBe(false);
    expect(dp.offload.takeHandBack()).toEqual({ id, why: 'fin' });
    expect(dp.offload.takeHandBack()).toBeNull();
    expect(dp.offload.active).toBe(0);
    expect(dp.conntrack.count).toBe(0);
    // The fast lane is back for the batch after: the server's answer goes to the VM as it was.
    const ack = fromServer(0x10);
    expect(hex(send(4, [ack]).get(3)![0])).toBe(hex(ack));
  });

  it('a reset hands it back too; an adopted connection that expires is handed back by the clock with no packet of its own', () => {
    const { dp, send } = rig();
    const a = tuples(40000);
    const id = dp.offload.adopt(a.orig, a.reply, 1000, 60_000, ROUTES);
    dp.offload.enable(vpid('svc-in'), parseMac(SVC_IN.mac), ZONE);
    send(1, [fromClient(0x14)]);
    expect(dp.offload.takeHandBack()).toEqual({ id, why: 'rst' });
    const b = tuples(40002);
    const id2 = dp.offload.adopt(b.orig, b.reply, 1000, 2_000, ROUTES);
    dp.tick(1500);
    expect(dp.offload.takeHandBack()).toBeNull();
    dp.tick(5000);
    expect(dp.offload.takeHandBack()).toEqual({ id: id2, why: 'ended' });
    expect(dp.offload.active).toBe(0);
  });

  it('a flush of the zone hands its offloaded connections back', () => {
    const { dp } = rig();
    const a = tuples(40000);
    const id = dp.offload.adopt(a.orig, a.reply, 1000, 60_000, ROUTES);
    expect(dp.conntrack.flush(ZONE)).toBe(1);
    expect(dp.offload.takeHandBack()).toEqual({ id, why: 'ended' });
  });

  it('a checksum the client left for the NIC (virtio-net NEEDS_CSUM: the pseudo-header\'s sum) is the translated pseudo-header\'s sum after', () => {
    const { dp } = rig();
    const { orig, reply } = tuples();
    dp.offload.adopt(orig, reply, 1000, 60_000, ROUTES);
    dp.offload.enable(vpid('svc-in'), parseMac(SVC_IN.mac), ZONE);
    const pseudoSum = (src: string, dst: string, len: number) => ~checksum(concat(ip4(src), ip4(dst), Uint8Array.of(0, 6, len >> 8, len & 255))) & 0xffff;
    const f = fromClient(0x10);
    const segLen = f.length - 34;
    f[34 + 16] = pseudoSum(CLIENT.ip, SERVER.ip, segLen) >> 8;
    f[34 + 17] = pseudoSum(CLIENT.ip, SERVER.ip, segLen) & 255;
    const buf = concat(Uint8Array.of(1, 0, 54, 0, 0, 0, 34, 0, 16, 0), f); // flags NEEDS_CSUM, csum_start 34, csum_offset 16
    const b = new PacketBatch(1);
    b.batchSetBuffer(buf);
    b.count = 1; b.off[0] = 10; b.caplen[0] = f.length; b.wirelen[0] = f.length; b.inPpid[0] = 1; b.drop[0] = 0; b.vnet = true;
    dp.process(b, 1000);
    const out = buf.subarray(10);
    expect(ipOf(out, 26)).toBe(SVC_OUT.ip);
    expect((out[34 + 16] << 8) | out[34 + 17]).toBe(pseudoSum(SVC_OUT.ip, SERVER.ip, segLen));
  });

  it('an ICMP echo connection handed over is served too (ping through the VM)', () => {
    const { dp, send } = rig();
    const w = (a: string) => addrWords(a)!.words;
    const orig = new Uint32Array(10);
    orig[0] = ((ZONE << 16) | (1 << 8) | 4) >>> 0; orig.set(w(CLIENT.ip), 1); orig.set(w(SERVER.ip), 5); orig[9] = ((77 << 16) | (8 << 8)) >>> 0;
    const reply = new Uint32Array(10);
    reply[0] = orig[0]; reply.set(w(SERVER.ip), 1); reply.set(w(SVC_OUT.ip), 5); reply[9] = ((77 << 16) | (0 << 8)) >>> 0;
    dp.offload.adopt(orig, reply, 1000, 30_000, ROUTES);
    dp.offload.enable(vpid('svc-in'), parseMac(SVC_IN.mac), ZONE);
    const ping = eth(SVC_IN.mac, CLIENT.mac, 0x0800, ipv4({ src: CLIENT.ip, dst: SERVER.ip, proto: 1 }, icmpEcho(8, 77, 1)));
    const out = send(1, [ping]);
    const f = out.get(4)![0];
    expect(ipOf(f, 26)).toBe(SVC_OUT.ip);
    expect(checksum(f.subarray(14, 34))).toBe(0);
    expect(checksum(f.subarray(34))).toBe(0);
  });
});
