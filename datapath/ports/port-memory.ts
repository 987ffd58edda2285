/**
 * PortMemory: one address range that holds every live port's packet memory
 * in this thread — the AF_PACKET rings (mmap of each socket, placed with
 * MAP_FIXED inside the range) and the TAP ports' rx slots and tx buffers
 * (anonymous mappings there) — seen from JavaScript as ONE ArrayBuffer.
 *
 * Why: a batch's bytes stay where rx put them (the rx ring's block, a TAP
 * slot), and tx must copy each frame once into the out port's memory (its
 * tx ring's frame). Between two typed arrays over different ArrayBuffers,
 * that copy needs a subarray per frame (an allocation; measured here: 51 ns
 * for 64 B and a scavenge every ~10 k frames) or a JavaScript loop (550 ns
 * for 1500 B). Within one ArrayBuffer it is copyWithin: a memmove, no
 * object made. So all ports' memory is one buffer, and every batch from a
 * live port has `buf` = `bytes`.
 *
 * The range is reserved (PROT_NONE, MAP_NORESERVE: address space, no memory)
 * once, at the first port; ports take page-aligned pieces in order. A
 * closed port's piece is mapped back to PROT_NONE (its socket's ring
 * unmapped) and reused by the next port of its size; the range itself lives
 * as long as the thread, since typed arrays over it may outlive a port.
 */
import { FpoError } from '../errors.js';
import { MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, PROT_READ_WRITE, libc } from './libc.js';

/** Address space reserved for live ports (virtual only): 1 GiB, ~60 ring ports at the default sizes. */
export const PORT_MEMORY_BYTES = 1 << 30;
const PAGE = 4096;

export class PortMemory {
  private static instance: PortMemory | null = null;

  /** The one view of the whole range. */
  readonly bytes: Uint8Array;
  private readonly base: bigint;
  private next = 0;
  /** TAP rx slots by their offset: a frame still in its slot is written to another TAP from there (tap-port.ts). */
  readonly slots = new Map<number, Buffer>();
  /** The same for TAPs with offloads: a view from the frame's virtio-net header on, keyed by where the frame starts. */
  readonly vnetSlots = new Map<number, Buffer>();
  /** Released pieces by size, handed out again to a port of the same size (a service that closes and reopens ports). */
  private readonly free = new Map<number, number[]>();

  /** The thread's port memory, reserved on first use. */
  static get(): PortMemory {
    PortMemory.instance ??= new PortMemory();
    return PortMemory.instance;
  }

  private constructor() {
    const r = libc().reserve(PORT_MEMORY_BYTES);
    if (r === null) throw new FpoError('FPO_ERR_IO', `live ports: cannot reserve ${PORT_MEMORY_BYTES} bytes of address space for port memory (errno ${libc().errno()})`);
    this.base = r.base;
    this.bytes = new Uint8Array(r.bytes);
  }

  private take(len: number, what: string): number {
    const size = Math.ceil(len / PAGE) * PAGE;
    const again = this.free.get(size)?.pop();
    if (again !== undefined) return again;
    if (this.next + size > PORT_MEMORY_BYTES) throw new FpoError('FPO_ERR_USAGE', `${what}: port memory full (${PORT_MEMORY_BYTES} bytes for all live ports; ${this.next} taken)`);
    const at = this.next;
    this.next += size;
    return at;
  }

  /** Maps `len` bytes of socket `fd` (its rings; from `pgoff`, which names the ring for AF_XDP) into the range; returns their offset in `bytes`. */
  mapSocket(fd: number, len: number, what: string, pgoff = 0): number {
    const at = this.take(len, what);
    if (!libc().mapFixed(this.base + BigInt(at), len, PROT_READ_WRITE, MAP_SHARED, fd, pgoff)) {
      this.release(at, len); // a failed MAP_FIXED may have unmapped the piece: reserved again
      throw new FpoError('FPO_ERR_IO', `${what}: mmap of its rings (${len} bytes) failed (errno ${libc().errno()})`);
    }
    return at;
  }

  /** `len` bytes of fresh memory, touched now (not in the first batches); returns their offset. */
  anon(len: number, what: string): number {
    const at = this.take(len, what);
    if (!libc().mapFixed(this.base + BigInt(at), len, PROT_READ_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1)) {
      this.release(at, len);
      throw new FpoError('FPO_ERR_IO', `${what}: mmap of ${len} bytes failed (errno ${libc().errno()})`);
    }
    this.bytes.fill(0, at, at + len);
    return at;
  }

  /** The address of offset `at` (for another thread to unmap a piece of a thread that died: workers.ts). */
  addressOf(at: number): bigint {
    return this.base + BigInt(at);
  }

  /** Gives a piece back: unmapped (PROT_NONE again, the socket's ring let go), to be taken by a later port of its size. */
  release(at: number, len: number): void {
    const size = Math.ceil(len / PAGE) * PAGE;
    libc().mapFixed(this.base + BigInt(at), size, 0, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
    this.giveBack(at, len);
  }

  /** A piece back on the free list (nothing mapped there any more). */
  private giveBack(at: number, len: number): void {
    const size = Math.ceil(len / PAGE) * PAGE;
    const list = this.free.get(size);
    if (list) list.push(at);
    else this.free.set(size, [at]);
  }
}
