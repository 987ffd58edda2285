/**
 * `fpo ctl capture PORT [--filter EXPR] [-w FILE] [-c COUNT]`: ctl's half of
 * a live capture (the service's: capture.ts). Sends the request, and after
 * its ok line reads the pcapng stream block by block: with -w each whole
 * block goes to FILE (a pcapng file Wireshark opens; each frame's direction
 * in its flags), else one line a frame is printed, as tcpdump prints them.
 *
 * Ctrl-C closes our side of the connection: the service ends the capture
 * and sends its last block (how many frames it dropped for us, a slow
 * reader), which is reported on stderr; a second Ctrl-C, or no end within
 * END_WAIT_MS, exits at once. COUNT frames end it the same way.
 */
import { closeSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { connect } from 'node:net';
import { FpoError } from '../datapath/errors.js';

/** How long ctl waits for the service's last block after Ctrl-C. */
const END_WAIT_MS = 3000;
/** A block longer than this is not the service's (its frames are at most 64 KiB). */
const MAX_BLOCK = 1024 * 1024;

export interface CaptureOptions {
  socket: string;
  port: string;
  filter?: string;
  count?: number;
  /** pcapng file to write; none: a line a frame on stdout. */
  write?: string;
  /** Print the ok line's result and the summary as JSON. */
  json?: boolean;
}

/** What a capture ended with. */
export interface CaptureSummary {
  frames: number;
  /** Frames that passed the filter in the service, and of those dropped for a slow reader (null: the end never came). */
  matched: number | null;
  dropped: number | null;
}

const hex2 = (b: number) => (b < 16 ? '0' : '') + b.toString(16);
const macAt = (d: Buffer, o: number) => Array.from(d.subarray(o, o + 6), hex2).join(':');
const ipv4At = (d: Buffer, o: number) => `${d[o]}.${d[o + 1]}.${d[o + 2]}.${d[o + 3]}`;

/** One line for a frame, as tcpdump -e -n would say its gist. */
export function describeFrame(d: Buffer, wirelen: number): string {
  if (d.length < 14) return `${wirelen} bytes, runt`;
  let type = d.readUInt16BE(12);
  let l3 = 14;
  let vlan = '';
  while ((type === 0x8100 || type === 0x88a8) && d.length >= l3 + 4) {
    vlan += ` vlan ${d.readUInt16BE(l3) & 0xfff}`;
    type = d.readUInt16BE(l3 + 2);
    l3 += 4;
  }
  const eth = `${macAt(d, 6)} > ${macAt(d, 0)}${vlan}`;
  if (type === 0x0800 && d.length >= l3 + 20) {
    const ihl = (d[l3] & 0xf) * 4;
    const proto = d[l3 + 9];
    const l4 = l3 + ihl;
    const ports = (proto === 6 || proto === 17) && d.length >= l4 + 4 ? ` ${d.readUInt16BE(l4)} > ${d.readUInt16BE(l4 + 2)}` : '';
    const name = proto === 6 ? 'tcp' : proto === 17 ? 'udp' : proto === 1 ? 'icmp' : `proto ${proto}`;
    return `${eth}, IPv4 ${ipv4At(d, l3 + 12)} > ${ipv4At(d, l3 + 16)} ${name}${ports}, length ${wirelen}`;
  }
  if (type === 0x0806 && d.length >= l3 + 28) {
    const op = d.readUInt16BE(l3 + 6);
    return `${eth}, ARP ${op === 1 ? `who-has ${ipv4At(d, l3 + 24)} tell ${ipv4At(d, l3 + 14)}` : op === 2 ? `${ipv4At(d, l3 + 14)} is-at ${macAt(d, l3 + 8)}` : `op ${op}`}, length ${wirelen}`;
  }
  if (type === 0x86dd && d.length >= l3 + 40) return `${eth}, IPv6 next header ${d[l3 + 6]}, length ${wirelen}`;
  return `${eth}, ethertype 0x${type.toString(16).padStart(4, '0')}, length ${wirelen}`;
}

function timeOf(tsUs: number): string {
  const t = new Date(Math.floor(tsUs / 1000));
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${p(t.getHours())}:${p(t.getMinutes())}:${p(t.getSeconds())}.${p(tsUs % 1_000_000, 6)}`;
}

/** Runs one capture to its end; returns the exit code (0: ended as asked; 1: refused or cut off). */
export async function captureMain(o: CaptureOptions): Promise<number> {
  let fd = -1;
  if (o.write !== undefined) {
    try {
      fd = openSync(o.write, 'w', 0o644);
    } catch (e) {
      throw new FpoError('FPO_ERR_IO', `${o.write}: cannot write: ${(e as Error).message}`, { path: o.write });
    }
  }
  const args: Record<string, unknown> = { port: o.port };
  if (o.filter !== undefined) args.filter = o.filter;
  if (o.count !== undefined) args.count = o.count;
  let refused = false;
  try {
    const r = await stream(o, args, fd);
    if (r.error !== undefined) {
      refused = true;
      process.stderr.write(`fpo: capture: ${r.error}\n`);
      return 1;
    }
    const s = r.summary;
    if (o.json) process.stdout.write(JSON.stringify(s) + '\n');
    if (s.dropped === null) {
      process.stderr.write(`fpo: capture: ${s.frames} frames; fpo run closed the capture before its end (it stopped?)\n`);
      return 1;
    }
    process.stderr.write(s.dropped === 0 ? `${s.frames} frames captured (${s.matched} passed the filter in fpo run, none dropped)\n`
      : `${s.frames} frames captured; ${s.matched} passed the filter in fpo run, ${s.dropped} of them dropped there: the reader was too slow\n`);
    return 0;
  } finally {
    if (fd >= 0) {
      closeSync(fd);
      // A refused capture leaves no file behind.
      if (refused) try { unlinkSync(o.write!); } catch { /* gone already */ }
    }
  }
}

/** The request, its ok line, then the blocks until the service closes. */
function stream(o: CaptureOptions, args: Record<string, unknown>, fd: number): Promise<{ error?: string; summary: CaptureSummary }> {
  return new Promise((resolve, reject) => {
    const c = connect(o.socket);
    const summary: CaptureSummary = { frames: 0, matched: null, dropped: null };
    let head: Buffer | null = Buffer.alloc(0) as Buffer; // the ok line, until it is whole; then null
    let buf: Buffer = Buffer.alloc(0);
    let settled = false;
    let interrupted = 0;
    let endTimer: NodeJS.Timeout | null = null;
    const finish = (f: () => void) => {
      if (settled) return;
      settled = true;
      process.off('SIGINT', onSig);
      process.off('SIGTERM', onSig);
      if (endTimer) clearTimeout(endTimer);
      c.destroy();
      f();
    };
    const onSig = () => {
      // First: ask for the end (our side closed; the service sends its last block). Second: leave now.
      if (++interrupted > 1 || c.destroyed) return finish(() => resolve({ summary }));
      c.end();
      endTimer = setTimeout(() => finish(() => resolve({ summary })), END_WAIT_MS);
    };
    process.on('SIGINT', onSig);
    process.on('SIGTERM', onSig);
    c.on('connect', () => c.write(JSON.stringify({ id: 1, cmd: 'capture', args }) + '\n'));
    c.on('data', (d: Buffer) => {
      if (head !== null) {
        head = Buffer.concat([head, d]);
        const nl = head.indexOf(10);
        if (nl < 0) {
          if (head.length > 64 * 1024) finish(() => reject(new FpoError('FPO_ERR_IO', `${o.socket}: answer longer than 64 KiB with no end of line; not an fpo service?`, { path: o.socket })));
          return;
        }
        let answer: { id?: unknown; ok?: boolean; result?: unknown; error?: { message?: string } };
        try {
          answer = JSON.parse(head.subarray(0, nl).toString('utf8'));
        } catch (e) {
          return finish(() => reject(new FpoError('FPO_ERR_IO', `${o.socket}: answer is not JSON: ${(e as Error).message}`, { path: o.socket })));
        }
        if (answer.ok !== true) return finish(() => resolve({ error: answer.error?.message ?? 'refused', summary }));
        if (o.json) process.stdout.write(JSON.stringify(answer.result) + '\n');
        d = head.subarray(nl + 1);
        head = null;
      }
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      let at = 0;
      // Whole blocks go to the file in one write a chunk of input (not a write a frame).
      const flushFile = () => { if (fd >= 0 && at > 0) writeSync(fd, buf, 0, at); };
      while (buf.length - at >= 12) {
        const type = buf.readUInt32LE(at);
        const len = buf.readUInt32LE(at + 4);
        if (len < 12 || len % 4 !== 0 || len > MAX_BLOCK) {
          flushFile();
          return finish(() => reject(new FpoError('FPO_ERR_IO', `${o.socket}: capture stream: block of ${len} bytes at ${summary.frames} frames; not an fpo capture`, { path: o.socket })));
        }
        if (buf.length - at < len) break;
        const block = buf.subarray(at, at + len);
        if (type === 6 && len >= 32) {
          summary.frames++;
          if (fd < 0) {
            const cl = block.readUInt32LE(20);
            const wl = block.readUInt32LE(24);
            const tsUs = block.readUInt32LE(12) * 4294967296 + block.readUInt32LE(16);
            const flags = len >= 44 + cl ? block.readUInt32LE(28 + cl + ((4 - (cl % 4)) % 4) + 4) : 0;
            const dir = (flags & 3) === 1 ? 'In ' : (flags & 3) === 2 ? 'Out' : '?  ';
            if (!o.json) process.stdout.write(`${timeOf(tsUs)} ${dir} ${describeFrame(block.subarray(28, 28 + Math.min(cl, len - 32)), wl)}\n`);
          }
        } else if (type === 5 && len >= 52) {
          // The last block: frames that passed the filter and, of those, dropped for a slow reader.
          summary.matched = Number(block.readBigUInt64LE(24));
          summary.dropped = Number(block.readBigUInt64LE(36));
        }
        at += len;
      }
      flushFile();
      buf = at === buf.length ? Buffer.alloc(0) : buf.subarray(at);
    });
    c.on('end', () => finish(() => resolve({ summary })));
    c.on('close', () => finish(() => resolve({ summary })));
    c.on('error', (e) => finish(() => reject(new FpoError('FPO_ERR_IO', `${o.socket}: cannot reach fpo run: ${e.message}`, { path: o.socket }))));
  });
}
