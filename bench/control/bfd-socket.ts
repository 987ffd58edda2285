/**
 * How the BFD endpoint reads packets whose TTL it must check (RFC 5881 §5):
 * the raw IPv4/UDP socket it opens through koffi, with a classic BPF filter
 * that keeps only UDP to the endpoint's address and port, drained every
 * millisecond (control/bfd/endpoint.ts) — against the npm `raw-socket`
 * addon (a raw socket whose readiness is a libuv poll watcher, a recvfrom
 * and a 'message' event a packet; it has no way to attach a filter, its
 * setOption taking no pointer, and no recvmsg for IP_RECVTTL).
 *
 * A sender process sends BFD-sized packets (24 bytes, TTL 255) to the
 * endpoint's port on 127.0.0.1, and with them FOREIGN times as many to
 * another port (a busy switch's VXLAN traffic, which a raw UDP socket sees
 * too). The receiver counts the BFD packets it accepted and the CPU time it
 * spent (process.cpuUsage), per accepted packet. Root. One JSON line per
 * reader; `raw-socket` is measured when it is installed (it is not a
 * dependency: npm i --no-save raw-socket, with its install script allowed).
 *
 *   node dist/bench/control/bfd-socket.js        (FPO_BENCH_SHORT=1: fewer packets)
 */
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { libc } from '../../datapath/ports/libc.js';
import { SHORT, emit } from '../harness.js';

const require = createRequire(import.meta.url);
const PORT = 3784;
const N = SHORT ? 20_000 : 200_000;
/** Foreign packets a BFD packet: none (BFD alone), and 4 (beside tunnel traffic). */
let FOREIGN = 0;
const LOCAL = 0x7f000001;

/** A child that sends N BFD-sized packets to PORT and FOREIGN×N to 4789, TTL 255, in bursts. */
function sender(): Promise<void> {
  const code = `
    const d = require('dgram'); const s = d.createSocket('udp4'); const b = Buffer.alloc(24, 0x20);
    s.bind(0, '127.0.0.1', () => { s.setTTL(255); let k = 0; let pending = 0;
      const burst = () => { for (let i = 0; i < 200 && k < ${N}; i++, k++) { for (let f = 0; f <= ${FOREIGN}; f++) { pending++; s.send(b, f === 0 ? ${PORT} : 4789, '127.0.0.1', () => { if (--pending === 0 && k >= ${N}) s.close(); }); } }
        if (k < ${N}) setTimeout(burst, 1); };
      burst(); });`;
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['-e', code], { stdio: 'inherit' });
    p.on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`sender exited ${c}`))));
  });
}

/** The endpoint's way: raw socket + kernel filter, read() through koffi every millisecond. */
async function koffiReader(): Promise<{ accepted: number; foreign: number; cpuUs: number }> {
  const c = libc();
  const fd = c.socket(2, 3 | 0x800, 17);
  if (fd < 0) throw new Error('raw socket: needs root');
  const size = Buffer.alloc(4);
  size.writeInt32LE(16 << 20, 0);
  c.setsockopt(fd, 1, 33, size, 4);
  c.attachFilter(fd, [
    [0x30, 0, 0, 9], [0x15, 0, 8, 17], [0x20, 0, 0, 16], [0x15, 0, 6, LOCAL], [0x28, 0, 0, 6], [0x45, 4, 0, 0x1fff],
    [0xb1, 0, 0, 0], [0x48, 0, 0, 2], [0x15, 0, 1, PORT], [0x06, 0, 0, 0xffff], [0x06, 0, 0, 0],
  ]);
  const b = Buffer.alloc(2048);
  let accepted = 0;
  let foreign = 0;
  const t0 = process.cpuUsage();
  const timer = setInterval(() => {
    for (;;) {
      const n = c.read(fd, b, b.length);
      if (n <= 0) return;
      const ihl = (b[0] & 15) * 4;
      if (b[9] !== 17 || b.readUInt32BE(16) !== LOCAL || b.readUInt16BE(ihl + 2) !== PORT) { foreign++; continue; }
      if (b[8] === 255) accepted++;
    }
  }, 1);
  await sender();
  await new Promise((r) => setTimeout(r, 200));
  clearInterval(timer);
  const u = process.cpuUsage(t0);
  c.close(fd);
  return { accepted, foreign, cpuUs: u.user + u.system };
}

/** raw-socket's way: a 'message' event a packet (a Buffer slice and a source string each), no kernel filter. */
async function rawSocketReader(raw: any): Promise<{ accepted: number; foreign: number; cpuUs: number }> {
  const s = raw.createSocket({ protocol: raw.Protocol.UDP, bufferSize: 2048 });
  const size = Buffer.alloc(4);
  size.writeInt32LE(16 << 20, 0);
  s.setOption(raw.SocketLevel.SOL_SOCKET, raw.SocketOption.SO_RCVBUF, size, 4);
  let accepted = 0;
  let foreign = 0;
  const t0 = process.cpuUsage();
  s.on('message', (b: Buffer) => {
    const ihl = (b[0] & 15) * 4;
    if (b[9] !== 17 || b.readUInt32BE(16) !== LOCAL || b.readUInt16BE(ihl + 2) !== PORT) { foreign++; return; }
    if (b[8] === 255) accepted++;
  });
  await sender();
  await new Promise((r) => setTimeout(r, 200));
  const u = process.cpuUsage(t0);
  s.close();
  return { accepted, foreign, cpuUs: u.user + u.system };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('control/bfd-socket needs root (raw sockets)');
  let raw: unknown = null;
  try {
    raw = require('raw-socket');
  } catch {
    raw = null;
  }
  const rounds = SHORT ? 1 : 3;
  for (const foreign of [0, 4]) {
    FOREIGN = foreign;
    const results: Record<string, { accepted: number; foreign: number; cpuUs: number }[]> = { koffi: [], 'raw-socket': [] };
    for (let r = 0; r < rounds; r++) {
      results.koffi.push(await koffiReader());
      if (raw) results['raw-socket'].push(await rawSocketReader(raw));
    }
    for (const [reader, runs] of Object.entries(results)) {
      if (runs.length === 0) continue;
      const per = runs.map((x) => x.cpuUs / Math.max(1, x.accepted));
      emit({ bench: 'control/bfd-socket', reader, sent: N, foreignPerBfd: FOREIGN, accepted: runs.map((x) => x.accepted), foreignRead: runs.map((x) => x.foreign), cpuUsPerBfdPacket: Number(Math.min(...per).toFixed(2)), runs: per.map((x) => Number(x.toFixed(2))) });
    }
  }
}

await main();
