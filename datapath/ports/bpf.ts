/**
 * Capture filters: a tcpdump/BPF expression compiled by libpcap, run here.
 *
 * Compiling (slow path): libpcap's own compiler, reached through koffi on a
 * "dead" handle (pcap_open_dead(Ethernet)) — the same grammar and the same
 * error text as tcpdump (`pcap_geterr`), with no process to spawn and no
 * native addon: it needs only Debian's runtime libpcap0.8, which tcpdump and
 * tshark pull in. (The `cap` addon compiles filters only inside `open()` of
 * a live device and hands no program back; `tcpdump -ddd` would be a
 * process per capture and its wording mixed with tcpdump's own.)
 *
 * Running (fast path): a classic BPF interpreter over one frame in place —
 * no allocation, no call into C, so a filter costs a few ns a frame and the
 * capture tap (control/capture.ts) drops unmatched frames before they cost
 * any copy or socket traffic. Programs are checked once at compile time
 * (every jump forward and inside the program, every scratch index in 0..15,
 * a return at the end), so a run always ends. A load past the frame's
 * captured bytes rejects the frame, as the kernel's does.
 *
 * The one Linux extension libpcap emits for Ethernet, the packet type
 * (`inbound`, `outbound`: ld [SKF_AD_PKTTYPE]), reads the direction the
 * caller gives: PKTTYPE_HOST for a frame a port received, PKTTYPE_OUTGOING
 * for one it sent. Any other extension rejects the frame.
 */
import { createRequire } from 'node:module';
import { FpoError } from '../errors.js';

const require = createRequire(import.meta.url);

/** Longest filter expression taken (tcpdump's own limit is the command line's). */
export const FILTER_MAX = 4096;
/** Linux's packet types, as `ld [pkttype]` reads them. */
export const PKTTYPE_HOST = 0;
export const PKTTYPE_OUTGOING = 4;

const SKF_AD_OFF = 0xfffff000; // -4096 as an unsigned k
const SKF_AD_PKTTYPE = 4;

/** A compiled filter: 4 words an instruction (code, jt, jf, k). */
export type BpfProgram = Int32Array;

interface Pcap {
  openDead(linktype: number, snaplen: number): unknown;
  compile(p: unknown, prog: { bf_len?: number; bf_insns?: unknown }, expr: string, optimize: number, netmask: number): number;
  /** The same on a thread of libuv's pool (koffi's async call): a name in the filter is looked up there, not on the caller's thread. */
  compileAsync(p: unknown, prog: { bf_len?: number; bf_insns?: unknown }, expr: string, optimize: number, netmask: number, cb: (err: unknown, r: number) => void): void;
  geterr(p: unknown): string;
  freecode(prog: { bf_len?: number; bf_insns?: unknown }): void;
  close(p: unknown): void;
  decodeInsns(ptr: unknown, n: number): { code: number; jt: number; jf: number; k: number }[];
}

let pcapLib: Pcap | null = null;

/** libpcap through koffi, loaded on first use (only filters need it). */
function pcap(): Pcap {
  if (pcapLib) return pcapLib;
  const koffi = require('koffi') as typeof import('koffi');
  let lib: ReturnType<typeof koffi.load> | null = null;
  const tried: string[] = [];
  for (const name of ['libpcap.so.0.8', 'libpcap.so.1', 'libpcap.so']) {
    try {
      lib = koffi.load(name);
      break;
    } catch (e) {
      tried.push(`${name}: ${(e as Error).message}`);
    }
  }
  if (lib === null) throw new FpoError('FPO_ERR_DEPENDENCY', `libpcap cannot be loaded (install Debian's libpcap0.8): ${tried.join('; ')}`);
  const Insn = koffi.struct('fpo_bpf_insn', { code: 'uint16', jt: 'uint8', jf: 'uint8', k: 'uint32' });
  koffi.struct('fpo_bpf_program', { bf_len: 'uint32', bf_insns: 'void *' });
  const compile = lib.func('int pcap_compile(void *p, _Out_ fpo_bpf_program *fp, const char *str, int optimize, uint32_t netmask)');
  const freecode = lib.func('void pcap_freecode(_Inout_ fpo_bpf_program *fp)');
  pcapLib = {
    openDead: lib.func('void *pcap_open_dead(int linktype, int snaplen)'),
    compile: (p, prog, expr, optimize, netmask) => compile(p, prog, expr, optimize, netmask) as number,
    compileAsync: (p, prog, expr, optimize, netmask, cb) => compile.async(p, prog, expr, optimize, netmask, cb),
    geterr: lib.func('const char *pcap_geterr(void *p)') as Pcap['geterr'],
    freecode: (prog) => freecode(prog),
    close: lib.func('void pcap_close(void *p)'),
    decodeInsns: (ptr, n) => koffi.decode(ptr, koffi.array(Insn, n)) as { code: number; jt: number; jf: number; k: number }[],
  };
  return pcapLib;
}

/**
 * Why `expr` cannot be a filter before libpcap sees it, or null: a string,
 * at most FILTER_MAX characters, no NUL or other control character (a C
 * string would end at a NUL and filter on less than was asked).
 */
export function filterTextProblem(expr: unknown): string | null {
  if (typeof expr !== 'string') return `expected a string (a tcpdump filter expression), got ${expr === null ? 'null' : Array.isArray(expr) ? 'array' : typeof expr}`;
  if (expr.length > FILTER_MAX) return `expected at most ${FILTER_MAX} characters, got ${expr.length}`;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u0008\u000a-\u001f\u007f]/.test(expr)) return 'expected no NUL, newline or other control character';
  return null;
}

/**
 * Slow path: compiles a tcpdump expression for Ethernet frames. An empty (or
 * blank) expression is null: every frame. Throws FPO_ERR_BAD_FILTER with
 * libpcap's own message, or FPO_ERR_DEPENDENCY when libpcap is missing.
 */
export function compileFilter(expr: string, snaplen = 262144): BpfProgram | null {
  const c = startCompile(expr, snaplen);
  if (c === null) return null;
  return programOf(c.lib, c.p, c.prog, c.lib.compile(c.p, c.prog, expr, 1, 0xffffffff /* PCAP_NETMASK_UNKNOWN */));
}

/** The checks and the handle both compilers start with; null for an empty expression (every frame). */
function startCompile(expr: string, snaplen: number): { lib: Pcap; p: unknown; prog: { bf_len?: number; bf_insns?: unknown } } | null {
  const problem = filterTextProblem(expr);
  if (problem !== null) throw new FpoError('FPO_ERR_BAD_FILTER', problem);
  if (expr.trim() === '') return null;
  const lib = pcap();
  const p = lib.openDead(1 /* DLT_EN10MB */, snaplen);
  if (p === null) throw new FpoError('FPO_ERR_DEPENDENCY', 'libpcap: pcap_open_dead failed');
  return { lib, p, prog: {} };
}

/**
 * Slow path: compileFilter with libpcap's compiler on a thread of libuv's
 * pool. A filter that names a host ("host db1") makes libpcap look the name
 * up (getaddrinfo), which may wait seconds for a resolver; the service
 * compiles a client's filter this way so that the datapath never waits for
 * it (libpcap's compiler is thread-safe since 1.8).
 */
export async function compileFilterAsync(expr: string, snaplen = 262144): Promise<BpfProgram | null> {
  const c = startCompile(expr, snaplen);
  if (c === null) return null;
  const { lib, p, prog } = c;
  let r: number;
  try {
    r = await new Promise<number>((resolve, reject) => lib.compileAsync(p, prog, expr, 1, 0xffffffff, (err, v) => (err ? reject(err) : resolve(v))));
  } catch (e) {
    lib.close(p);
    throw new FpoError('FPO_ERR_DEPENDENCY', `libpcap: pcap_compile failed: ${(e as Error).message}`);
  }
  return programOf(lib, p, prog, r);
}

/** Slow path: the program pcap_compile left in `prog` (r its result), checked; the handle closed, the code freed. */
function programOf(lib: Pcap, p: unknown, prog: { bf_len?: number; bf_insns?: unknown }, r: number): BpfProgram {
  try {
    if (r !== 0) throw new FpoError('FPO_ERR_BAD_FILTER', `libpcap: ${lib.geterr(p)}`);
    try {
      const n = prog.bf_len ?? 0;
      const insns = lib.decodeInsns(prog.bf_insns, n);
      const out = new Int32Array(4 * n);
      insns.forEach((x, i) => {
        out[4 * i] = x.code;
        out[4 * i + 1] = x.jt;
        out[4 * i + 2] = x.jf;
        out[4 * i + 3] = x.k | 0;
      });
      checkProgram(out);
      return out;
    } finally {
      lib.freecode(prog);
    }
  } finally {
    lib.close(p);
  }
}

/** Slow path: the checks that make every run end (see the header); throws on a program that fails them. */
export function checkProgram(prog: BpfProgram): void {
  const n = prog.length / 4;
  if (n < 1 || n > 4096 || !Number.isInteger(n)) throw new FpoError('FPO_ERR_BAD_FILTER', `BPF program of ${n} instructions; expected 1..4096`);
  for (let pc = 0; pc < n; pc++) {
    const code = prog[4 * pc];
    const cls = code & 7;
    const k = prog[4 * pc + 3] >>> 0;
    if (cls === 5) {
      const to = (code & 0xf0) === 0 ? pc + 1 + k : Math.max(pc + 1 + prog[4 * pc + 1], pc + 1 + prog[4 * pc + 2]);
      if (to >= n) throw new FpoError('FPO_ERR_BAD_FILTER', `BPF instruction ${pc} jumps past the program's end`);
    }
    if ((cls === 0 || cls === 1) && (code & 0xe0) === 0x60 && k > 15) throw new FpoError('FPO_ERR_BAD_FILTER', `BPF instruction ${pc} reads scratch word ${k}`);
    if ((cls === 2 || cls === 3) && k > 15) throw new FpoError('FPO_ERR_BAD_FILTER', `BPF instruction ${pc} writes scratch word ${k}`);
  }
  if ((prog[4 * (n - 1)] & 7) !== 6) throw new FpoError('FPO_ERR_BAD_FILTER', 'BPF program does not end with a return');
}

// The interpreter's scratch memory: module-level, reused by every run.
const MEM = new Int32Array(16);

/**
 * Fast path: does the frame buf[off .. off + caplen) (wirelen on the wire)
 * pass the program? `pkttype` answers `inbound`/`outbound` (PKTTYPE_*).
 */
export function bpfMatch(prog: BpfProgram, buf: Uint8Array, off: number, caplen: number, wirelen: number, pkttype: number): boolean {
  let A = 0;
  let X = 0;
  const n = prog.length;
  for (let pc = 0; pc < n; pc += 4) {
    const code = prog[pc];
    const k = prog[pc + 3];
    switch (code & 7) {
      case 0: // LD
      case 1: { // LDX
        const mode = code & 0xe0;
        let v = 0;
        if (mode === 0x00) v = k;
        else if (mode === 0x80) v = wirelen;
        else if (mode === 0x60) v = MEM[k];
        else if (mode === 0xa0) { // LDX MSH: 4 * (P[k] & 0xf), the IPv4 header length
          const at = k >>> 0;
          if (at >= caplen) return false;
          v = (buf[off + at] & 0xf) << 2;
        } else {
          let at = k >>> 0;
          if (mode === 0x40) at = (X + k) >>> 0;
          else if (mode === 0x20 && at >= SKF_AD_OFF) {
            if (at - SKF_AD_OFF !== SKF_AD_PKTTYPE) return false;
            A = pkttype;
            break;
          }
          const size = code & 0x18;
          const w = size === 0 ? 4 : size === 8 ? 2 : 1;
          if (at + w > caplen) return false;
          const p = off + at;
          v = w === 1 ? buf[p] : w === 2 ? (buf[p] << 8) | buf[p + 1] : (buf[p] << 24) | (buf[p + 1] << 16) | (buf[p + 2] << 8) | buf[p + 3];
        }
        if ((code & 7) === 0) A = v;
        else X = v;
        break;
      }
      case 2: MEM[k] = A; break; // ST
      case 3: MEM[k] = X; break; // STX
      case 4: { // ALU
        const v = (code & 8) !== 0 ? X : k;
        switch (code & 0xf0) {
          case 0x00: A = (A + v) | 0; break;
          case 0x10: A = (A - v) | 0; break;
          case 0x20: A = Math.imul(A, v); break;
          case 0x30: if (v === 0) return false; A = Math.trunc((A >>> 0) / (v >>> 0)) | 0; break;
          case 0x90: if (v === 0) return false; A = ((A >>> 0) % (v >>> 0)) | 0; break;
          case 0x40: A |= v; break;
          case 0x50: A &= v; break;
          case 0xa0: A ^= v; break;
          case 0x60: A = (v >>> 0) >= 32 ? 0 : A << v; break;
          case 0x70: A = (v >>> 0) >= 32 ? 0 : A >>> v; break;
          case 0x80: A = -A | 0; break;
          default: return false;
        }
        break;
      }
      case 5: { // JMP
        const op = code & 0xf0;
        if (op === 0x00) { pc += 4 * (k >>> 0); break; }
        const v = ((code & 8) !== 0 ? X : k) >>> 0;
        const a = A >>> 0;
        const t = op === 0x10 ? a === v : op === 0x20 ? a > v : op === 0x30 ? a >= v : op === 0x40 ? (a & v) !== 0 : false;
        pc += 4 * (t ? prog[pc + 1] : prog[pc + 2]);
        break;
      }
      case 6: { // RET
        const r = code & 0x18;
        return (r === 0 ? k : r === 0x10 ? A : X) !== 0;
      }
      case 7: // MISC
        if ((code & 0xf8) === 0) X = A;
        else A = X;
        break;
    }
  }
  return false;
}
