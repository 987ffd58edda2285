/**
 * Live captures of a running switch (`fpo ctl capture PORT`): the service's
 * half, as tcpdump on a port or ovs-tcpdump on a bridge port.
 *
 * What a capture sees: every frame its port receives (as rx gave it to the
 * datapath, dropped ones included) and every frame the port sends, after
 * the actions (VLAN tag pushed or popped, outer tunnel headers written: the
 * bytes as they leave), each marked with its direction. A GSO segment from
 * a ring port with offloads is captured as one frame (up to the snap
 * length), as tcpdump on a host with GSO sees it, not as the software cut
 * that a port without offloads then sends. A BPF filter
 * (libpcap's compiler, run here: datapath/ports/bpf.ts) is applied before
 * anything is copied, so an unmatched frame costs no copy and no socket
 * traffic.
 *
 * Cost when nobody captures: the datapath's rxTap is null (one branch a
 * batch) and no port has a tx tap (Datapath.tapTx): nothing else. While a
 * capture runs, its port's direct copies are suspended so its frames pass
 * through the tap.
 *
 * Bounds: at most MAX_CAPTURES at once; a capture's frames wait in a chunk
 * of CHUNK bytes and then in its socket, and once MAX_QUEUED bytes are
 * unsent (a slow reader), further frames are dropped and counted for that
 * capture — the datapath never waits for a reader. The count goes to the
 * reader in the capture's last block.
 *
 * The stream: after the request's ok line, the connection carries one
 * pcapng section, as Wireshark and tshark read it: a section header, an
 * interface description (Ethernet, named after the port), one Enhanced
 * Packet Block per frame with its direction in epb_flags (inbound 1,
 * outbound 2), and at the end an Interface Statistics Block (isb_ifrecv:
 * frames that passed the filter; isb_ifdrop: of those, dropped for a slow
 * reader). Then the service closes the connection. It ends at COUNT frames
 * sent, when the client closes its side (ctl on Ctrl-C: it still reads the
 * end), when the client goes away, or when the service stops.
 */
import type { Socket } from 'node:net';
import type { Encap } from '../datapath/actions/encap.js';
import { TX_PLAIN } from '../datapath/actions/vlan.js';
import type { PacketBatch } from '../datapath/batch.js';
import type { Datapath, TxPort } from '../datapath/datapath.js';
import { FpoError } from '../datapath/errors.js';
import { ENCAP_MAX, writeFrame } from '../datapath/ports/frame-out.js';
import { GSO_MAX_FRAME } from '../datapath/ports/offload.js';
import { PKTTYPE_HOST, PKTTYPE_OUTGOING, bpfMatch, compileFilterAsync, filterTextProblem, type BpfProgram } from '../datapath/ports/bpf.js';

/** Captures running at once in one service. */
export const MAX_CAPTURES = 8;
/** Largest COUNT a capture takes (tcpdump's -c is an int too). */
export const MAX_CAPTURE_COUNT = 2 ** 31 - 1;
/** Bytes a capture holds before it hands them to its socket. */
const CHUNK = 256 * 1024;
/** Bytes unsent on a capture's socket past which its frames are dropped and counted. */
export const MAX_CAPTURE_QUEUED = 4 * 1024 * 1024;
/** Frames longer than this are cut in the capture (caplen < wirelen), as a snap length. */
export const CAPTURE_SNAPLEN = 65535;
/**
 * Filters being compiled at once. Compiling runs on libuv's pool (a host
 * name in a filter is looked up there, maybe for seconds), so a client with
 * slow names holds a pool thread, not the datapath; this bound leaves the
 * pool's other threads to the rest of the service.
 */
export const MAX_COMPILING = 2;
/** The args a capture request takes. */
export const CAPTURE_ARGS: readonly string[] = ['port', 'filter', 'count'];

const EPB_FLAG_INBOUND = 1;
const EPB_FLAG_OUTBOUND = 2;

/** Bytes of an Enhanced Packet Block around its (padded) data: header 28, epb_flags option 8, end of options 4, trailer 4. */
const EPB_OVERHEAD = 44;

/** One running capture. */
class Session {
  /** Frames written to the stream, frames that passed the filter, and of those dropped for a slow reader. */
  sent = 0;
  matched = 0;
  dropped = 0;
  ended = false;
  private readonly chunk = Buffer.allocUnsafe(CHUNK);
  private used = 0;
  private flushQueued = false;
  private readonly done: Promise<void>;
  private resolveDone!: () => void;

  constructor(
    readonly ppid: number,
    readonly port: string,
    readonly prog: BpfProgram | null,
    /** Frames to send before ending (0: no limit). */
    readonly count: number,
    private readonly sock: Socket,
    private readonly onEnd: (s: Session) => void,
  ) {
    this.done = new Promise((r) => (this.resolveDone = r));
    this.header();
    // The client half-closing (ctl's Ctrl-C) or going away ends the capture.
    const stop = () => this.end();
    sock.once('end', stop);
    sock.once('close', stop);
    sock.once('error', stop);
  }

  /** Resolves when the capture has ended (its last block queued or the client gone). */
  finished(): Promise<void> {
    return this.done;
  }

  private header(): void {
    const b = this.chunk;
    // Section Header Block.
    b.writeUInt32LE(0x0a0d0d0a, 0);
    b.writeUInt32LE(28, 4);
    b.writeUInt32LE(0x1a2b3c4d, 8);
    b.writeUInt16LE(1, 12);
    b.writeUInt16LE(0, 14);
    b.writeInt32LE(-1, 16);
    b.writeInt32LE(-1, 20);
    b.writeUInt32LE(28, 24);
    // Interface Description Block: Ethernet, the snap length, if_name = the port's name.
    const name = Buffer.from(this.port, 'utf8');
    const pad = (4 - (name.length % 4)) % 4;
    const len = 20 + 4 + name.length + pad + 4;
    let at = 28;
    b.writeUInt32LE(1, at);
    b.writeUInt32LE(len, at + 4);
    b.writeUInt16LE(1, at + 8);
    b.writeUInt16LE(0, at + 10);
    b.writeUInt32LE(CAPTURE_SNAPLEN, at + 12);
    b.writeUInt16LE(2, at + 16); // if_name
    b.writeUInt16LE(name.length, at + 18);
    name.copy(b, at + 20);
    b.fill(0, at + 20 + name.length, at + 20 + name.length + pad);
    b.writeUInt32LE(0, at + 20 + name.length + pad); // opt_endofopt
    b.writeUInt32LE(len, at + len - 4);
    at += len;
    this.used = at;
    this.flush();
  }

  /**
   * One frame: src[off .. off + caplen), wirelen on the wire, at tsUs (µs
   * since the epoch), inbound or not. Filtered, then written or dropped.
   */
  offer(src: Uint8Array, off: number, caplen: number, wirelen: number, tsUs: number, inbound: boolean): void {
    if (this.ended) return;
    if (this.prog !== null && !bpfMatch(this.prog, src, off, caplen, wirelen, inbound ? PKTTYPE_HOST : PKTTYPE_OUTGOING)) return;
    this.matched++;
    const cl = Math.min(caplen, CAPTURE_SNAPLEN);
    const pad = (4 - (cl % 4)) % 4;
    const len = EPB_OVERHEAD + cl + pad;
    if (this.sock.writableLength + this.used + len > MAX_CAPTURE_QUEUED || this.sock.destroyed) {
      this.dropped++;
      return;
    }
    if (this.used + len > CHUNK) this.flush();
    const b = this.chunk;
    let at = this.used;
    b.writeUInt32LE(6, at);
    b.writeUInt32LE(len, at + 4);
    b.writeUInt32LE(0, at + 8);
    b.writeUInt32LE(Math.floor(tsUs / 4294967296), at + 12);
    b.writeUInt32LE(tsUs % 4294967296, at + 16);
    b.writeUInt32LE(cl, at + 20);
    b.writeUInt32LE(wirelen, at + 24);
    Buffer.prototype.copy.call(src, b, at + 28, off, off + cl);
    at += 28 + cl;
    for (let p = 0; p < pad; p++) b[at++] = 0;
    b.writeUInt16LE(2, at); // epb_flags
    b.writeUInt16LE(4, at + 2);
    b.writeUInt32LE(inbound ? EPB_FLAG_INBOUND : EPB_FLAG_OUTBOUND, at + 4);
    b.writeUInt32LE(0, at + 8); // opt_endofopt
    b.writeUInt32LE(len, at + 12);
    this.used = at + 16;
    this.sent++;
    if (!this.flushQueued) {
      this.flushQueued = true;
      setImmediate(() => this.flush());
    }
    if (this.count > 0 && this.sent >= this.count) this.end();
  }

  /** Hands what the chunk holds to the socket (a copy: the chunk is reused). */
  private flush(): void {
    this.flushQueued = false;
    if (this.used === 0) return;
    if (!this.sock.destroyed && this.sock.writable) this.sock.write(Buffer.from(this.chunk.subarray(0, this.used)));
    this.used = 0;
  }

  /** Ends the capture: its statistics block, then the service closes the connection (capture.ts's caller). */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.onEnd(this);
    this.flush();
    const b = Buffer.alloc(52);
    const tsUs = Date.now() * 1000;
    b.writeUInt32LE(5, 0);
    b.writeUInt32LE(52, 4);
    b.writeUInt32LE(0, 8);
    b.writeUInt32LE(Math.floor(tsUs / 4294967296), 12);
    b.writeUInt32LE(tsUs % 4294967296, 16);
    b.writeUInt16LE(4, 20); // isb_ifrecv
    b.writeUInt16LE(8, 22);
    b.writeBigUInt64LE(BigInt(this.matched), 24);
    b.writeUInt16LE(5, 32); // isb_ifdrop
    b.writeUInt16LE(8, 34);
    b.writeBigUInt64LE(BigInt(this.dropped), 36);
    b.writeUInt32LE(0, 44);
    b.writeUInt32LE(52, 48);
    if (!this.sock.destroyed && this.sock.writable) this.sock.write(b);
    this.resolveDone();
  }
}

/** What a capture request asked for, once checked. */
export interface CaptureRequest {
  port: string;
  ppid: number;
  filter: string;
  prog: BpfProgram | null;
  count: number;
}

/**
 * The service's captures: checks requests, runs sessions, and keeps the
 * datapath's taps set exactly while some capture needs them.
 */
export class Captures {
  private readonly sessions: Session[] = [];
  /** Scratch for a sent frame rebuilt as it left (encapsulation, a VLAN op). */
  private readonly out = Buffer.alloc(GSO_MAX_FRAME + ENCAP_MAX);
  /** Requests checked whose session run() has not started yet: they hold a slot. */
  private reserved = 0;
  /** Filters being compiled now (MAX_COMPILING). */
  private compiling = 0;
  /** Captures started and refused, for stats. */
  started = 0;
  refused = 0;

  constructor(private readonly dp: Datapath) {}

  /** Captures running now. */
  get running(): number {
    return this.sessions.length;
  }

  /**
   * Checks a request's args (throwing FpoError naming the field, with
   * nothing started): `port` a port's name (`portNamed` finds its PPID),
   * `filter` a tcpdump expression, `count` 1..MAX_CAPTURE_COUNT.
   */
  async check(args: Record<string, unknown>, portNamed: (name: string) => { name: string; ppid: number } | undefined): Promise<CaptureRequest> {
    try {
      for (const k of Object.keys(args)) {
        if (!CAPTURE_ARGS.includes(k)) throw new FpoError('FPO_ERR_USAGE', `args: unknown field ${JSON.stringify(k)}; capture takes ${CAPTURE_ARGS.join(', ')}`);
      }
      const p = args.port;
      if (typeof p !== 'string' || p.length === 0 || p.length > 4096) throw new FpoError('FPO_ERR_USAGE', 'port: expected a port\'s name (a non-empty string)');
      const port = portNamed(p);
      if (port === undefined) throw new FpoError('FPO_ERR_USAGE', `port: no port named ${JSON.stringify(p)}`);
      const c = args.count;
      if (c !== undefined && (typeof c !== 'number' || !Number.isInteger(c) || c < 1 || c > MAX_CAPTURE_COUNT)) {
        throw new FpoError('FPO_ERR_USAGE', `count: expected an integer in 1..${MAX_CAPTURE_COUNT}, got ${typeof c === 'number' ? String(c) : c === null ? 'null' : typeof c}`);
      }
      const f = args.filter ?? '';
      const problem = filterTextProblem(f);
      if (problem !== null) throw new FpoError('FPO_ERR_BAD_FILTER', `filter: ${problem}`);
      if (this.sessions.length + this.reserved >= MAX_CAPTURES) throw new FpoError('FPO_ERR_CAPACITY', `capture: ${MAX_CAPTURES} captures are running, the most fpo run serves at once; end one or try again later`);
      if (this.compiling >= MAX_COMPILING) throw new FpoError('FPO_ERR_CAPACITY', `capture: ${MAX_COMPILING} filters are being compiled (a host name in them is being looked up); try again later`);
      let prog: BpfProgram | null;
      this.compiling++;
      try {
        prog = await compileFilterAsync(f as string, CAPTURE_SNAPLEN);
      } catch (e) {
        if (e instanceof FpoError) throw new FpoError(e.code, `filter ${JSON.stringify(f)}: ${e.message}`);
        throw e;
      } finally {
        this.compiling--;
      }
      // Checked again: others may have started while this filter compiled.
      if (this.sessions.length + this.reserved >= MAX_CAPTURES) throw new FpoError('FPO_ERR_CAPACITY', `capture: ${MAX_CAPTURES} captures are running, the most fpo run serves at once; end one or try again later`);
      // The slot is this request's from here: run() takes it (the service always runs a request it checked).
      this.reserved++;
      return { port: port.name, ppid: port.ppid, filter: f as string, prog, count: c ?? 0 };
    } catch (e) {
      this.refused++;
      throw e;
    }
  }

  /**
   * Runs a checked capture on `sock` (the request's ok line already sent):
   * streams until it ends; resolves then. The caller closes the connection.
   */
  async run(req: CaptureRequest, sock: Socket): Promise<void> {
    const s = new Session(req.ppid, req.port, req.prog, req.count, sock, (x) => this.detach(x));
    this.reserved--;
    this.sessions.push(s);
    this.started++;
    this.retap();
    // A client that closed its side (or went) before the stream began gets the header and the end at once.
    if (sock.readableEnded || sock.destroyed) s.end();
    await s.finished();
  }

  /** Ends every capture (the service stops). */
  endAll(): void {
    for (const s of [...this.sessions]) s.end();
  }

  private detach(s: Session): void {
    const i = this.sessions.indexOf(s);
    if (i < 0) return;
    this.sessions.splice(i, 1);
    this.retap();
  }

  /** Slow path: the datapath's taps as the running captures need them, and only those. */
  private retap(): void {
    const dp = this.dp;
    dp.rxTap = this.sessions.length > 0 ? (b) => this.onRx(b) : null;
    const want = new Set(this.sessions.map((s) => s.ppid));
    for (const ppid of this.tapped) if (!want.has(ppid)) dp.tapTx(ppid, null);
    for (const ppid of want) {
      if (this.tapped.has(ppid)) continue;
      dp.tapTx(ppid, (port) => this.txTap(ppid, port));
    }
    this.tapped.clear();
    for (const p of want) this.tapped.add(p);
  }

  private readonly tapped = new Set<number>();

  /** A batch as rx gave it: each running capture takes the frames of its port. */
  private onRx(batch: PacketBatch): void {
    const tsUs = Date.now() * 1000;
    const n = batch.count;
    const lazy = batch.unfilled;
    const dv = batch.dv;
    // Backwards: a capture that reaches its COUNT leaves the list mid-batch without skipping the next one.
    for (let k = this.sessions.length - 1; k >= 0; k--) {
      const s = this.sessions[k];
      if (s === undefined) continue;
      for (let i = 0; i < n; i++) {
        // A lazy fill (capture-reader.ts) has only offsets yet: lengths are in the record headers.
        const off = batch.off[i];
        const ppid = lazy ? batch.unfilledIn : batch.inPpid[i];
        if (ppid !== s.ppid) continue;
        const cl = lazy ? dv.getUint32(off - 8, true) : batch.caplen[i];
        const wl = lazy ? Math.max(cl, dv.getUint32(off - 4, true)) : batch.wirelen[i];
        s.offer(batch.buf, off, cl, wl, tsUs, true);
      }
    }
  }

  /** The port's tx side with the capture in front: the port sends, then each capture of it takes the frames as sent. */
  private txTap(ppid: number, port: TxPort): TxPort {
    return {
      writeBatch: (batch, idx, from, n, enc, encap) => {
        port.writeBatch(batch, idx, from, n, enc, encap);
        this.onTx(ppid, batch, idx, from, n, enc, encap);
      },
    };
  }

  private onTx(ppid: number, batch: PacketBatch, idx: Uint16Array, from: number, n: number, enc: Int32Array, encap: Encap): void {
    const tsUs = Date.now() * 1000;
    const src = batch.buf;
    for (let k = this.sessions.length - 1; k >= 0; k--) {
      const s = this.sessions[k];
      if (s === undefined || s.ppid !== ppid) continue;
      for (let j = from; j < from + n; j++) {
        const i = idx[j];
        const off = batch.off[i];
        const len = batch.caplen[i];
        const e = enc[j];
        if (e === TX_PLAIN) {
          s.offer(src, off, len, batch.wirelen[i], tsUs, false);
          continue;
        }
        // The frame as the port wrote it: outer headers in front, or its tag pushed or popped (frame-out.ts).
        const out = this.out;
        const n = writeFrame(out, 0, out.length, batch, i, e, encap);
        if (n < 0) continue;
        const extra = n - len;
        s.offer(out, 0, n, batch.wirelen[i] + extra, tsUs, false);
      }
    }
  }
}
