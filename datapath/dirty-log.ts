/**
 * DirtyBitmap: the hypervisor's dirty-page table for one guest's memory
 * (issue 21; the seed's "tracking virtual machine memory modified by an
 * SR-IOV device"): a bit per 4 KiB page, set when the page is written and
 * cleared when a migration round reads it.
 *
 * The bits are 32-bit words in a SharedArrayBuffer, set with Atomics.or and
 * read-and-cleared with Atomics.exchange, so that writers on other threads
 * (the guest's own CPU-side writes, standing in for EPT dirty bits; the PF
 * driver marking a VF's DMA) and the migration's reader never lose a mark:
 * a bit set before a word's exchange is in that read, one set after it is
 * in the next — each write is seen at least once, and a read clears only
 * what it returns. Marking is idempotent (a bit set twice is one dirty
 * page).
 */
import { FpoError } from './errors.js';

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 1 << PAGE_SHIFT;

export class DirtyBitmap {
  readonly pages: number;
  /** The bits, word w holding pages 32w .. 32w + 31 (bit p & 31). Shared: hand `words.buffer` to another thread to mark there. */
  readonly words: Int32Array;

  /** A bitmap for `pages` pages, over `shared` (another bitmap's words.buffer, to mark from another thread) or a new buffer. */
  constructor(pages: number, shared?: SharedArrayBuffer) {
    if (!Number.isInteger(pages) || pages < 1 || pages > 1 << 28) throw new FpoError('FPO_ERR_USAGE', `dirty bitmap: ${pages} pages (expected 1..${1 << 28})`);
    const n = (pages + 31) >>> 5;
    const buf = shared ?? new SharedArrayBuffer(n * 4);
    if (buf.byteLength < n * 4) throw new FpoError('FPO_ERR_USAGE', `dirty bitmap: a shared buffer of ${buf.byteLength} bytes for ${pages} pages (${n * 4} needed)`);
    this.pages = pages;
    this.words = new Int32Array(buf, 0, n);
  }

  /** Fast path: page p is dirty. */
  mark(p: number): void {
    if (p >= this.pages) return; // past the memory: not a page of it (callers check; this keeps a bad one from a phantom bit or a throw)
    Atomics.or(this.words, p >>> 5, 1 << (p & 31));
  }

  /** Fast path: every page that bytes [at, at + len) touch is dirty (a buffer that straddles a page boundary dirties both). */
  markBytes(at: number, len: number): void {
    if (len <= 0) return;
    const first = Math.floor(at / PAGE_SIZE);
    const last = Math.min(Math.floor((at + len - 1) / PAGE_SIZE), this.pages - 1);
    for (let p = first; p <= last; p++) Atomics.or(this.words, p >>> 5, 1 << (p & 31));
  }

  /** Whether page p is dirty now (no change). */
  isDirty(p: number): boolean {
    return (Atomics.load(this.words, p >>> 5) & (1 << (p & 31))) !== 0;
  }

  /**
   * The dirty pages, cleared as they are read: their numbers into `out`
   * (from 0, at most out.length; the rest stay dirty for the next read).
   * Returns how many were written.
   */
  readAndClear(out: Uint32Array): number {
    const words = this.words;
    let n = 0;
    for (let w = 0; w < words.length && n < out.length; w++) {
      if (Atomics.load(words, w) === 0) continue;
      let bits = Atomics.exchange(words, w, 0);
      while (bits !== 0) {
        const b = 31 - Math.clz32(bits & -bits);
        bits &= bits - 1;
        if (n === out.length) {
          // No room: this bit (and those after it) back for the next read.
          Atomics.or(words, w, (1 << b) | bits);
          return n;
        }
        out[n++] = w * 32 + b;
      }
    }
    return n;
  }

  /** Dirty pages now (a count, no change). */
  count(): number {
    let n = 0;
    for (let w = 0; w < this.words.length; w++) {
      let v = Atomics.load(this.words, w);
      while (v !== 0) { v &= v - 1; n++; }
    }
    return n;
  }

  /** Every page dirty (a migration's first round copies all). */
  markAll(): void {
    const full = this.pages >>> 5;
    for (let w = 0; w < full; w++) Atomics.store(this.words, w, -1);
    for (let p = full * 32; p < this.pages; p++) this.mark(p);
  }
}
