import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT, needRoot, needTool } from '../helpers.js';

/** Runs a built bench in short mode; returns its JSON lines. */
function runBench(file: string): Record<string, unknown>[] {
  const r = spawnSync(process.execPath, [join(ROOT, 'dist', 'bench', file)], { encoding: 'utf8', env: { ...process.env, FPO_BENCH_SHORT: '1' }, timeout: 240_000 });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
}

// Benchmarks run here in their short mode so that they never rot. Nothing
// about time is asserted: only that each prints its JSON lines with a
// baseline from the same run and a ratio.
describe('benchmarks (short mode)', () => {
  it('classifier/lookup prints a line per flow count, subtable count and path, with a ratio to a Map', () => {
    const lines = runBench('classifier/lookup.js');
    expect(lines.length).toBe(12);
    for (const l of lines) {
      expect(l.bench).toBe('classifier/lookup');
      expect(['emc-hit', 'emc-hit-ipv4', 'megaflow-hit']).toContain(l.path);
      expect(l.hitRate).toBeGreaterThan(0.9);
      expect(typeof l.ratio).toBe('number');
      expect(l.baseline).toBe('Map<string>');
    }
  }, 300_000);

  it('classifier/flag-check prints the flag check against the full path, and a receive-side Geneve replay', (ctx) => {
    needTool(ctx, 'tcpdump', 'the baseline of the replay benchmark');
    const [check, rx] = runBench('classifier/flag-check.js');
    expect(check.bench).toBe('classifier/flag-check');
    expect(typeof check.ratio).toBe('number');
    expect(check.flaggedSeen).toBe(true);
    expect(rx.bench).toBe('replay');
    expect(rx.tunnel).toBe('geneve');
    expect(typeof rx.ratio).toBe('number');
  }, 300_000);

  it('ports/copy prints arenaCopy against copyWithin for short and long records', () => {
    const lines = runBench('ports/copy.js');
    expect(lines.map((l) => l.recordBytes)).toEqual([80, 1516]);
    for (const l of lines) {
      expect(l.baseline).toBe('copyWithin');
      expect(typeof l.ratio).toBe('number');
    }
  }, 300_000);

  it('replay-floor prints the kernel IO, the least per-packet loop, the lean lane, fpo and tcpdump on one capture', (ctx) => {
    needTool(ctx, 'tcpdump', 'the baseline of the floor benchmark');
    const [l] = runBench('replay-floor.js');
    expect(l.bench).toBe('replay-floor');
    expect(l.frames).toBe(20_000);
    for (const k of ['ioSeconds', 'floorSeconds', 'leanSeconds', 'seconds', 'ratio', 'floorRatio', 'leanRatio', 'fpoOverFloor']) expect(typeof l[k]).toBe('number');
    expect(Object.keys(l.ns as object)).toEqual(['kernelIo', 'floorLoop', 'leanWork', 'fpoSwitching', 'tcpdump']);
  }, 300_000);

  it('control/upcall prints flow setups and round trips for the FPAG inline and on a thread', () => {
    const [inline, thread] = runBench('control/upcall.js');
    expect(inline.placement).toBe('inline');
    expect(thread.placement).toBe('thread');
    expect(inline.upcalls).toBe(5000);
    expect(thread.upcalls).toBe(5000);
    expect(typeof thread.ratio).toBe('number');
    expect(thread.roundTripUs).toBeGreaterThan(0);
  }, 300_000);

  it('ports/live prints fpo and Linux bridge forwarding rates between namespaces (root)', (ctx) => {
    needRoot(ctx, 'ports/live makes namespaces');
    needTool(ctx, 'cc', 'builds the sender');
    needTool(ctx, 'ovs-vsctl', 'Open vSwitch\'s userspace datapath is the other baseline');
    const lines = runBench('ports/live.js');
    const names = lines.map((l) => l.switch);
    expect(names).toContain('fpo');
    expect(names).toContain('linux-bridge');
    expect(names).toContain('ovs-netdev');
    for (const l of lines) {
      expect(l.bench).toBe('ports/live');
      expect(l.received).toBeGreaterThan(0);
      expect(typeof l.ratio).toBe('number');
    }
  }, 300_000);

  it('control/bfd-scale holds its sessions with no false Down on either side, beside a full-speed replay, and reports timer lateness and the replay\'s rate against it alone', () => {
    const lines = runBench('control/bfd-scale.js');
    expect(lines.length).toBe(2);
    for (const l of lines) {
      expect(l.bench).toBe('control/bfd-scale');
      expect(l.placement).toBe('thread');
      expect(l.upBeforeHold).toBe(l.sessions);
      expect(l.upAfterHold, JSON.stringify(l)).toBe(l.sessions);
      expect(l.falseDowns, JSON.stringify(l.why)).toBe(0);
      expect(l.falseDowns).toBe((l.falseDownsHere as number) + (l.falseDownsPeer as number));
      expect(l.rawSocketDrops).toEqual([0, 0]);
      expect(typeof (l.latenessMs as { p99: number }).p99).toBe('number');
      expect(typeof (l.peerLatenessMs as { p99: number }).p99).toBe('number');
      // The replay ran beside the whole hold, pass after pass.
      expect(l.replayBesidePasses).toBeGreaterThan(1);
      // The baseline is what it says: the replay loop alone, before and after, averaged;
      // the ratio is the rate beside against it.
      expect(l.baseline).toMatch(/replay loop alone/);
      const runs = l.baselineRuns as { before: number; after: number };
      expect(runs.before).toBeGreaterThan(0);
      expect(runs.after).toBeGreaterThan(0);
      expect(l.baselinePps).toBe(Math.round((runs.before + runs.after) / 2));
      expect(l.ratio).toBe(Number(((l.replayBesidePps as number) / (l.baselinePps as number)).toFixed(3)));
    }
  }, 300_000);

  it('replay prints pps, Gbit/s, tcpdump baseline and ratio, GC and RSS for each case', (ctx) => {
    needTool(ctx, 'tcpdump', 'the baseline of the replay benchmark');
    const lines = runBench('replay.js');
    expect(lines.length).toBe(4);
    for (const l of lines) {
      expect(l.bench).toBe('replay');
      expect(l.dropped).toBe(0);
      expect(l.frames).toBe(20_000);
      expect(typeof l.ratio).toBe('number');
      expect(typeof l.gcShare).toBe('number');
      expect(l.peakRssBytes).toBeGreaterThan(0);
      // The synthetic capture is the fast lane's common case from start to end.
      expect(l.fastLane).toBe(l.frames);
      expect((l.runs as { fpo: number[] }).fpo).toHaveLength(l.rounds as number);
    }
  }, 300_000);
});
