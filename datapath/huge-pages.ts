/**
 * Huge pages for big tables: madvise(MADV_HUGEPAGE) over an array's memory,
 * so that its first touch faults a 2 MiB page at a time, not 4 KiB (this
 * kernel's transparent huge pages are in madvise mode: only asked-for
 * memory gets them). The first touch of fresh memory is dear here (~3 ms a
 * MB, a fault a page): measured, 64 MB touched in 20 ms advised, 190–200 ms
 * not.
 *
 * Through koffi (as datapath/ports/libc.ts), loaded on the first array big
 * enough (~12–18 ms to load: arrays under MIN_BYTES are left alone, their
 * faults cost less than that). Best effort: without koffi, or where the call
 * fails, nothing changes but the time.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

/** Arrays smaller than this are not advised (loading the FFI costs more than their faults). */
export const MIN_BYTES = 8 << 20;
const HUGE = 2 << 20;
const MADV_HUGEPAGE = 14;

/** madvise over view's bytes [from, from + len), and the address of a view's memory; null when koffi or libc is not there. */
let ffi: { madvise: (view: ArrayBufferView, from: number, len: number) => boolean; address: (view: ArrayBufferView) => number } | null | undefined;

function load(): typeof ffi {
  try {
    const koffi = require('koffi') as typeof import('koffi');
    const fn = koffi.load('libc.so.6').func('int madvise(void *addr, size_t len, int advice)');
    return {
      madvise: (view, from, len) => {
        const at = view instanceof Uint8Array ? view.subarray(from) : new Uint8Array(view.buffer, view.byteOffset + from);
        return fn(at, len, MADV_HUGEPAGE) === 0;
      },
      address: (view) => Number(koffi.address(view)),
    };
  } catch {
    return null;
  }
}

/**
 * Advises huge pages for the whole 2 MiB pages inside `view`'s memory (not
 * touched yet: call right after allocating). Returns whether it did.
 */
export function adviseHugePages(view: ArrayBufferView): boolean {
  if (view.byteLength < MIN_BYTES) return false;
  if (ffi === undefined) ffi = load();
  if (ffi === null || ffi === undefined) return false;
  try {
    const base = ffi.address(view);
    const pad = (HUGE - (base % HUGE)) % HUGE;
    const len = Math.floor((view.byteLength - pad) / HUGE) * HUGE;
    return len > 0 && ffi.madvise(view, pad, len);
  } catch {
    return false;
  }
}
