/**
 * One frame of a batch written into a port's tx memory (a TAP's tx buffer,
 * a slot of an AF_PACKET tx ring) with what its copy's tx code asks for
 * (vlan.ts): outer headers in front (encap), a VLAN tag pushed or popped,
 * or the bytes as they are. One copy of the frame; within port memory
 * (port-memory.ts) a copyWithin, so no allocation.
 */
import type { PacketBatch } from '../batch.js';
import type { Encap } from '../actions/encap.js';
import { TX_PLAIN, vlanDelta, vlanHeader } from '../actions/vlan.js';

/**
 * Writes packet i of `batch` at dst[at..], in at most `room` bytes, as tx
 * code `e` says. Returns the frame's length, or -1 when it does not fit
 * (nothing meaningful written: the caller counts the drop).
 */
/** Room kept for outer headers: Ethernet, IPv6, UDP and Geneve with its option are 74 bytes. */
export const ENCAP_MAX = 128;

/** dst[at..] = src[from..from + len): a memmove within one buffer (port memory), else a copy through a view. */
function copy(dst: Uint8Array, at: number, src: Uint8Array, from: number, len: number): void {
  if (dst === src) dst.copyWithin(at, from, from + len);
  else dst.set(src.subarray(from, from + len), at); // Slow path: a capture's chunk (inject), not port memory.
}

export function writeFrame(dst: Uint8Array, at: number, room: number, batch: PacketBatch, i: number, e: number, encap: Encap | undefined): number {
  return writeBytes(dst, at, room, batch.buf, batch.off[i], batch.caplen[i], batch.wirelen[i], batch.hash[i], e, encap);
}

/** writeFrame for bytes not in a batch (a segment cut in software, offload.ts): src[off .. off + len). */
export function writeBytes(dst: Uint8Array, at: number, room: number, src: Uint8Array, off: number, len: number, wirelen: number, hash: number, e: number, encap: Encap | undefined): number {
  if (e === TX_PLAIN || (e >= 0 && encap === undefined)) {
    if (len > room) return -1;
    copy(dst, at, src, off, len);
    return len;
  }
  if (e >= 0) {
    const enc = encap as Encap;
    if (len + ENCAP_MAX > room) return -1;
    const hl = enc.write(dst, at, e >> 1, (e & 1) === 1, wirelen, hash);
    copy(dst, at + hl, src, off, len);
    enc.finish(dst, at, e >> 1, hl, len);
    return hl + len;
  }
  const delta = vlanDelta(src, off, len, e);
  if (len + delta > room) return -1;
  if (delta === 0) copy(dst, at, src, off, len);
  else if (delta > 0) {
    copy(dst, at, src, off, 12);
    copy(dst, at + 16, src, off + 12, len - 12);
  } else {
    copy(dst, at, src, off, 12);
    copy(dst, at + 12, src, off + 16, len - 16);
  }
  vlanHeader(dst, at, e, delta, len);
  return len + delta;
}
