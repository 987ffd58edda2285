/**
 * The state transforms between firewall v1 (format 1) and v2 (format 2):
 *
 *   v1 → v2 (fromV1)  a field added and a state split: each connection gets
 *                     the generation of the port's rules it now lives under
 *                     (v1 did not record one: the port's current
 *                     generation, under which v1 let it live), and a UDP or
 *                     other connection v1 saw both ways often enough
 *                     (BIDIR, at least STREAM_PACKETS each way) becomes a
 *                     STREAM, v2's timeout class, its time left recomputed
 *                     from when it was last seen (v1's bidir timeout minus
 *                     its time left) — as if v2 had seen it all along;
 *   v2 → v1 (toV1)    the downgrade: generations dropped, STREAM back to
 *                     BIDIR with v1's timeout from when it was last seen; a
 *                     stream idle longer than v1's bidir timeout would
 *                     already have expired under v1, and is left out.
 *
 * Both work on columns the caller owns (copies), never on a saved state
 * itself: a failed restore leaves the state as it was saved.
 */
import { type ConnColumns, type Timeouts, TUPLE_WORDS } from '../../../conntrack/conntrack.js';
import type { FwState } from '../module.js';

const BIDIR = 2;
const STREAM = 3;
/** As ConnTrack's STREAM_PACKETS: packets each way before a UDP/other connection is a stream. */
export const STREAM_PACKETS = 2;

function icmp(proto: number): boolean {
  return proto === 1 || proto === 58;
}

/** v1's columns (a copy, changed in place) → v2's: ruleGen[r] set, streams split out. */
export function fromV1(cols: ConnColumns, ruleGen: Uint32Array, gen: number, v1: Timeouts, v2: Timeouts): ConnColumns {
  for (let r = 0; r < cols.n; r++) {
    ruleGen[r] = gen;
    const p = cols.proto[r];
    if (p === 6 || icmp(p) || cols.pstate[r] !== BIDIR) continue;
    if (cols.packets[r * 2] < STREAM_PACKETS || cols.packets[r * 2 + 1] < STREAM_PACKETS) continue;
    const idle = Math.max(0, v1.otherBidir - cols.expiresIn[r]);
    cols.pstate[r] = STREAM;
    cols.expiresIn[r] = Math.max(1, v2.otherStream - idle);
  }
  return cols;
}

/** v2's state → v1's columns (`cols`: a copy of the state's, changed in place; records left out are squeezed out). */
export function toV1(state: FwState, cols: ConnColumns, v1: Timeouts): ConnColumns {
  const v2Stream = state.streamTimeout;
  let w = 0;
  for (let r = 0; r < cols.n; r++) {
    if (cols.pstate[r] === STREAM && cols.proto[r] !== 6) {
      const idle = Math.max(0, v2Stream - cols.expiresIn[r]);
      const left = v1.otherBidir - idle;
      if (left <= 0) continue; // expired under v1's timeout: not carried back
      cols.pstate[r] = BIDIR;
      cols.expiresIn[r] = left;
    }
    if (w !== r) moveRecord(cols, r, w);
    w++;
  }
  cols.n = w;
  return cols;
}

function moveRecord(c: ConnColumns, from: number, to: number): void {
  const W = 2 * TUPLE_WORDS;
  c.tup.copyWithin(to * W, from * W, (from + 1) * W);
  for (const k of ['proto', 'pstate', 'natKind', 'replied', 'expiresIn'] as const) c[k][to] = c[k][from];
  for (const k of ['tcpState', 'seqlo', 'seqhi', 'maxwin', 'wscale', 'packets', 'bytes'] as const) {
    c[k][to * 2] = c[k][from * 2];
    c[k][to * 2 + 1] = c[k][from * 2 + 1];
  }
}
