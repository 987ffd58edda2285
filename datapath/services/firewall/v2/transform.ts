/**
 * The state transforms between firewall v1 (format 1) and v2 (format 2),
 * one record at a time, on a port's table in place (the way a port moves
 * in one process: its table changes hands, no copy) or on saved columns
 * (a state from a file):
 *
 *   v1 → v2 (up)    a field added and a state split: each connection gets
 *                   the generation of the port's rules it now lives under
 *                   (v1 did not record one: the port's current generation,
 *                   under which v1 let it live) in its mark, and a UDP or
 *                   other connection v1 saw both ways often enough (BIDIR,
 *                   at least STREAM_PACKETS each way) becomes a STREAM, v2's
 *                   timeout class, its time left recomputed from when it was
 *                   last seen (v1's bidir timeout minus its time left) — as
 *                   if v2 had seen it all along;
 *   v2 → v1 (down)  marks kept (v1 does not read them), STREAM back to BIDIR with v1's timeout
 *                   from when it was last seen; a stream idle longer than
 *                   v1's bidir timeout would already have expired under v1,
 *                   and goes.
 *
 * Right after each other the two give the state back as it was (a
 * rollback after a restore runs `down`).
 */
import type { ConnColumns, ConnTrack, Timeouts } from '../../../conntrack/conntrack.js';

const BIDIR = 2;
const STREAM = 3;
/** As ConnTrack's STREAM_PACKETS: packets each way before a UDP/other connection is a stream. */
export const STREAM_PACKETS = 2;

/** The arrays a record lives in: a table's (exp: clock readings, now the clock) or columns' (exp: ms left, now 0). */
interface Records { proto: Uint8Array; pstate: Uint8Array; packets: Float64Array; mark: Uint32Array }

// Record r, v1 → v2. A mark kept from an earlier v2 (a rollback of a downgrade) stays: the connection is
// still under the generation that committed it.
function up(a: Records, exp: Float64Array, r: number, now: number, gen: number, v1: Timeouts, v2: Timeouts): void {
  if (a.mark[r] === 0) a.mark[r] = gen;
  const p = a.proto[r];
  if (p === 6 || p === 1 || p === 58 || a.pstate[r] !== BIDIR) return;
  if (a.packets[r * 2] < STREAM_PACKETS || a.packets[r * 2 + 1] < STREAM_PACKETS) return;
  const idle = Math.max(0, v1.otherBidir - (exp[r] - now));
  a.pstate[r] = STREAM;
  exp[r] = now + Math.max(1, v2.otherStream - idle);
}

// Record r, v2 → v1: false when it goes (expired under v1's timeout). The mark stays (v1 does not read it;
// a rollback to v2 finds it).
function down(a: Records, exp: Float64Array, r: number, now: number, streamTimeout: number, v1: Timeouts): boolean {
  if (a.pstate[r] !== STREAM || a.proto[r] === 6) return true;
  const idle = Math.max(0, streamTimeout - (exp[r] - now));
  const left = v1.otherBidir - idle;
  if (left <= 0) return false;
  a.pstate[r] = BIDIR;
  exp[r] = now + left;
  return true;
}

/** A port's table, v1 → v2, in place; returns its live connections. */
export function tableUp(t: ConnTrack, now: number, gen: number, v1: Timeouts, v2: Timeouts): number {
  const a = t.view();
  let n = 0;
  for (let id = 0; id < a.capacity; id++) if (a.used[id] === 1) { up(a, a.expires, id, now, gen, v1, v2); n++; }
  t.streams = true;
  return n;
}

/** A port's table, v2 → v1, in place (streams idle past v1's timeout freed); returns its live connections. */
export function tableDown(t: ConnTrack, now: number, streamTimeout: number, v1: Timeouts): number {
  const a = t.view();
  let n = 0;
  for (let id = 0; id < a.capacity; id++) {
    if (a.used[id] !== 1) continue;
    if (down(a, a.expires, id, now, streamTimeout, v1)) n++;
    else t.release(id);
  }
  t.streams = false;
  return n;
}

/** Saved v1 columns (a copy, changed in place) → v2's. */
export function fromV1(cols: ConnColumns, gen: number, v1: Timeouts, v2: Timeouts): ConnColumns {
  for (let r = 0; r < cols.n; r++) up(cols, cols.expiresIn, r, 0, gen, v1, v2);
  return cols;
}

/** Saved v2 columns (a copy, changed in place; records that go are squeezed out) → v1's. */
export function toV1(cols: ConnColumns, streamTimeout: number, v1: Timeouts): ConnColumns {
  let w = 0;
  for (let r = 0; r < cols.n; r++) {
    if (!down(cols, cols.expiresIn, r, 0, streamTimeout, v1)) continue;
    if (w !== r) moveRecord(cols, r, w);
    w++;
  }
  cols.n = w;
  return cols;
}

function moveRecord(c: ConnColumns, from: number, to: number): void {
  const W = c.tup.length / c.proto.length;
  c.tup.copyWithin(to * W, from * W, (from + 1) * W);
  for (const k of ['proto', 'pstate', 'natKind', 'replied', 'expiresIn', 'mark'] as const) c[k][to] = c[k][from];
  for (const k of ['tcpState', 'seqlo', 'seqhi', 'maxwin', 'wscale', 'packets', 'bytes'] as const) {
    c[k][to * 2] = c[k][from * 2];
    c[k][to * 2 + 1] = c[k][from * 2 + 1];
  }
}
