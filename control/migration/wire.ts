/**
 * The migration's wire (issue 21): a VM's memory from one fpo host to
 * another over a TCP connection on the underlay. Frames: a length (u32
 * little-endian, the type byte and payload), a type byte, the payload.
 *
 *   HELLO   1  JSON {interface, destPort, size}: a VM's memory of `size` bytes
 *              for the destination's vf port destPort
 *   ACCEPT  2  JSON {}: the destination takes it (or ERROR)
 *   PAGES   3  u32 n, then n × (u32 page number, 4096 bytes)
 *   FINAL   4  JSON {}: the last pages were sent; resume the VM there
 *   DONE    5  JSON {sha256, mappingUpdates, flowRewrites, ...}: resumed; the
 *              memory's SHA-256 as it was received, before the VM ran again
 *   ERROR   6  JSON {message}
 *
 * The reader takes bytes as they come and refuses (FPO_ERR_BAD_INPUT, with
 * what was expected) a frame over MAX_FRAME, an unknown type, a JSON that is
 * not an object, or PAGES whose count does not match its length.
 */
import { FpoError } from '../../datapath/errors.js';
import { PAGE_SIZE } from '../../datapath/dirty-log.js';

export const T_HELLO = 1;
export const T_ACCEPT = 2;
export const T_PAGES = 3;
export const T_FINAL = 4;
export const T_DONE = 5;
export const T_ERROR = 6;
/** The largest frame: 1024 pages and their numbers. */
export const MAX_FRAME = 1 + 4 + 1024 * (4 + PAGE_SIZE);

export type Frame =
  | { type: typeof T_HELLO | typeof T_ACCEPT | typeof T_FINAL | typeof T_DONE | typeof T_ERROR; json: Record<string, unknown> }
  | { type: typeof T_PAGES; n: number; body: Buffer };

export function jsonFrame(type: number, json: Record<string, unknown>): Buffer {
  const body = Buffer.from(JSON.stringify(json));
  const out = Buffer.alloc(5 + body.length);
  out.writeUInt32LE(1 + body.length, 0);
  out[4] = type;
  body.copy(out, 5);
  return out;
}

/** A PAGES frame of pages[0..n) from `src` (page p at src[base + p * 4096]). */
export function pagesFrame(pages: Uint32Array, n: number, src: Uint8Array, base: number): Buffer {
  const len = 1 + 4 + n * (4 + PAGE_SIZE);
  const out = Buffer.alloc(4 + len);
  out.writeUInt32LE(len, 0);
  out[4] = T_PAGES;
  out.writeUInt32LE(n, 5);
  let o = 9;
  for (let k = 0; k < n; k++) {
    out.writeUInt32LE(pages[k], o);
    out.set(src.subarray(base + pages[k] * PAGE_SIZE, base + (pages[k] + 1) * PAGE_SIZE), o + 4);
    o += 4 + PAGE_SIZE;
  }
  return out;
}

/** Frames from a byte stream, in order; `push` returns those completed by the bytes given. */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: Frame[] = [];
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32LE(0);
      if (len < 1 || len > MAX_FRAME) throw new FpoError('FPO_ERR_BAD_INPUT', `migration: a frame of ${len} bytes (expected 1..${MAX_FRAME})`);
      if (this.buf.length < 4 + len) break;
      const type = this.buf[4];
      const body = this.buf.subarray(5, 4 + len);
      this.buf = this.buf.subarray(4 + len);
      if (type === T_PAGES) {
        if (body.length < 4) throw new FpoError('FPO_ERR_BAD_INPUT', 'migration: PAGES without its count');
        const n = body.readUInt32LE(0);
        if (body.length !== 4 + n * (4 + PAGE_SIZE)) throw new FpoError('FPO_ERR_BAD_INPUT', `migration: PAGES of ${n} pages in ${body.length} bytes (expected ${4 + n * (4 + PAGE_SIZE)})`);
        out.push({ type: T_PAGES, n, body: body.subarray(4) });
        continue;
      }
      if (type < T_HELLO || type > T_ERROR) throw new FpoError('FPO_ERR_BAD_INPUT', `migration: frame type ${type} (expected 1..6)`);
      let json: unknown;
      try {
        json = JSON.parse(body.toString('utf8'));
      } catch {
        throw new FpoError('FPO_ERR_BAD_INPUT', `migration: frame type ${type}: its body is not JSON`);
      }
      if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new FpoError('FPO_ERR_BAD_INPUT', `migration: frame type ${type}: expected a JSON object`);
      out.push({ type: type as typeof T_HELLO, json: json as Record<string, unknown> });
    }
    return out;
  }
}
