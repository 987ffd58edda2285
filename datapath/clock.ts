/**
 * The datapath's clocks: what `Datapath.process(batch, now)` is given as
 * `now` (ms), which flows' `used` times and the idle expiry read.
 *
 * The datapath clock only moves forward (a flow's `used` is the latest
 * `now` it was hit at, and expiry removes flows used before `now - idle`),
 * so one reading far in the future froze it: a packet stamped 0xffffffff
 * put `now` in 2106, and no flow expired again. Two clocks, so that no
 * packet can do that:
 *
 *   monotonicMs   the live service (fpo run: its ports and inject): its own
 *                 monotonic clock, never a packet's timestamp. Epoch-like
 *                 (performance.timeOrigin + performance.now()), so "used
 *                 N s ago" reads as on the wall, but a wall-clock step (NTP,
 *                 date -s) does not move it.
 *   CaptureClock  a replay, which runs on capture time so that idle
 *                 timeouts mean what they meant on the wire: it follows the
 *                 capture's timestamps step by step, but a step forward is
 *                 at most `maxStepMs` (longer ones are cut to it and
 *                 counted in `jumps`) and a step back is 0 (counted in
 *                 `backs`). So a single wild timestamp moves the clock by at
 *                 most one step, and the next sane timestamp carries on from
 *                 there; a real gap longer than the bound (a capture paused
 *                 for an hour) advances it by the bound, which still expires
 *                 every flow idle across it (the default bound is above the
 *                 default idle timeout).
 */

/** The live service's clock, in ms: monotonic, epoch-like. */
export function monotonicMs(): number {
  return performance.timeOrigin + performance.now();
}

export class CaptureClock {
  /** The clock now (ms): the first reading, then the sum of bounded steps. */
  now = 0;
  /** Steps forward longer than maxStepMs, cut to it. */
  jumps = 0;
  /** Steps back (the capture's time went backwards), taken as 0. */
  backs = 0;
  private last = NaN;

  /** @param maxStepMs the longest step forward taken as is (default 60 s: above the default idle timeout of 10 s). */
  constructor(readonly maxStepMs = 60_000) {}

  /** Takes the capture time `t` (ms) of the next batch; returns the datapath clock. */
  advance(t: number): number {
    if (!(t === t)) return this.now; // NaN: no reading
    const last = this.last;
    this.last = t;
    if (!(last === last)) return (this.now = t); // the first reading
    const step = t - last;
    if (step > this.maxStepMs) {
      this.jumps++;
      this.now += this.maxStepMs;
    } else if (step < 0) {
      this.backs++;
    } else {
      this.now += step;
    }
    return this.now;
  }
}
