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
  private next = 0;

  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.bytes.fill(0); // first touch now, not inside the first batches
  }

  /** Carves `n` bytes (rounded up to 64) and returns their offset in `bytes`. */
  take(n: number): number {
    const at = this.next;
    const size = (n + 63) & ~63;
    if (at + size > this.bytes.length) throw new RangeError(`arena of ${this.bytes.length} bytes cannot give ${n} more (used ${at})`);
    this.next = at + size;
    return at;
  }

  /** Bytes not yet carved. */
  get free(): number {
    return this.bytes.length - this.next;
  }
}
