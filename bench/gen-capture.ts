/**
 * Synthetic captures for the benchmarks: N frames of one size over F flows
 * to M VMs, plain or VXLAN/Geneve-encapsulated, written as a classic pcap in
 * 4 MiB chunks (10 million 64-byte frames take a few seconds), and the
 * topology those VMs live in (segment s0 carried as VNI 5000, tunnel endpoint
 * 192.168.0.1, the outer destination of the generated tunnel frames).
 *
 *   node dist/bench/gen-capture.js OUT.pcap --frames N --size BYTES --flows F --vms M [--tunnel vxlan|geneve] [--flagged PCT]
 *
 * Flow f is (10.1.x.y:sport → VM f%M's IP:dport), UDP; frame i belongs to flow
 * (i * 2654435761) % F, so flows interleave as they would on a real link.
 * With --tunnel, each frame is the outer Ethernet/IPv4/UDP/tunnel header
 * around the inner frame, to the host's uplink MAC, and the frame size counts
 * the whole outer frame. --flagged marks that share of tunnelled frames with
 * the special-processing flag (a Geneve option or the VXLAN reserved bit).
 */
import { closeSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { parseArgs } from 'node:util';

export interface GenOptions {
  frames: number;
  size: number;
  flows: number;
  vms: number;
  tunnel?: 'vxlan' | 'geneve';
  /** Percent of tunnelled frames carrying the special-processing flag. */
  flagged?: number;
}

const CHUNK = 4 << 20;
export const UPLINK_MAC = [0x02, 0xfe, 0, 0, 0, 1];
/** The benchmark host's tunnel endpoint (192.168.0.1) and its segment's VNI. */
export const BENCH_VTEP = '192.168.0.1';
export const BENCH_VNI = 5000;
export const GENEVE_FLAG_CLASS = 0xfff0;
export const GENEVE_FLAG_TYPE = 0x01;

export function vmMac(m: number): number[] {
  return [0x02, 0x00, (m >> 16) & 255, (m >> 8) & 255, m & 255, 0x01];
}

export function vmIp(m: number): number {
  return (10 << 24) | (2 << 16) | (((m + 1) >> 8) << 8) | ((m + 1) & 255);
}

function csum(b: Uint8Array, off: number, len: number): number {
  let s = 0;
  for (let i = 0; i < len; i += 2) s += (b[off + i] << 8) | b[off + i + 1];
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/** Writes an Ethernet/IPv4/UDP frame of `size` bytes at `o`; returns the next offset. */
function writeFrame(b: Uint8Array, o: number, size: number, dst: number[], src: number[], ipSrc: number, ipDst: number, sport: number, dport: number): void {
  b.set(dst, o);
  b.set(src, o + 6);
  b[o + 12] = 0x08; b[o + 13] = 0x00;
  const ip = o + 14;
  const ipLen = size - 14;
  b[ip] = 0x45; b[ip + 1] = 0;
  b[ip + 2] = ipLen >> 8; b[ip + 3] = ipLen & 255;
  b[ip + 4] = 0; b[ip + 5] = 1; b[ip + 6] = 0x40; b[ip + 7] = 0;
  b[ip + 8] = 64; b[ip + 9] = 17; b[ip + 10] = 0; b[ip + 11] = 0;
  b[ip + 12] = ipSrc >>> 24; b[ip + 13] = (ipSrc >> 16) & 255; b[ip + 14] = (ipSrc >> 8) & 255; b[ip + 15] = ipSrc & 255;
  b[ip + 16] = ipDst >>> 24; b[ip + 17] = (ipDst >> 16) & 255; b[ip + 18] = (ipDst >> 8) & 255; b[ip + 19] = ipDst & 255;
  const c = csum(b, ip, 20);
  b[ip + 10] = c >> 8; b[ip + 11] = c & 255;
  const u = ip + 20;
  const uLen = ipLen - 20;
  b[u] = sport >> 8; b[u + 1] = sport & 255; b[u + 2] = dport >> 8; b[u + 3] = dport & 255;
  b[u + 4] = uLen >> 8; b[u + 5] = uLen & 255; b[u + 6] = 0; b[u + 7] = 0;
}

/** Writes the capture; returns its size in bytes. */
export function generate(path: string, o: GenOptions): number {
  if (o.size < 64 || o.size > 9000) throw new Error(`--size ${o.size}: expected 64..9000`);
  const outer = o.tunnel ? 14 + 20 + 8 + (o.tunnel === 'vxlan' ? 8 : 16) : 0;
  if (o.size - outer < 60) throw new Error(`--size ${o.size}: too small for a ${o.tunnel} frame (at least ${outer + 60})`);
  const buf = new Uint8Array(CHUNK + 16 + o.size);
  const fd = openSync(path, 'w');
  const hdr = new DataView(buf.buffer);
  hdr.setUint32(0, 0xa1b2c3d4, true); hdr.setUint16(4, 2, true); hdr.setUint16(6, 4, true);
  hdr.setUint32(16, 65535, true); hdr.setUint32(20, 1, true);
  let used = 24;
  let total = 0;
  const flagEvery = o.flagged ? Math.round(100 / o.flagged) : 0;
  const extSrc = [0x02, 0xee, 0, 0, 0, 1];
  for (let i = 0; i < o.frames; i++) {
    const f = Number((BigInt(i) * 2654435761n) % BigInt(o.flows));
    const m = f % o.vms;
    hdr.setUint32(used, 1_700_000_000 + Math.floor(i / 1_000_000), true);
    hdr.setUint32(used + 4, i % 1_000_000, true);
    hdr.setUint32(used + 8, o.size, true);
    hdr.setUint32(used + 12, o.size, true);
    const p = used + 16;
    const ipSrc = (10 << 24) | (1 << 16) | ((f >> 16) & 0xff) << 8 | ((f >> 8) & 0xff);
    const sport = 1024 + (f & 0xff);
    if (!o.tunnel) {
      writeFrame(buf, p, o.size, vmMac(m), extSrc, ipSrc, vmIp(m), sport, 5001);
    } else {
      const inner = p + outer;
      writeFrame(buf, inner, o.size - outer, vmMac(m), extSrc, ipSrc, vmIp(m), sport, 5001);
      const flagged = flagEvery > 0 && i % flagEvery === 0;
      const hash = (f * 2654435761) >>> 16;
      writeFrame(buf, p, o.size, UPLINK_MAC, [0x02, 0xfe, 0, 0, 0, 2], 0xc0a80002, 0xc0a80001, 49152 | (hash & 0x3fff), o.tunnel === 'vxlan' ? 4789 : 6081);
      const t = p + 42;
      const vni = BENCH_VNI;
      if (o.tunnel === 'vxlan') {
        buf[t] = 0x08; buf[t + 1] = flagged ? 0x80 : 0; buf[t + 2] = 0; buf[t + 3] = 0;
        buf[t + 4] = vni >> 16; buf[t + 5] = (vni >> 8) & 255; buf[t + 6] = vni & 255; buf[t + 7] = 0;
      } else {
        // Geneve with one 4-byte option slot: the flag option when flagged, else a padding option of class 0xffff.
        buf[t] = 2; buf[t + 1] = 0; buf[t + 2] = 0x65; buf[t + 3] = 0x58;
        buf[t + 4] = vni >> 16; buf[t + 5] = (vni >> 8) & 255; buf[t + 6] = vni & 255; buf[t + 7] = 0;
        const cls = flagged ? GENEVE_FLAG_CLASS : 0xffff;
        buf[t + 8] = cls >> 8; buf[t + 9] = cls & 255; buf[t + 10] = flagged ? GENEVE_FLAG_TYPE : 0; buf[t + 11] = 1;
        buf[t + 12] = 0; buf[t + 13] = 0; buf[t + 14] = 0; buf[t + 15] = 0;
      }
    }
    used += 16 + o.size;
    if (used >= CHUNK) {
      total += writeAll(fd, buf, used);
      used = 0;
    }
  }
  total += writeAll(fd, buf, used);
  closeSync(fd);
  return total;
}

function writeAll(fd: number, b: Uint8Array, n: number): number {
  let done = 0;
  while (done < n) done += writeSync(fd, b, done, n - done);
  return n;
}

/**
 * The topology of a benchmark host: one uplink, M VMs on one segment, and
 * one ACL rule on the source address and port. Every upcall looks at that
 * rule, and with `wildcarding: "rule-fields"` (the default here) every
 * megaflow's mask covers the fields it names: F flows in the capture make F
 * flows in the datapath (as a firewall policy does on a real host), what the
 * set-up benches need. With "proof" (fpo's default) a packet that misses the
 * rule adds only the prefix that proves it: F flows make one megaflow per VM.
 */
export function benchTopology(vms: number, wildcarding: 'proof' | 'rule-fields' = 'rule-fields'): { ports: object[]; nodes: object[]; [k: string]: unknown } {
  const ports: object[] = [{ name: 'uplink0', ppid: 1, role: 'uplink', segments: ['s0'] }];
  const nodes: object[] = [];
  for (let m = 0; m < vms; m++) {
    ports.push({ name: `vf${m}`, ppid: 10 + m });
    const ip = vmIp(m);
    nodes.push({ name: `vm${m}`, interfaces: [{ name: `vm${m}-eth0`, mac: vmMac(m).map((x) => x.toString(16).padStart(2, '0')).join(':'), ip: `${ip >>> 24}.${(ip >> 16) & 255}.${(ip >> 8) & 255}.${ip & 255}`, segment: 's0', port: `vf${m}` }] });
  }
  const rules = [{ priority: 100, comment: 'ACL: one blocked source', match: { eth_type: '0x0800', ipv4_src: '192.0.2.1', ip_proto: 17, tp_src: 7 }, actions: ['drop'] }];
  return { name: `bench-${vms}`, ports, segments: [{ name: 's0', vni: BENCH_VNI }], nodes, rules, tunnel: { vtep: BENCH_VTEP }, replay: { inputPort: 'uplink0' }, wildcarding };
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!)) {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { frames: { type: 'string', default: '1000000' }, size: { type: 'string', default: '64' }, flows: { type: 'string', default: '1000' }, vms: { type: 'string', default: '8' }, tunnel: { type: 'string' }, flagged: { type: 'string' }, topology: { type: 'string' } },
  });
  const out = positionals[0] ?? 'bench.pcap';
  const t0 = performance.now();
  const bytes = generate(out, { frames: Number(values.frames), size: Number(values.size), flows: Number(values.flows), vms: Number(values.vms), tunnel: values.tunnel as GenOptions['tunnel'], flagged: values.flagged ? Number(values.flagged) : undefined });
  if (values.topology) writeFileSync(values.topology, JSON.stringify(benchTopology(Number(values.vms)), null, 1));
  process.stdout.write(JSON.stringify({ bench: 'gen-capture', file: out, frames: Number(values.frames), bytes, seconds: (performance.now() - t0) / 1000 }) + '\n');
}
