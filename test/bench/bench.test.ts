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

/** x/y as a line prints it: toFixed(digits), back to a number. */
function ratioOf(x: unknown, y: unknown, digits: number): number {
  expect(typeof x).toBe('number');
  expect(typeof y).toBe('number');
  return Number(((x as number) / (y as number)).toFixed(digits));
}

/** A replay line: whole-process figures present and positive, each ratio the quotient of the line's own fields. */
function checkReplayLine(l: Record<string, unknown>): void {
  expect(l.bench).toBe('replay');
  for (const k of ['processSeconds', 'baselineSeconds', 'inProcessSeconds', 'pps', 'processPps', 'baselinePps']) expect(l[k], k).toBeGreaterThan(0);
  // The headline: tcpdump's whole process against fpo's whole process.
  expect(l.ratio).toBe(ratioOf(l.baselineSeconds, l.processSeconds, 3));
  expect(l.inProcessRatio).toBe(ratioOf(l.baselineSeconds, l.inProcessSeconds, 3));
  expect(l.processPps).toBe(Math.round((l.frames as number) / (l.processSeconds as number)));
  const runs = l.runs as Record<string, number[]>;
  for (const k of ['process', 'inProcess', 'tcpdump']) {
    expect(runs[k], k).toHaveLength(l.rounds as number);
    for (const t of runs[k]) expect(t).toBeGreaterThan(0);
  }
  // Best of each side is what the line calls its seconds.
  expect(l.processSeconds).toBe(Math.min(...runs.process));
  expect(l.inProcessSeconds).toBe(Math.min(...runs.inProcess));
  expect(l.baselineSeconds).toBe(Math.min(...runs.tcpdump));
  const med = l.medians as Record<string, number>;
  for (const k of ['process', 'inProcess', 'tcpdump']) expect(med[k], k).toBeGreaterThan(0);
  const first = l.firstRun as Record<string, number>;
  expect(first.inProcessSeconds).toBe(runs.inProcess[0]);
  expect(first.inProcessRatio).toBe(ratioOf(runs.tcpdump[0], runs.inProcess[0], 3));
}

// Benchmarks run here in their short mode so that they never rot. Nothing
// about time is asserted: only that each prints its JSON lines with a
// baseline from the same run, and that each ratio is what it claims: worked
// out here from the line's own measured fields.
describe('benchmarks (short mode)', () => {
  it('control/replay-workers prints a line for 1 and for 2 workers on the same capture, the ratio the quotient of the two, the same totals', () => {
    const lines = runBench('control/replay-workers.js');
    expect(lines.map((l) => l.workers)).toEqual([1, 2]);
    const [one, two] = lines;
    for (const l of lines) {
      expect(l.bench).toBe('replay-workers');
      const runs = l.runs as Record<string, number[]>;
      expect(l.processSeconds).toBe(Math.min(...runs.process));
      expect(l.inProcessSeconds).toBe(Math.min(...runs.inProcess));
    }
    expect(two.ratio).toBe(ratioOf(one.processSeconds, two.processSeconds, 4));
    expect(two.inProcessRatio).toBe(ratioOf(one.inProcessSeconds, two.inProcessSeconds, 4));
    expect(two.sameTotals).toBe(true);
  });

  it('conntrack prints set-ups and established packets through ct, each against the parse stage alone, every connection made and found', () => {
    const lines = runBench('conntrack/conntrack.js');
    expect(lines.map((l) => l.case)).toEqual(['setup', 'established', 'nat']);
    for (const l of lines) {
      expect(l.bench).toBe('conntrack');
      expect(l.ok).toBe(l.connections); // every set-up made a connection; every reply found one
      expect(l.pps).toBe(Math.round((l.packets as number) / (l.seconds as number)));
      expect(l.ratio).toBe(ratioOf(l.pps, l.baselinePps, 3));
      expect(l.tableBytes).toBeLessThan(512 * 1024 * 1024);
    }
    expect(lines[0].perSecond).toBe(lines[0].pps);
  });

  it('control/firewall-upgrade prints each port size\'s pauses both ways with a restart as its baseline, and the upgrade under 1 Mpps: every round done, every held packet released, nothing lost', () => {
    const [l] = runBench('control/firewall-upgrade.js');
    expect(l.bench).toBe('firewall-upgrade');
    const cases = l.cases as { connections: number; pauseMsV1toV2: { median: number; runs: number[] }; pauseMsV2toV1: { runs: number[] }; baselineRestartMs: number; ratio: number }[];
    expect(cases.map((c) => c.connections)).toEqual([1000, 100_000]);
    for (const c of cases) {
      expect(c.pauseMsV1toV2.runs).toHaveLength(3);
      expect(c.pauseMsV2toV1.runs).toHaveLength(3);
      expect(c.ratio).toBe(Number((c.pauseMsV1toV2.median / Math.max(c.baselineRestartMs, 0.001)).toFixed(4)));
    }
    const load = l.underLoad as { rounds: { state: string; offered: number; held: number; dropped: number }[]; dropped: number; accounted: boolean };
    expect(load.rounds.map((r) => r.state)).toEqual(['done', 'done', 'done']);
    for (const r of load.rounds) expect(r.held + r.dropped).toBe(r.offered); // each packet offered during the move held or dropped (counted)
    expect(load.dropped).toBe(load.rounds.reduce((a, r) => a + r.dropped, 0));
    expect(load.accounted).toBe(true);
  });

  it('ports/vf prints frames into a VF\'s guest memory with dirty logging off and on, the ratio its own fields\' quotient, every frame written and the log\'s pages seen', () => {
    const [l] = runBench('ports/vf.js');
    expect(l.bench).toBe('vf');
    const runs = l.runs as { unlogged: number[]; logged: number[] };
    expect(l.ratio as number).toBeCloseTo(Math.min(...runs.unlogged) / Math.min(...runs.logged), 2); // (the runs are printed rounded)
    expect(l.ppsLogged as number).toBeGreaterThan(0);
    expect(l.rxNoDescriptor).toBe(0);
    expect(l.completed).toBe((l.frames as number) * 8); // 2 warm-up and 6 timed rounds
    expect(l.dirtyPages).toBe(2048 + 16 + 1); // every buffer page (4096 of 2 KiB), the ring's 16 pages, the registers' page (head)
  });

  it('control/migration prints, per traffic and dirtying rate, the downtime against a full stop-and-copy, the rounds and pages, every copy exact', () => {
    const [l] = runBench('control/migration.js');
    expect(l.bench).toBe('migration');
    const cases = l.cases as { trafficPps: number; downtimeMs: number; rounds: number; roundPages: number[]; pagesCopied: number; exact: boolean; baselineFullCopyMs: number; ratio: number; converged: boolean }[];
    expect(cases.map((c) => c.trafficPps)).toEqual([0, 500_000]);
    for (const c of cases) {
      expect(c.exact).toBe(true);
      expect(c.roundPages[0]).toBe(l.pages); // the first round: every page
      expect(c.rounds).toBe(c.roundPages.length);
      expect(c.pagesCopied).toBeGreaterThanOrEqual(c.roundPages.reduce((a, x) => a + x, 0));
      expect(c.ratio).toBeCloseTo(c.downtimeMs / c.baselineFullCopyMs, 2);
    }
    for (const c of cases) expect(['small', 'downtime']).toContain((c as unknown as { stoppedBy: string }).stoppedBy); // converged, not out of rounds
  });

  it('control/directory prints a simulated deployment\'s start-up read and its moves\' propagation to watchers, against etcd\'s own round trip', (ctx) => {
    needTool(ctx, 'etcd', 'the bench runs an etcd member (Debian: etcd-server)');
    const [l] = runBench('control/directory.js');
    expect(l.bench).toBe('directory');
    expect(l.read).toEqual({ hosts: 100, interfaces: 2000, refused: 0 });
    const p = l.propagationMs as { p50: number; p99: number; samples: number };
    expect(p.samples).toBe((l.watchers as number) * (l.moves as number)); // every watcher saw every move
    expect(p.p99).toBeGreaterThanOrEqual(p.p50);
    expect(l.ratio).toBeCloseTo(p.p99 / (l.baselineMs as { p99: number }).p99, 1);
  });

  it('classifier/lookup prints a line per flow count, subtable count and path (hits, misses), with a ratio to a Map and, for the subtables alone, to themselves without the Bloom filter', () => {
    const lines = runBench('classifier/lookup.js');
    expect(lines.length).toBe(20); // 2 flow counts (short) × 2 subtable counts × 5 paths
    for (const l of lines) {
      expect(l.bench).toBe('classifier/lookup');
      expect(['emc-hit', 'emc-hit-ipv4', 'megaflow-hit', 'megaflow-miss', 'smc-hit']).toContain(l.path);
      if (l.path === 'megaflow-miss') expect(l.hitRate).toBe(0); // keys of no flow
      else expect(l.hitRate).toBeGreaterThan(0.9);
      // The subtables alone, also timed with the Bloom filter off: the ratio as printed.
      if (l.path === 'megaflow-hit' || l.path === 'megaflow-miss') expect(l.bloomRatio).toBe(ratioOf(l.lookupsPerSec, l.withoutBloomPerSec, 2));
      else expect(l.bloomRatio).toBeUndefined();
      expect(l.baseline).toBe('Map<string>');
      expect(l.lookupsPerSec).toBeGreaterThan(0);
      expect(l.ratio).toBe(ratioOf(l.lookupsPerSec, l.baselinePerSec, 2));
      expect(l.ratioToMapWithKeyBuild).toBe(ratioOf(l.lookupsPerSec, l.mapWithKeyBuildPerSec, 2));
    }
  }, 300_000);

  it('classifier/flag-check prints the flag check against the full path, and a receive-side Geneve replay', (ctx) => {
    needTool(ctx, 'tcpdump', 'the baseline of the replay benchmark');
    const [check, rx] = runBench('classifier/flag-check.js');
    expect(check.bench).toBe('classifier/flag-check');
    expect(check.ratio).toBe(ratioOf(check.flagCheckNsPerPacket, check.fullPathNsPerPacket, 3));
    expect(check.flaggedSeen).toBe(true);
    checkReplayLine(rx);
    expect(rx.tunnel).toBe('geneve');
  }, 300_000);

  it('ports/copy prints arenaCopy against copyWithin for short and long records', () => {
    const lines = runBench('ports/copy.js');
    expect(lines.map((l) => l.recordBytes)).toEqual([80, 1516]);
    for (const l of lines) {
      expect(l.baseline).toBe('copyWithin');
      expect(l.ratio).toBe(ratioOf(l.baselineNsPerCopy, l.nsPerCopy, 3));
    }
  }, 300_000);

  it('replay-floor prints the kernel IO, the least per-packet loop, the lean lane, fpo and tcpdump on one capture', (ctx) => {
    needTool(ctx, 'tcpdump', 'the baseline of the floor benchmark');
    const [l] = runBench('replay-floor.js');
    expect(l.bench).toBe('replay-floor');
    expect(l.frames).toBe(20_000);
    for (const k of ['ioSeconds', 'floorSeconds', 'leanSeconds', 'seconds', 'baselineSeconds']) expect(l[k], k).toBeGreaterThan(0);
    expect(l.ratio).toBe(ratioOf(l.baselineSeconds, l.seconds, 3));
    expect(l.floorRatio).toBe(ratioOf(l.baselineSeconds, l.floorSeconds, 3));
    expect(l.leanRatio).toBe(ratioOf(l.baselineSeconds, l.leanSeconds, 3));
    expect(l.fpoOverFloor).toBe(ratioOf(l.floorSeconds, l.seconds, 3));
    expect(Object.keys(l.ns as object)).toEqual(['kernelIo', 'floorLoop', 'leanWork', 'fpoSwitching', 'tcpdump']);
  }, 300_000);

  it('control/upcall prints flow setups and batch round trips for the FPAG inline and on a thread, into a cold table and a full one', () => {
    const lines = runBench('control/upcall.js');
    expect(lines.map((l) => `${l.regime} ${l.placement}`)).toEqual(['cold inline', 'cold thread', 'cold async', 'steady inline', 'steady thread', 'steady async']);
    for (const l of lines) {
      expect(l.upcalls).toBe(l.flows);
      // Misses went in batches; every round trip timed (measured, not derived from the rate): inline one a
      // batch, on the thread one a part of a batch.
      expect(l.batches).toBeLessThan(l.upcalls as number);
      if (l.placement === 'inline') expect(l.roundTrips).toBe(l.batches);
      else if (l.placement === 'thread') expect(l.roundTrips).toBeGreaterThanOrEqual(l.batches as number);
      else expect((l.queue as { parked: number }).parked).toBeGreaterThanOrEqual(l.upcalls as number);
      expect(l.roundTripUs).toBeGreaterThan(0);
      if (l.regime === 'steady') expect(l.evicted).toBeGreaterThan((l.flows as number) - (l.maxFlows as number) - 1);
      // The line is its median replay (short: one replay).
      expect(l.runs).toEqual([l.setupsPerSec]);
    }
    for (const [inline, ...threads] of [lines.slice(0, 3), lines.slice(3)]) {
      for (const thread of threads) {
        expect(thread.baselineSetupsPerSec).toBe(inline.setupsPerSec);
        expect(thread.ratio).toBe(ratioOf(thread.setupsPerSec, thread.baselineSetupsPerSec, 3));
      }
    }
  }, 300_000);

  it('ports/live prints the sender alone, fpo on rings, on AF_XDP, on read/write and on TAP, the Linux bridge and OVS, offered beside forwarded (root)', (ctx) => {
    needRoot(ctx, 'ports/live makes namespaces');
    needTool(ctx, 'cc', 'builds the sender');
    needTool(ctx, 'ovs-vsctl', 'Open vSwitch\'s userspace datapath is the other baseline');
    needTool(ctx, 'iperf3', 'measures TCP VM to VM');
    needTool(ctx, 'ethtool', 'turns the VMs checksum offload off for the AF_XDP row');
    const all = runBench('ports/live.js');
    // TCP: fpo on ring ports with offloads and the bridge, iperf3 between the VMs.
    const tcp = all.filter((l) => l.bench === 'ports/live-tcp');
    expect(tcp.map((l) => l.switch).sort()).toEqual(['fpo-ring-offload', 'fpo-ring-v2-offload', 'linux-bridge']);
    const tcpBridge = tcp.find((l) => l.switch === 'linux-bridge')!;
    for (const l of tcp) {
      expect(l.gbitPerSec).toBeGreaterThan(0);
      expect(l.ratio).toBe(ratioOf(l.bitsPerSec, tcpBridge.bitsPerSec, 3));
      expect(l.gbitPerSec).toBe(Number(((l.bitsPerSec as number) / 1e9).toFixed(2)));
    }
    const udp = all.filter((l) => l.bench === 'ports/live-udp');
    expect(udp.map((l) => l.switch).sort()).toEqual(['fpo-ring-offload', 'fpo-xdp', 'linux-bridge']);
    for (const l of udp) {
      expect(l.offeredPps).toBeGreaterThan(0);
      expect(l.deliveredPps).toBeLessThanOrEqual(l.offeredPps as number);
      expect(l.rcvbufErrors).toBeGreaterThanOrEqual(0);
      // fpo's rows say what fpo itself lost of the flood (its rings' misses, its drops); the bridge's do not.
      if (String(l.switch).startsWith('fpo')) {
        expect(l.fpoMissed).toBeGreaterThanOrEqual(0);
        expect(l.fpoForwarded).toBeGreaterThan(0);
        expect(l.fpoForwarded).toBeLessThanOrEqual(1);
      } else expect(l.fpoForwarded).toBeUndefined();
    }
    const lines = all.filter((l) => l.bench === 'ports/live');
    expect(lines.map((l) => l.switch).sort()).toEqual(['fpo-read', 'fpo-ring', 'fpo-ring-2w', 'fpo-ring-v2', 'fpo-tap', 'fpo-xdp', 'linux-bridge', 'ovs-netdev', 'sender-alone']);
    const one = lines.find((l) => l.switch === 'fpo-ring')!;
    expect(lines.find((l) => l.switch === 'fpo-ring-2w')!.vsOneWorker).toBe(ratioOf(lines.find((l) => l.switch === 'fpo-ring-2w')!.received, one.received, 3));
    const bridge = lines.find((l) => l.switch === 'linux-bridge')!;
    const ovs = lines.find((l) => l.switch === 'ovs-netdev')!;
    for (const l of lines) {
      expect(l.bench).toBe('ports/live');
      expect(l.received).toBeGreaterThan(0);
      expect(l.offeredPps).toBe(Math.round((l.sent as number) / (l.seconds as number)));
      expect(l.pps).toBe(Math.round((l.received as number) / (l.seconds as number)));
      expect(l.took).toBe(ratioOf(l.received, l.sent, 3));
      expect(l.ratio).toBe(ratioOf(l.received, bridge.received, 3));
      expect(l.vsOvs).toBe(ratioOf(l.received, ovs.received, 3));
      // fpo's rows carry its CPU time and the rate per CPU second worked out from it; the others do not.
      if (String(l.switch).startsWith('fpo')) {
        expect(l.fpoCpuSeconds).toBeGreaterThan(0);
        expect(Math.abs((l.ppsPerFpoCore as number) - (l.received as number) / (l.fpoCpuSeconds as number))).toBeLessThan((l.received as number) / (l.fpoCpuSeconds as number) * 0.01 + 1);
      } else expect(l.fpoCpuSeconds).toBeUndefined();
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

  it('replay prints whole-process and in-process times against tcpdump\'s whole process, pps, GC and RSS for each case, and the small replay beside node -e 0', (ctx) => {
    needTool(ctx, 'tcpdump', 'the baseline of the replay benchmark');
    const lines = runBench('replay.js');
    expect(lines.length).toBe(8);
    for (const l of lines) {
      checkReplayLine(l);
      expect(typeof l.gcShare).toBe('number');
      expect(l.peakRssBytes).toBeGreaterThan(0);
    }
    const synthetic = lines.slice(0, 7);
    expect(synthetic.map((l) => l.frameBytes)).toEqual([64, 64, 64, 64, 64, 1500, 1500]);
    // The many-flows cases (issue 23): a megaflow per flow, then the missed rule's proof alone (one megaflow per VM).
    expect(synthetic.map((l) => l.wildcarding)).toEqual(['rule-fields', 'rule-fields', 'rule-fields', 'rule-fields', 'proof', 'rule-fields', 'rule-fields']);
    expect(lines[3].upcalls).toBe(5000);
    expect(lines[4].upcalls).toBeLessThan(100);
    for (const l of synthetic) {
      expect(l.dropped).toBe(0);
      expect(l.frames).toBe(20_000);
      // The synthetic capture is the fast lane's common case from start to end.
      expect(l.fastLane).toBe(l.frames);
    }
    const small = lines[7];
    expect(small.label).toMatch(/demo/);
    expect(small.frames).toBe(671);
    expect(small.dropped).toBe(50);
    expect(small.nodeStartSeconds).toBeGreaterThan(0);
    expect(small.nodeStartSeconds).toBe(Math.min(...(small.runs as { nodeStart: number[] }).nodeStart));
    expect(small.fpoOverNodeSeconds).toBe(Number(((small.processSeconds as number) - (small.nodeStartSeconds as number)).toFixed(4)));
  }, 300_000);
});
