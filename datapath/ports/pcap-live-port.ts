/**
 * A live port on any existing interface through libpcap (the npm `cap`
 * addon), with an optional BPF filter: what DPDK's pcap driver
 * (`net_pcap0,iface=eth0`) and ovs-tcpdump give their users. The topology
 * says `"kind": "pcap-live"` (`pcap` is a capture file), `device`, and
 * `filter` (a tcpdump expression: only frames it matches come in).
 *
 * rx: cap owns the socket and calls back once per frame from the event loop
 * (its uv_poll), having copied the frame into the one Buffer we gave it at
 * open. The callback copies it on into the next slot of a ring of
 * preallocated SLOT-byte slots (no allocation); `fill` then hands the
 * waiting frames to the batch in place (the ring is the batch's buffer, no
 * second copy). The frames of a batch are not overwritten before the next
 * fill: callbacks run only between live-loop turns.
 *
 *        head (cap's callback writes here)
 *          v
 *   [ ][ ][x][x][x][ ][ ] ...  RING slots, a power of two, masked
 *    ^tail (fill takes from here)
 *
 * A full ring drops the frame and counts it (rxMissed, a NIC's rx_missed).
 * A frame of SLOT bytes or more is cut by its slot and dropped as
 * frameTooBig, as on the TAP and AF_PACKET ports. Only frames the interface
 * receives come in: frames the host sends out of the device are not received
 * ones, so the socket gets PACKET_IGNORE_OUTGOING, as the AF_PACKET port's
 * has. cap does not hand its socket out: it is found as the one new packet
 * socket bound to the device (/proc/self/net/packet) among the descriptors
 * that cap.open made. (libpcap's own `inbound` filter was tried first: with
 * cap's one-frame-a-dispatch loop, a frame libpcap skips for its direction
 * ends the loop, and the frame behind it waited for the next send, ~1 s.)
 * The socket is also the port's fd, so the live loop's poll() wakes for it.
 *
 * tx: pcap_sendpacket (cap's `send`) a frame, from a tx buffer the frame is
 * copied into (with its tag pushed or popped, or its outer headers:
 * frame-out.ts, as the other live ports write them). The port has no
 * offloads: a GSO segment or a partial checksum from a ring port with them
 * is cut and finished in software first (offload.ts). A send that fails is
 * counted (txErrors).
 *
 * cap gives the callback no timestamp and no wire length: frames get the
 * live loop's time, and their captured length as wire length.
 */
import { closeSync, openSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Encap } from '../actions/encap.js';
import { TX_PLAIN } from '../actions/vlan.js';
import type { PacketBatch } from '../batch.js';
import { D } from '../drops.js';
import { FpoError } from '../errors.js';
import { compileFilter } from './bpf.js';
import { ENCAP_MAX, writeBytes, writeFrame } from './frame-out.js';
import { libc } from './libc.js';
import type { LivePort } from './live-port.js';
import { SoftOffload, needsSoftware, type SegmentSink } from './offload.js';

const require = createRequire(import.meta.url);

export const SLOT = 2048;
/** Frames waiting between two fills (a power of two). */
export const RING = 4096;
/** The kernel's buffer for the libpcap socket (TPACKET_V3 ring). */
const KERNEL_BUFFER = 8 * 1024 * 1024;

interface CapHandle {
  open(device: string, filter: string, bufSize: number, buffer: Buffer): string;
  send(buffer: Buffer, length: number): void;
  close(): void;
  on(event: 'packet', cb: (nbytes: number, truncated: boolean) => void): void;
  setMinBytes?(n: number): void;
}

/**
 * cap handles whose open failed half-way: kept, never collected. cap's
 * destructor would close a handle whose poll watcher was never started
 * (uv_poll_stop on it), so a failed one must live as long as the process.
 */
const failed: CapHandle[] = [];

let capModule: { Cap: new () => CapHandle } | null = null;

/** The cap addon, or an error saying it cannot be had and how to get it. */
export function loadCap(): { Cap: new () => CapHandle } {
  if (capModule) return capModule;
  try {
    capModule = require('cap') as { Cap: new () => CapHandle };
    return capModule;
  } catch (e) {
    const why = (e as Error).message.split('\n')[0];
    throw new FpoError('FPO_ERR_DEPENDENCY', `pcap-live ports need the cap module (libpcap for Node), which cannot be loaded: ${why}. `
      + 'It is an optional dependency built at install: install libpcap-dev, g++, make and python3, then run npm rebuild cap');
  }
}

/** Slow path: points fd 2 at /dev/null; the function returned puts it back. */
function muteStderr(): () => void {
  const koffi = require('koffi') as typeof import('koffi');
  const lib = koffi.load('libc.so.6');
  const dup = lib.func('int dup(int fd)') as (fd: number) => number;
  const dup2 = lib.func('int dup2(int fd, int to)') as (fd: number, to: number) => number;
  const saved = dup(2);
  if (saved < 0) return () => undefined;
  const nul = openSync('/dev/null', 'w');
  dup2(nul, 2);
  closeSync(nul);
  return () => {
    dup2(saved, 2);
    libc().close(saved);
  };
}

const SOL_PACKET = 263;
const PACKET_IGNORE_OUTGOING = 23;

/**
 * Slow path: the descriptor of the packet socket bound to `ifindex` that is
 * not among `before` (the descriptors open before cap.open), or -1.
 */
function packetSocketOf(ifindex: number, before: Set<string>): number {
  let table: string;
  try {
    table = readFileSync('/proc/self/net/packet', 'utf8');
  } catch {
    return -1;
  }
  // sk RefCnt Type Proto Iface R Rmem User Inode
  const inodes = new Set(table.split('\n').slice(1).map((l) => l.trim().split(/\s+/)).filter((f) => f.length >= 9 && Number(f[4]) === ifindex).map((f) => f[8]));
  for (const fd of readdirSync('/proc/self/fd')) {
    if (before.has(fd)) continue;
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
      if (m && inodes.has(m[1])) return Number(fd);
    } catch {
      // Closed meanwhile: not ours.
    }
  }
  return -1;
}

export class PcapLivePort implements LivePort, SegmentSink {
  readonly name: string;
  /** The port's name in the topology (for errors). */
  readonly port: string;
  readonly kind = 'pcap-live' as const;
  /** How frames move (stats' live counters): libpcap's own socket, a callback a frame in, pcap_sendpacket a frame out. */
  readonly mode = 'libpcap';
  /** No tx ring: a send that fails is a txError. */
  readonly txRingFull = 0;
  /** cap's packet socket (cap's own watcher reads it; the live loop polls it to wake), or -1 when it was not found. */
  readonly fd: number;
  /** Frames taken into batches / sent / sends that failed / dropped because the ring was full. */
  rxPackets = 0;
  txPackets = 0;
  txErrors = 0;
  rxMissed = 0;
  private readonly cap: CapHandle;
  /** What cap copies each frame into (its snap length). */
  private readonly pkt = Buffer.alloc(65535);
  private readonly ring = Buffer.alloc(RING * SLOT);
  private readonly ringLen = new Uint32Array(RING);
  private head = 0;
  private tail = 0;
  private readonly txBuf = Buffer.alloc(SLOT + ENCAP_MAX);
  private closed = false;

  constructor(port: string, device: string, filter: string | undefined) {
    this.port = port;
    this.name = device;
    if (!/^[A-Za-z0-9._-]{1,15}$/.test(device)) throw new FpoError('FPO_ERR_USAGE', `pcap-live port ${port}: device "${device}": 1 to 15 letters, digits, ".", "_", "-"`);
    // The filter checked with libpcap's compiler first: its own words, the port and the filter named.
    if (filter !== undefined) {
      try {
        compileFilter(filter);
      } catch (e) {
        if (e instanceof FpoError) throw new FpoError(e.code, `pcap-live port ${port}: filter ${JSON.stringify(filter)}: ${e.message}`);
        throw e;
      }
    }
    if (libc().ifNameToIndex(device) === 0) throw new FpoError('FPO_ERR_IO', `pcap-live port ${port}: no interface named "${device}"`);
    const ifindex = libc().ifNameToIndex(device);
    const { Cap } = loadCap();
    const cap = new Cap();
    const before = new Set(readdirSync('/proc/self/fd'));
    let link: string;
    // cap prints pcap_lookupnet's "no IPv4 address assigned - This may not actually work" to stderr for every
    // L2-only interface (a veth end, an uplink): not a fault for a switch port, so stderr is /dev/null meanwhile.
    const quiet = muteStderr();
    try {
      link = cap.open(device, filter ?? '', KERNEL_BUFFER, this.pkt);
    } catch (e) {
      failed.push(cap);
      throw new FpoError('FPO_ERR_IO', `pcap-live port ${port}: libpcap cannot open "${device}": ${(e as Error).message}`);
    } finally {
      quiet();
    }
    if (link !== 'ETHERNET') {
      cap.close();
      throw new FpoError('FPO_ERR_IO', `pcap-live port ${port}: "${device}" has link type ${link}; fpo switches Ethernet frames`);
    }
    this.fd = packetSocketOf(ifindex, before);
    if (this.fd >= 0) {
      const one = Buffer.alloc(4);
      one.writeInt32LE(1, 0);
      libc().setsockopt(this.fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, one, 4);
    }
    this.cap = cap;
    cap.on('packet', (n) => this.onPacket(n));
  }

  // Fast path (cap's callback, once a frame): into the ring's next slot, or counted as missed.
  private onPacket(n: number): void {
    const h = this.head;
    if (h - this.tail >= RING) {
      this.rxMissed++;
      return;
    }
    const s = h & (RING - 1);
    const len = n < SLOT ? n : SLOT;
    this.pkt.copy(this.ring, s * SLOT, 0, len);
    // A frame that fills the slot is marked with its real length: fill drops it as frameTooBig.
    this.ringLen[s] = n;
    this.head = h + 1;
  }

  /** Fast path: hands up to a batch of waiting frames to the batch, in place; returns how many. */
  fill(batch: PacketBatch, ppid: number, nowUs: number): number {
    batch.batchSetBuffer(this.ring);
    batch.rawPcapLE = false;
    batch.vnet = false;
    const waiting = this.head - this.tail;
    const n = waiting < batch.capacity ? waiting : batch.capacity;
    const sec = Math.floor(nowUs / 1e6);
    const usec = nowUs % 1e6;
    let t = this.tail;
    for (let i = 0; i < n; i++, t++) {
      const s = t & (RING - 1);
      const len = this.ringLen[s];
      batch.off[i] = s * SLOT;
      batch.caplen[i] = len < SLOT ? len : SLOT;
      batch.wirelen[i] = len;
      batch.tsA[i] = sec;
      batch.tsB[i] = usec;
      batch.ifIndex[i] = 0;
      batch.inPpid[i] = ppid;
      batch.drop[i] = len >= SLOT ? D.frameTooBig : 0;
    }
    this.tail = t;
    batch.count = n;
    this.rxPackets += n;
    return n;
  }

  /** Sends packets idx[from .. from + n), each through pcap_sendpacket. */
  writeBatch(batch: PacketBatch, idx: Uint16Array, from: number, n: number, enc?: Int32Array, encap?: Encap): void {
    const out = this.txBuf;
    for (let j = from; j < from + n; j++) {
      const i = idx[j];
      const e = enc !== undefined ? enc[j] : TX_PLAIN;
      if (batch.vnet && needsSoftware(batch, i)) {
        // A segment or a partial checksum from a port with offloads: cut and finished in software (offload.ts).
        this.curE = e;
        this.curEncap = encap;
        this.curHash = batch.hash[i];
        if (SoftOffload.get().cut(batch, i, this) === 0) this.txErrors++;
        continue;
      }
      this.send(out, writeFrame(out, 0, out.length, batch, i, e, encap));
    }
  }

  // The frame in progress of a packet cut in software: its tx code, encap and hash.
  private curE = TX_PLAIN;
  private curEncap: Encap | undefined;
  private curHash = 0;

  /** SegmentSink: one frame of a packet cut in software (offload.ts), written as its packet's copy would be. */
  segment(src: Uint8Array, off: number, len: number): boolean {
    this.send(this.txBuf, writeBytes(this.txBuf, 0, this.txBuf.length, src, off, len, len, this.curHash, this.curE, this.curEncap));
    return true; // each send fails on its own, counted
  }

  /** SegmentSink: never called (this port never says it has no room). */
  segmentsLost(n: number): void {
    this.txErrors += n;
  }

  // One frame of `len` bytes at out[0..] (len < 0: it did not fit, counted).
  private send(out: Buffer, len: number): void {
    if (len < 0) {
      this.txErrors++;
      return;
    }
    try {
      this.cap.send(out, len);
      this.txPackets++;
    } catch {
      // pcap_sendpacket failed (the device down, its queue full): counted, never thrown into the datapath.
      this.txErrors++;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.cap.close();
  }
}
