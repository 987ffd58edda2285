/**
 * Arena: one block of packet memory, allocated and touched at start, that
 * the rx chunk of a capture reader and the tx buffers of the writers share.
 *
 * Why one block: moving a packet from an rx buffer to a tx buffer is then
 * `bytes.copyWithin(dst, src, end)` — a memmove with no view object made per
 * packet (`set(src.subarray(...))` makes one each time; measured here:
 * copyWithin 21 ns for 64 B and 60 ns for 1500 B, Buffer#copy 60/92 ns).
 * Regions are carved once, at start, by `take`; nothing is ever freed.
 */
export class Arena {
  /** All the arena's bytes. Regions are ranges of this array. */
  readonly bytes: Uint8Array;
  /** The same bytes as 32-bit words (the arena's size is rounded up to 4). */
  readonly words: Int32Array;
  private next = 0;
  /** End of the bytes this arena may carve (its region of a shared block; else all of it). */
  private readonly limit: number;

  /**
   * `size` bytes of its own; or, with `shared`, the region [from, to) of a
   * block several threads view (replay-workers.ts: the input chunks that
   * every worker reads, then each worker's own region for its tx buffers),
   * so that `bytes` and `words` view the whole block and a packet in a
   * shared chunk is in this arena too (arenaCopy, the fast lane's direct tx).
   */
  constructor(size: number, shared?: { buffer: SharedArrayBuffer; from: number; to: number }) {
    if (shared !== undefined) {
      this.words = new Int32Array(shared.buffer);
      this.bytes = new Uint8Array(shared.buffer);
      this.next = shared.from;
      this.limit = shared.to;
      this.bytes.fill(0, shared.from, shared.to); // first touch of its own region
      return;
    }
    this.words = new Int32Array((size + 3) >> 2);
    this.bytes = new Uint8Array(this.words.buffer);
    this.limit = this.bytes.length;
    this.bytes.fill(0); // first touch now, not inside the first batches
  }

  /** Carves `n` bytes (rounded up to 64) and returns their offset in `bytes`. */
  take(n: number): number {
    const at = this.next;
    const size = (n + 63) & ~63;
    if (at + size > this.limit) throw new RangeError(`arena of ${this.limit} bytes cannot give ${n} more (used ${at})`);
    this.next = at + size;
    return at;
  }

  /** Bytes not yet carved. */
  get free(): number {
    return this.limit - this.next;
  }
}

/**
 * Copies bytes[from .. from + len) to bytes[to ..] (regions must not
 * overlap), where `words` views the same memory as `bytes`. A short run
 * with both ends 4-byte aligned moves as unrolled 32-bit words, which
 * saves copyWithin's call into the runtime: measured here
 * (bench/ports/copy.ts, 80-byte records to 64 ports) 20 ns against 24 ns;
 * anything else is a copyWithin (equal at 1516 bytes).
 */
export function arenaCopy(bytes: Uint8Array, words: Int32Array, from: number, len: number, to: number): void {
  if (((from | to | len) & 3) !== 0 || len > SMALL_COPY) {
    bytes.copyWithin(to, from, from + len);
    return;
  }
  let a = to >> 2;
  let b = from >> 2;
  const end = b + (len >> 2);
  for (; b + 4 <= end; a += 4, b += 4) {
    words[a] = words[b]; words[a + 1] = words[b + 1]; words[a + 2] = words[b + 2]; words[a + 3] = words[b + 3];
  }
  for (; b < end; a++, b++) words[a] = words[b];
}

/** Longest copy arenaCopy does by words (past this, copyWithin's memmove wins). */
export const SMALL_COPY = 256;

/**
 * Whether this engine copies a Float64Array element to another bit for bit,
 * NaNs included. ECMAScript lets an engine store any NaN encoding it likes
 * (NumericToRawBytes), which would change packet bytes that happen to spell
 * a NaN; V8 keeps them (a load and a store of the 8 bytes, in every tier:
 * test/datapath/arena.test.ts checks the interpreter's and the optimized
 * code's copies of every kind of NaN). Checked once at load, where the copy
 * runs in the interpreter; fast-lane.ts copies records 8 bytes at a time
 * only when this holds.
 */
export const FLOAT64_COPY_EXACT: boolean = float64CopyExact();

function float64CopyExact(): boolean {
  const w = new Uint32Array(24);
  const f = new Float64Array(w.buffer);
  // Signalling and quiet NaNs with payloads, both signs; an infinity; a denormal.
  const pat = [0x00000001, 0x7ff00000, 0x12345678, 0xfff7ffff, 0x00000000, 0x7ff80001, 0xdeadbeef, 0xfff00001, 0, 0x7ff00000, 1, 0];
  w.set(pat);
  for (let i = 0; i < 6; i++) f[6 + i] = f[i];
  for (let i = 0; i < 12; i++) if (w[12 + i] !== pat[i]) return false;
  return true;
}

