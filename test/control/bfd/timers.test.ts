import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Lateness, TimerHeap } from '../../../control/bfd/timers.js';

// Fake setTimeout and performance.now: the heap's order and its deadlines are checked
// exactly, and nothing here depends on how busy the machine is.
beforeEach(() => { vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] }); });
afterEach(() => { vi.useRealTimers(); });

describe('TimerHeap: one heap of deadlines for every BFD session', () => {
  it('runs callbacks in deadline order, each at its deadline and not before', () => {
    const h = new TimerHeap();
    const t0 = performance.now();
    const ran: [string, number][] = [];
    for (const [name, d] of [['c', 30], ['a', 10], ['d', 40], ['b', 20]] as const) h.at(t0 + d, () => ran.push([name, performance.now() - t0]));
    vi.advanceTimersByTime(9);
    expect(ran).toEqual([]);
    vi.advanceTimersByTime(100);
    expect(ran).toEqual([['a', 10], ['b', 20], ['c', 30], ['d', 40]]);
    h.stop();
  });

  it('a cancelled timer never runs, and cancelling one does not disturb the others', () => {
    const h = new TimerHeap();
    const t0 = performance.now();
    const ran: string[] = [];
    const a = h.at(t0 + 10, () => ran.push('a'));
    h.at(t0 + 20, () => ran.push('b'));
    const c = h.at(t0 + 30, () => ran.push('c'));
    h.cancel(a);
    h.cancel(c);
    h.cancel(c); // twice: no effect
    h.cancel(12345); // unknown handle: no effect
    vi.advanceTimersByTime(100);
    expect(ran).toEqual(['b']);
    h.stop();
  });

  it('re-arming (cancel, then a later deadline: a detection timer on each packet) runs only the new one, at the new time', () => {
    const h = new TimerHeap();
    const t0 = performance.now();
    const ran: number[] = [];
    let handle = h.at(t0 + 150, () => ran.push(performance.now() - t0));
    // A packet every 40 ms pushes the detection time on; then the packets stop.
    for (let t = 40; t <= 200; t += 40) {
      vi.advanceTimersByTime(40);
      h.cancel(handle);
      handle = h.at(t0 + t + 150, () => ran.push(performance.now() - t0));
    }
    expect(ran).toEqual([]);
    vi.advanceTimersByTime(1000);
    expect(ran).toEqual([350]);
    h.stop();
  });

  it('re-arming to an earlier deadline than the one armed runs it at the earlier time', () => {
    const h = new TimerHeap();
    const t0 = performance.now();
    const ran: number[] = [];
    const late = h.at(t0 + 500, () => ran.push(-1));
    h.cancel(late);
    h.at(t0 + 5, () => ran.push(performance.now() - t0));
    vi.advanceTimersByTime(10);
    expect(ran).toEqual([5]);
    h.stop();
  });

  it('ten thousand timers with random deadlines, a third cancelled, run once each in deadline order', () => {
    const h = new TimerHeap();
    const t0 = performance.now();
    let seed = 7;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    const want: { id: number; at: number }[] = [];
    const ran: number[] = [];
    for (let i = 0; i < 10_000; i++) {
      const at = t0 + Math.floor(rnd() * 1000) + rnd();
      const handle = h.at(at, () => ran.push(i));
      if (i % 3 === 0) h.cancel(handle);
      else want.push({ id: i, at });
    }
    vi.advanceTimersByTime(2000);
    want.sort((x, y) => x.at - y.at || x.id - y.id);
    expect(ran).toEqual(want.map((w) => w.id));
    h.stop();
  });

  it('timers with equal deadlines all run, in the order they were set', () => {
    const h = new TimerHeap();
    const at = performance.now() + 50;
    const ran: number[] = [];
    for (let i = 0; i < 100; i++) h.at(at, () => ran.push(i));
    vi.advanceTimersByTime(50);
    expect(ran).toEqual(Array.from({ length: 100 }, (_, i) => i));
    h.stop();
  });

  it('a callback that sets a timer due at once does not run it in the same turn, but soon after', () => {
    const h = new TimerHeap();
    const t0 = performance.now();
    let n = 0;
    const again = () => { if (++n < 5) h.at(performance.now(), again); };
    h.at(t0 + 1, again);
    vi.advanceTimersByTime(1);
    expect(n).toBe(1);
    vi.advanceTimersByTime(10);
    expect(n).toBe(5);
    h.stop();
  });

  it('stop drops every timer', () => {
    const h = new TimerHeap();
    let ran = 0;
    for (let i = 0; i < 10; i++) h.at(performance.now() + i, () => ran++);
    h.stop();
    vi.advanceTimersByTime(100);
    expect(ran).toBe(0);
  });
});

describe('Lateness: the timer-lateness histogram', () => {
  it('gives percentiles to 10 µs and the exact maximum, in fixed memory', () => {
    const l = new Lateness();
    for (let i = 1; i <= 1000; i++) l.record(i / 100); // 0.01 … 10 ms
    expect(l.count).toBe(1000);
    expect(l.percentile(50)).toBeCloseTo(5.0, 1);
    expect(l.percentile(99)).toBeCloseTo(9.9, 1);
    l.record(5000); // past the last bucket: the maximum is still exact
    expect(l.summary()).toMatchObject({ max: 5000, samples: 1001 });
    l.reset();
    expect(l.summary()).toEqual({ p50: 0, p99: 0, max: 0, samples: 0 });
  });
});
