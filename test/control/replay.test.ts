import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, linkSync, lstatSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { benchTopology, generate } from '../../bench/gen-capture.js';
import { replay, type ReplayReport } from '../../control/replay.js';
import { PacketBatch } from '../../datapath/batch.js';
import { CaptureReader } from '../../datapath/ports/capture-reader.js';
import { CLI, FIXTURES, captureFrames, cleanTemp, needTool, runCli, tempDir, tsharkFields } from '../helpers.js';
import { toRecords, untrustedVmFrames } from '../../fixtures/make.js';
import { arp, eth, geneve, ipv4, pad60, udp, vxlan, writePcap } from '../../fixtures/packets.js';

afterAll(cleanTemp);

const TOPO = join(FIXTURES, 'topology.json');
const DEMO = join(FIXTURES, 'demo.pcap');

function replayJson(args: string[]): ReplayReport {
  const r = runCli(['replay', ...args, '--json']);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout) as ReplayReport;
}

describe('fpo replay of the bundled demo', () => {
  const out = tempDir('replay');
  const report = replayJson([DEMO, '--topology', TOPO, '--out', out, '--dump-flows']);

  it('accounts for every packet: in = out + dropped, and drops by reason add up', () => {
    expect(report.packets.in).toBe(671);
    expect(report.packets.in).toBe(report.packets.out + report.packets.dropped);
    expect(Object.values(report.drops).reduce((a, b) => a + (b ?? 0), 0)).toBe(report.packets.dropped);
    const tx = report.ports.reduce((n, p) => n + p.tx.packets, 0);
    expect(tx).toBe(report.packets.copies);
    expect(report.packets.copies).toBeGreaterThan(report.packets.out); // floods and the monitoring rule
  });

  it('drops each kind of bad or unwanted packet with its own reason', () => {
    expect(report.drops).toEqual({ ruleDrop: 20, vpidUnmapped: 20, noDestination: 4, runt: 2, ipv4BadHeaderLength: 2, udpBadLength: 2 });
  });

  it('writes one pcap per emitting port, holding exactly the packets for that VM (checked with tshark)', (ctx) => {
    needTool(ctx, 'tshark', 'reads the output captures');
    expect(readdirSync(out).sort()).toEqual(['vf1.pcap', 'vf2.pcap', 'vf3.pcap', 'vf4.pcap']);
    const macs: Record<string, string> = { vf1: '02:00:00:00:00:01', vf2: '02:00:00:00:00:02', vf3: '02:00:00:00:00:03', vf4: '02:00:00:00:00:04' };
    for (const [port, mac] of Object.entries(macs)) {
      const rows = tsharkFields(join(out, `${port}.pcap`), ['eth.dst', 'vlan.id', 'ip.dst', 'udp.dstport']);
      expect(rows.length, port).toBe(report.ports.find((p) => p.name === port)!.tx.packets);
      for (const row of rows) {
        const [dst, vlan, ipDst, udpDst] = row.map((x) => x.split(',')[0]); // outer headers of a VXLAN frame
        // Each frame is for this VM, a broadcast/unknown flood of its segment, or (vf1) the monitoring copy.
        const ok = dst === mac || dst === 'ff:ff:ff:ff:ff:ff' || dst === '02:00:00:00:00:99' || (port === 'vf1' && ipDst === '10.0.0.2' && udpDst === '161');
        expect(ok, `${port}: ${dst} ${ipDst}`).toBe(true);
        // A VM port is an access port: the red VMs get their VLAN 20 frames with the tag popped.
        expect(vlan, `${port}: vlan ${vlan}`).toBe('');
      }
    }
    const vf1 = tsharkFields(join(out, 'vf1.pcap'), ['tcp.dstport']).filter((r) => r[0] === '23');
    expect(vf1.length).toBe(0); // telnet was dropped by the rule
  });

  it('keeps the input timestamps and bytes of every written frame (less the popped tag for the red VMs)', (ctx) => {
    needTool(ctx, 'tshark', 'reads the output captures');
    const inRows = new Map(tsharkFields(DEMO, ['frame.time_epoch', 'frame.len', 'vlan.id']).map((r) => [r[0], r]));
    expect(inRows.size).toBe(671); // every input frame has its own timestamp, so a stamp names one frame
    let seen = 0;
    for (const f of readdirSync(out)) {
      for (const [t, len] of tsharkFields(join(out, f), ['frame.time_epoch', 'frame.len'])) {
        const [, inLen, vlan] = inRows.get(t)!;
        expect(Number(len), `${f} ${t}`).toBe(Number(inLen) - (vlan === '20' ? 4 : 0));
        seen++;
      }
    }
    expect(seen).toBe(report.packets.copies); // every written frame was compared
    expect(seen).toBeGreaterThan(600);
  });

  it('flows output to VPIDs and say which interface each VPID is', () => {
    expect(report.flowTable!.length).toBe(report.flows.active);
    for (const f of report.flowTable!) expect(f.actions).toMatch(/^(pop_vlan,)?(output:vpid\d+\([\w-]+\)(,|$))+$|^drop\(\w+\)$/);
    const vm3 = report.flowTable!.find((f) => f.match.includes('eth_dst=02:00:00:00:00:03'))!;
    expect(vm3.actions).toBe('pop_vlan,output:vpid3(vm3-eth0)'); // VLAN 20 in on the trunk, untagged out on an access port
    expect(vm3.match).toContain('vlan_tci=20/0xfff');
    expect(report.ports.find((p) => p.name === 'vf3')!.vpid).toBe(3);
  });

  it('replaying the same capture twice gives byte-identical outputs', () => {
    const out2 = tempDir('replay2');
    replayJson([DEMO, '--topology', TOPO, '--out', out2]);
    expect(readdirSync(out2).sort()).toEqual(['vf1.pcap', 'vf2.pcap', 'vf3.pcap', 'vf4.pcap']);
    expect(readdirSync(out2).sort()).toEqual(readdirSync(out).sort());
    for (const f of readdirSync(out)) expect(readFileSync(join(out2, f)).equals(readFileSync(join(out, f))), f).toBe(true);
  });
});

describe('replay hooks', () => {
  it('onStart runs once, before the first batch, with the datapath (nothing switched yet), the FPAG and its thread (null inline); the outputs are those of a replay without it', () => {
    for (const fpag of ['inline', 'thread'] as const) {
      const calls: { packets: number; thread: boolean }[] = [];
      const out = tempDir(`onstart-${fpag}`);
      const { report } = replay({ capture: DEMO, topology: TOPO, outDir: out, fpag, onStart: (dp, f, thread) => { expect(f).toBeDefined(); calls.push({ packets: dp.stats().packetsIn, thread: thread !== null }); } });
      expect(calls).toEqual([{ packets: 0, thread: fpag === 'thread' }]);
      const plain = tempDir(`onstart-${fpag}-plain`);
      replay({ capture: DEMO, topology: TOPO, outDir: plain, fpag });
      for (const f of readdirSync(plain)) expect(readFileSync(join(out, f)).equals(readFileSync(join(plain, f))), f).toBe(true);
      expect(report.packets.in).toBe(report.packets.out + report.packets.dropped);
    }
  });
});

describe('migration by mapping', () => {
  it('changing one mapping moves a VM\'s traffic to its new port with no flow change', () => {
    const out = tempDir('migrate');
    let installsAtMove = -1;
    let moved = false;
    const { report, datapath } = replay({
      capture: DEMO, topology: TOPO, outDir: out, batchSize: 32,
      beforeBatch: (soFar, dp) => {
        if (!moved && soFar >= 300) {
          moved = true;
          installsAtMove = dp.flowsInstalled;
          dp.apply({ type: 'mapping-set', vpid: 1, ppid: 15 }); // vm1-eth0: vf1 → vf5
        }
      },
    });
    expect(moved).toBe(true);
    const before = report.ports.find((p) => p.name === 'vf1')!.tx.packets;
    const after = report.ports.find((p) => p.name === 'vf5')!.tx.packets;
    expect(before).toBeGreaterThan(50);
    expect(after).toBeGreaterThan(50);
    // The vm1 flow kept its VPID action and was never reinstalled: new flows after the move are only new traffic.
    const flows = datapath.dumpFlows();
    const vm1 = flows.filter((f) => f.actions.length === 1 && f.actions[0].op === 'output' && f.actions[0].vpid === 1);
    expect(vm1.length).toBeGreaterThan(0);
    expect(datapath.flowsInstalled).toBe(report.flows.installed);
    expect(installsAtMove).toBeGreaterThan(0);
    expect(datapath.flowsInstalled).toBeLessThanOrEqual(installsAtMove + 3);
    expect(report.ports.find((p) => p.name === 'vf5')!.attached).toBe('vm1-eth0');
    expect(report.packets.in).toBe(report.packets.out + report.packets.dropped);
    // Without the move, vf1 gets all of vm1's packets; with it, the two ports share them exactly.
    const plain = replay({ capture: DEMO, topology: TOPO, outDir: tempDir('plain') }).report;
    expect(before + after).toBe(plain.ports.find((p) => p.name === 'vf1')!.tx.packets);
  });
});

describe('fpo command line', () => {
  it('--help lists the commands', () => {
    const r = runCli(['--help']);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('replay CAPTURE --topology FILE --out DIR');
  });

  it('prints a per-port summary and no progress bar when stderr is not a terminal', () => {
    const r = runCli(['replay', DEMO, '-t', TOPO, '-o', tempDir()]);
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/packets: in 671 = out \d+ \+ dropped \d+/);
    expect(r.stdout).toMatch(/vf1\s+11\s+1\s+vm1-eth0/);
  });

  it('the `fpo` command (package.json bin, what `npx fpo` runs) is executable as it is built, and replays', () => {
    const out = tempDir('bin');
    const r = spawnSync(CLI, ['replay', DEMO, '-t', TOPO, '-o', out], { encoding: 'utf8' });
    expect(r.error).toBeUndefined(); // (EACCES when tsc's output is left without its executable bit)
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/packets: in 671 = out \d+ \+ dropped \d+/);
  });

  it('--no-emc --no-smc --no-bloom (each cache and the Bloom filter off, for comparison) forward the same bytes and count the same as the default', () => {
    const outs = [[], ['--no-emc'], ['--no-smc'], ['--no-bloom'], ['--no-emc', '--no-smc', '--no-bloom']].map((flags) => {
      const out = tempDir('caches');
      const rep = replayJson([DEMO, '-t', TOPO, '-o', out, ...flags]);
      return { out, rep, flags };
    });
    const [base, ...rest] = outs;
    const files = readdirSync(base.out).sort();
    expect(files.length).toBeGreaterThan(0);
    for (const r of rest) {
      expect(r.rep.packets, r.flags.join(' ')).toEqual(base.rep.packets);
      expect(r.rep.drops, r.flags.join(' ')).toEqual(base.rep.drops);
      expect(r.rep.flows.upcalls, r.flags.join(' ')).toBe(base.rep.flows.upcalls);
      expect(readdirSync(r.out).sort()).toEqual(files);
      for (const f of files) expect(readFileSync(join(r.out, f)).equals(readFileSync(join(base.out, f))), `${r.flags.join(' ')} ${f}`).toBe(true);
    }
    // The flags took: no cache hit without the caches.
    expect(rest[3].rep.flows.emcHits + rest[3].rep.flows.smcHits).toBe(0);
    expect(base.rep.flows.emcHits).toBeGreaterThan(0);
  });

  it('an FPAG placement it does not know (--fpag bogus) exits 2 with one line saying what it takes, and writes nothing', () => {
    const out = join(tempDir(), 'out');
    const r = runCli(['replay', DEMO, '-t', TOPO, '-o', out, '--fpag', 'bogus']);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toEqual(['fpo: --fpag: expected inline, thread or async, got "bogus"']);
    expect(existsSync(out)).toBe(false);
  });

  it('a file that is not a capture exits 1 with one line naming it, and no stack trace', () => {
    const p = join(tempDir(), 'junk.pcap');
    writeFileSync(p, 'not a capture at all');
    const r = runCli(['replay', p, '-t', TOPO, '-o', tempDir()]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain(p);
    expect(r.stderr).toContain('offset 0');
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('a capture cut mid-record still switches and writes the packets before the cut, and exits 1', () => {
    const whole = readFileSync(DEMO);
    const p = join(tempDir(), 'cut.pcap');
    writeFileSync(p, whole.subarray(0, whole.length - 20));
    const out = tempDir();
    const r = runCli(['replay', p, '-t', TOPO, '-o', out, '--json']);
    expect(r.status).toBe(1);
    const rep = JSON.parse(r.stdout) as ReplayReport;
    expect(rep.packets.in).toBe(670);
    expect(rep.packets.in).toBe(rep.packets.out + rep.packets.dropped);
    expect(rep.error?.code).toBe('FPO_ERR_TRUNCATED_CAPTURE');
    expect(r.stderr).toMatch(/cut\.pcap: offset \d+: record cut short/);
    expect(existsSync(join(out, 'vf1.pcap'))).toBe(true);
  });

  it('a missing capture, a bad topology and a wrong option each get one clear line', () => {
    const missing = runCli(['replay', '/nonexistent.pcap', '-t', TOPO, '-o', tempDir()]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/^fpo: \/nonexistent.pcap: cannot open/);
    const topo = join(tempDir(), 'topo.json');
    writeFileSync(topo, JSON.stringify({ ports: [{ name: 'p', ppid: 'one' }], segments: [{ name: 's' }] }));
    const badTopo = runCli(['replay', DEMO, '-t', topo, '-o', tempDir()]);
    expect(badTopo.status).toBe(1);
    expect(badTopo.stderr).toMatch(/topo\.json: ports\[0\]\.ppid: Invalid input: expected an integer in 0\.\.4095, received string/);
    const opt = runCli(['replay', DEMO, '--nope']);
    expect(opt.status).toBe(2);
    expect(opt.stderr).toMatch(/^fpo: .*--nope/);
    const cmd = runCli(['replya']);
    expect(cmd.status).toBe(2);
    expect(cmd.stderr).toContain('expected one of: replay');
  });

  it('refuses a classic pcap of another link type, naming it', () => {
    const p = join(tempDir(), 'sll.pcap');
    const b = Buffer.from(readFileSync(DEMO));
    b.writeUInt32LE(113, 20);
    writeFileSync(p, b);
    const r = runCli(['replay', p, '-t', TOPO, '-o', tempDir()]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/link type 113 is not supported/);
    void CLI;
  });
});

describe('progress', () => {
  it('shows a progress bar on a terminal (run under script(1) for a pty)', (ctx) => {
    needTool(ctx, 'script', 'gives the CLI a terminal');
    const r = spawnSync('script', ['-qec', `${process.execPath} ${CLI} replay ${DEMO} -t ${TOPO} -o ${tempDir()}`, '/dev/null'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/\[#{30}\] 100%/);
  });
});

describe('the FPAG on its own thread', () => {
  /** A capture of `frames` 64-byte frames over `flows` new flows, and the bench topology (4 VMs; a megaflow per flow). */
  const newFlows = (name: string, frames: number, flows: number) => {
    const dir = tempDir(name);
    const cap = join(dir, 'c.pcap');
    const topo = join(dir, 't.json');
    generate(cap, { frames, size: 64, flows, vms: 4 });
    writeFileSync(topo, JSON.stringify(benchTopology(4)));
    return { dir, cap, topo };
  };
  /** A replay's flows with their counters, in a sorted list (to compare two replays). */
  const flows = (r: ReturnType<typeof replay>) => r.datapath.dumpFlows().map((f) => `${[...f.key]}/${[...f.mask]} ${JSON.stringify(f.actions)} ${f.packets} ${f.bytes}`).sort();

  it('gives the same outputs as the FPAG inline: upcalls and installs cross only as messages', () => {
    const a = tempDir('inline');
    const b = tempDir('thread');
    const ri = replay({ capture: DEMO, topology: TOPO, outDir: a }).report;
    const rt = replay({ capture: DEMO, topology: TOPO, outDir: b, fpag: 'thread' }).report;
    expect(rt.fpag.placement).toBe('thread');
    expect(rt.fpag.upcalls).toBe(ri.flows.upcalls);
    // The same batches of misses (in round trips of up to PART_KEYS keys each) as the inline FPAG gets calls.
    expect(rt.fpag.batches).toBe(ri.fpag.batches);
    expect(rt.fpag.batches).toBeLessThan(rt.fpag.upcalls);
    expect(rt.fpag.roundTrips).toBeGreaterThanOrEqual(rt.fpag.batches);
    expect(rt.packets).toEqual(ri.packets);
    expect(rt.drops).toEqual(ri.drops);
    expect(readdirSync(a).sort()).toEqual(['vf1.pcap', 'vf2.pcap', 'vf3.pcap', 'vf4.pcap']);
    expect(readdirSync(b).sort()).toEqual(readdirSync(a).sort());
    for (const f of readdirSync(a)) expect(readFileSync(join(b, f)).equals(readFileSync(join(a, f))), f).toBe(true);
  });

  it('misses handed to the thread while the lane still gathers them (parts of 64, of 3, none early; requests of 64 keys or 5, up to 4 in flight or 1), and the lane switching a batch\'s answered packets while the rest are decided (or not: answered whole): the same frames, totals and per-flow counts as inline, and some requests sent early', () => {
    const { cap, topo } = newFlows('early', 6_000, 4_000);
    const a = tempDir('inline');
    const ri = replay({ capture: cap, topology: topo, outDir: a });
    // [keys handed early at a time, answered whole, keys a request, requests in flight at most]
    // (Out of range, 0 keys and 8 in flight are held to 1 and to the ring's 4 slots.)
    for (const [earlyKeys, whole, part, inFlight] of [[64, false, 64, 4], [3, false, 64, 4], [100_000, false, 64, 4], [64, true, 64, 4], [3, false, 5, 4], [64, false, 64, 1], [100_000, false, 0, 8]] as const) {
      const b = tempDir('thread');
      let held = [0, 0];
      const rt = replay({ capture: cap, topology: topo, outDir: b, fpag: 'thread', beforeBatch: (_n, dp, _f, thread) => {
        dp.fastLane.earlyKeys = earlyKeys;
        if (whole) dp.upcallMoreSink = null;
        thread!.part = part;
        thread!.inFlightMax = inFlight;
        held = [thread!.part, thread!.inFlightMax];
      } });
      expect(held).toEqual([Math.max(1, part), Math.min(4, inFlight)]);
      if (earlyKeys < 256) expect(rt.report.fpag.early, `${earlyKeys}`).toBeGreaterThan(0);
      else expect(rt.report.fpag.early).toBe(0);
      if (whole) expect(rt.report.fpag.partial).toBe(0);
      else expect(rt.report.fpag.partial, `${earlyKeys}`).toBeGreaterThan(0);
      expect(rt.report.fpag.upcalls).toBe(ri.report.flows.upcalls);
      expect(rt.report.flows.upcalls).toBe(ri.report.flows.upcalls);
      expect(rt.report.packets).toEqual(ri.report.packets);
      expect(rt.report.drops).toEqual(ri.report.drops);
      expect(flows(rt)).toEqual(flows(ri));
      expect(readdirSync(b).sort()).toEqual(readdirSync(a).sort());
      for (const f of readdirSync(a)) expect(readFileSync(join(b, f)).equals(readFileSync(join(a, f))), `${earlyKeys} ${f}`).toBe(true);
      // Every request answered, as many as the parts the batches' misses make at most.
      expect(rt.report.fpag.roundTrips, `${part}`).toBeGreaterThanOrEqual(Math.ceil(rt.report.fpag.upcalls / held[0]));
    }
  });

  it('a batch left answered in part, then a tunnel packet\'s own upcall (plain and VXLAN new flows one after the other): the rest of the batch is answered first, and the replay gives inline\'s frames, totals and per-flow counts', () => {
    const dir = tempDir('mixed');
    const plain = join(dir, 'plain.pcap');
    const tunnelled = join(dir, 'vxlan.pcap');
    generate(plain, { frames: 6_000, size: 64, flows: 3_000, vms: 4 });
    generate(tunnelled, { frames: 6_000, size: 110, flows: 3_000, vms: 4, tunnel: 'vxlan' });
    const a = captureFrames(plain);
    const t = captureFrames(tunnelled);
    const cap = join(dir, 'mixed.pcap');
    writePcap(cap, toRecords(a.flatMap((f, i) => [f, t[i]])));
    const topo = join(dir, 't.json');
    writeFileSync(topo, JSON.stringify(benchTopology(4)));
    const ia = tempDir('inline');
    const ri = replay({ capture: cap, topology: topo, outDir: ia });
    expect(ri.report.packets.in).toBe(12_000);
    expect(ri.report.flows.upcalls).toBe(6_000); // (each tunnelled frame decapsulated: its inner flow a new one too)
    for (const part of [64, 5]) {
      const out = tempDir('thread');
      const rt = replay({ capture: cap, topology: topo, outDir: out, fpag: 'thread', beforeBatch: (_n, _dp, _f, thread) => { thread!.part = part; } });
      expect(rt.report.fpag.partial, `${part}`).toBeGreaterThan(0);
      expect(rt.report.flows.upcalls).toBe(ri.report.flows.upcalls);
      expect(rt.report.packets).toEqual(ri.report.packets);
      expect(rt.report.drops).toEqual(ri.report.drops);
      expect(flows(rt)).toEqual(flows(ri));
      const outs = readdirSync(ia).sort();
      expect(readdirSync(out).sort()).toEqual(outs);
      for (const f of outs) expect(readFileSync(join(out, f)).equals(readFileSync(join(ia, f))), `${part} ${f}`).toBe(true);
    }
  });

  it('not waited for (--fpag async): the same frames on every port, each connection in order, the same totals and per-flow counts (the demo; 30 000 frames, also through a table smaller than the flows, and in requests of 100 keys, 4 in flight; a tunnel\'s two hosts)', () => {
    const { dir, cap, topo } = newFlows('async', 30_000, 5_000);
    const hosts = JSON.parse(readFileSync(join(FIXTURES, 'two-hosts.json'), 'utf8')).hosts as object[];
    // [capture, topology, flow table size, requests in flight at most and keys a request (async: 1, all that pend)]
    const cases: [string, string, number | undefined, number?, number?][] = [[DEMO, TOPO, undefined], [cap, topo, undefined], [cap, topo, 1024], [cap, topo, undefined, 4, 100]];
    hosts.forEach((h, k) => {
      const t = join(dir, `host${k}.json`);
      writeFileSync(t, JSON.stringify(h));
      cases.push([join(FIXTURES, 'two-hosts.pcap'), t, undefined]);
    });
    for (const [capture, topology, maxFlows, inFlight, part] of cases) {
      const a = tempDir('inline');
      const b = tempDir('async');
      const ri = replay({ capture, topology, outDir: a, maxFlows });
      const ra = replay({ capture, topology, outDir: b, fpag: 'async', maxFlows, beforeBatch: inFlight === undefined ? undefined : (_n, _dp, _f, t) => { t!.inFlightMax = inFlight; t!.part = part!; } });
      const what = `${capture} ${topology} ${maxFlows ?? ''} ${inFlight ?? ''}`;
      expect(ra.report.fpag.placement).toBe('async');
      expect(ra.report.fpag.queue!.parked, what).toBeGreaterThan(0);
      expect(ra.report.packets, what).toEqual(ri.report.packets);
      expect(ra.report.drops, what).toEqual(ri.report.drops);
      if (maxFlows === undefined) expect(flows(ra), what).toEqual(flows(ri));
      expect(readdirSync(b).sort()).toEqual(readdirSync(a).sort());
      // Per port: the same frames (an encapsulated one's outer source port is its flow's hash: the same too);
      // per connection (protocol, addresses and ports of an IPv4 frame; else the whole frame), the same order.
      const conn = (f: Uint8Array) => (f[12] === 0x08 && f[13] === 0 ? Buffer.concat([f.subarray(23, 24), f.subarray(26, 38)]) : Buffer.from(f)).toString('hex');
      for (const f of readdirSync(a)) {
        const x = captureFrames(join(a, f));
        const y = captureFrames(join(b, f));
        const hex = (l: Uint8Array[]) => l.map((z) => Buffer.from(z).toString('hex'));
        expect([...hex(y)].sort(), `${what} ${f}`).toEqual([...hex(x)].sort());
        const groups = (l: Uint8Array[]) => {
          const g = new Map<string, string[]>();
          for (const z of l) { const k = conn(z); if (!g.has(k)) g.set(k, []); g.get(k)!.push(Buffer.from(z).toString('hex')); }
          return g;
        };
        const gx = groups(x);
        const gy = groups(y);
        for (const [k, seq] of gx) expect(gy.get(k), `${what} ${f}: ${k}`).toEqual(seq);
      }
    }
  });

  it('a worker that cannot answer (flows with 6 000 outputs each: the answer does not fit its area) fails the replay with FPO_ERR_WORKER at once, not a hang', () => {
    const topo = JSON.parse(readFileSync(TOPO, 'utf8'));
    const outs = Array.from({ length: 6000 }, (_, k) => `output:vm${1 + (k % 2)}-eth0`);
    topo.rules.push({ priority: 10, match: { eth_type: '0x0800', ip_proto: 17 }, actions: outs });
    topo.wildcarding = 'rule-fields';
    const dir = tempDir('fat');
    const t = join(dir, 'topology.json');
    writeFileSync(t, JSON.stringify(topo));
    const cap = join(dir, 'many.pcap');
    writePcap(cap, Array.from({ length: 256 }, (_, i) => ({ sec: 1, usec: i, data: eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.9', dst: '10.0.0.1', proto: 17 }, udp(5000, 2000 + i, new Uint8Array(18)))) })));
    // Inline, the same capture goes through (the limit is the thread's reply area's).
    expect(replay({ capture: cap, topology: t, outDir: tempDir() }).report.flows.upcalls).toBe(256);
    const t0 = Date.now();
    let err: (Error & { code?: string }) | undefined;
    try {
      replay({ capture: cap, topology: t, outDir: tempDir(), fpag: 'thread' });
    } catch (e) {
      err = e as Error & { code?: string };
    }
    expect(err?.code).toBe('FPO_ERR_WORKER');
    expect(err?.message).toMatch(/does not fit the reply area/);
    expect(Date.now() - t0).toBeLessThan(20_000);
  });

  it('works for the sender of a tunnel too (encap and flag actions cross as messages)', () => {
    const two = join(FIXTURES, 'two-hosts.json');
    const hosts = JSON.parse(readFileSync(two, 'utf8')).hosts;
    const t = join(tempDir(), 'hostA.json');
    writeFileSync(t, JSON.stringify(hosts[0]));
    const a = replay({ capture: join(FIXTURES, 'two-hosts.pcap'), topology: t, outDir: tempDir() }).report;
    const b = replay({ capture: join(FIXTURES, 'two-hosts.pcap'), topology: t, outDir: tempDir(), fpag: 'thread' }).report;
    expect(b.tunnel).toEqual(a.tunnel);
    expect(b.tunnel.flaggedSent).toBeGreaterThan(0);
  });
});

describe('fpo replay --events', () => {
  it('a VM moved mid-stream: packets before the event on the old port, after it on the new, none lost or doubled, no flow rewritten', () => {
    const ev = join(tempDir(), 'events.json');
    writeFileSync(ev, JSON.stringify([{ atPacket: 300, do: 'migrate', interface: 'vm1-eth0', to: 'vf5' }]));
    const out = tempDir('ev');
    const r = runCli(['replay', DEMO, '-t', TOPO, '-o', out, '--events', ev, '--json']);
    expect(r.status).toBe(0);
    const rep = JSON.parse(r.stdout) as ReplayReport;
    expect(rep.events).toHaveLength(1);
    expect(rep.events![0].atPacket).toBe(300);
    expect(rep.events![0].result).toMatchObject({ oldPpid: 11, newPpid: 15, flowRewrites: 0 });
    expect(rep.packets.in).toBe(rep.packets.out + rep.packets.dropped);
    const stamps = (f: string) => tsOf(join(out, f));
    const old = stamps('vf1.pcap');
    const moved = stamps('vf5.pcap');
    const plainOut = tempDir('ev-plain');
    const plain = replay({ capture: DEMO, topology: TOPO, outDir: plainOut }).report;
    expect(old.length + moved.length).toBe(plain.ports.find((p) => p.name === 'vf1')!.tx.packets);
    expect(new Set([...old, ...moved]).size).toBe(old.length + moved.length);
    // The event lands before the input's packet 300 (0-based): what vf1 got without the move splits at its stamp,
    // earlier frames on the old port, that one and later on the new.
    const input = tsOf(DEMO);
    expect(input).toHaveLength(671);
    const cut = input[300];
    const vf1Plain = tsOf(join(plainOut, 'vf1.pcap'));
    const wantOld = vf1Plain.filter((t) => t < cut);
    const wantMoved = vf1Plain.filter((t) => t >= cut);
    expect(wantOld.length).toBeGreaterThan(10);
    expect(wantMoved.length).toBeGreaterThan(10);
    expect(old).toEqual(wantOld);
    expect(moved).toEqual(wantMoved);
  });

  it('an events file that is wrong is refused with the field named', () => {
    const ev = join(tempDir(), 'bad-events.json');
    writeFileSync(ev, JSON.stringify([{ atPacket: 1, do: 'migrate', interface: 'vm1-eth0' }]));
    const r = runCli(['replay', DEMO, '-t', TOPO, '-o', tempDir(), '--events', ev]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/bad-events\.json: events\[0\]: a migrate needs "to"/);
    writeFileSync(ev, JSON.stringify([{ atPacket: 1, do: 'teleport' }]));
    expect(runCli(['replay', DEMO, '-t', TOPO, '-o', tempDir(), '--events', ev]).stderr).toMatch(/events\[0\]\.do/);
  });
});

function tsOf(path: string): number[] {
  const rd = new CaptureReader(path);
  const b = new PacketBatch(64);
  const out: number[] = [];
  while (rd.fill(b, 0) > 0) for (let i = 0; i < b.count; i++) out.push(b.tsA[i] * 1e6 + b.tsB[i]);
  rd.close();
  return out;
}

describe('replay output files', () => {
  /** The demo replayed into a fresh folder: the folder, and the bytes of each file there. */
  function demoOut(): { out: string; before: Map<string, Buffer> } {
    const out = tempDir('outs');
    expect(runCli(['replay', DEMO, '-t', TOPO, '-o', out]).status).toBe(0);
    return { out, before: snapshot(out) };
  }
  function snapshot(dir: string): Map<string, Buffer> {
    return new Map(readdirSync(dir).sort().map((f) => [f, lstatSync(join(dir, f)).isSymbolicLink() ? Buffer.from(`-> ${readlinkSync(join(dir, f))}`) : readFileSync(join(dir, f))]));
  }

  it('an output that is the input is refused before anything is written: same path, another spelling, a symlink, a hard link', () => {
    const cases: [string, (out: string) => string][] = [
      ['the same path', (out) => join(out, 'vf2.pcap')],
      ['another spelling of it', (out) => `${out}/./../${basename(out)}/vf2.pcap`],
      ['a symlink to it', (out) => { const l = join(tempDir('link'), 'in.pcap'); symlinkSync(join(out, 'vf2.pcap'), l); return l; }],
      ['a hard link to it', (out) => { const l = join(tempDir('link'), 'in.pcap'); linkSync(join(out, 'vf2.pcap'), l); return l; }],
    ];
    for (const [what, input] of cases) {
      const { out, before } = demoOut();
      const capture = input(out);
      const r = runCli(['replay', capture, '-t', TOPO, '-o', out]);
      expect(r.stderr, what).toBe(`fpo: ${join(out, 'vf2.pcap')}: port vf2's output is ${capture}, an input of this run (the same file); writing it would replace the input: choose another --out\n`);
      expect(r.status, what).toBe(1);
      expect(snapshot(out), what).toEqual(before); // nothing written, no temp file, the input whole
    }
    expect(cases).toHaveLength(4);
  }, 60_000);

  it('an output that is a symlink to the input is refused too (the output side of the link)', () => {
    const { out } = demoOut();
    const input = join(tempDir('in'), 'in.pcap');
    copyFileSync(join(out, 'vf3.pcap'), input);
    rmSync(join(out, 'vf3.pcap'));
    symlinkSync(input, join(out, 'vf3.pcap'));
    const before = snapshot(out);
    const r = runCli(['replay', input, '-t', TOPO, '-o', out]);
    expect(r.stderr).toBe(`fpo: ${join(out, 'vf3.pcap')}: port vf3's output is ${input}, an input of this run (the same file); writing it would replace the input: choose another --out\n`);
    expect(r.status).toBe(1);
    expect(snapshot(out)).toEqual(before);
    // A different file with the same bytes is not the input: that replay goes ahead.
    const copy = join(tempDir('in'), 'copy.pcap');
    copyFileSync(input, copy);
    rmSync(join(out, 'vf3.pcap'));
    expect(runCli(['replay', copy, '-t', TOPO, '-o', out]).status).toBe(0);
  }, 60_000);

  it('stale outputs of an earlier run are listed; --clean removes them first, so the folder holds this run\'s outputs only (and what is not fpo\'s, or a live run\'s)', (ctx) => {
    needTool(ctx, 'tshark', 'reads what is written');
    const { out } = demoOut();
    expect(readdirSync(out).sort()).toEqual(['vf1.pcap', 'vf2.pcap', 'vf3.pcap', 'vf4.pcap']);
    // The same topology with vm4 detached: vf4 emits nothing now.
    const topo = join(tempDir('stale'), 'topo.json');
    writeFileSync(topo, readFileSync(TOPO, 'utf8').replace('"segment": "red", "port": "vf4"', '"segment": "red"'));
    writeFileSync(join(out, 'vf1.pcapng'), 'an earlier pcapng run\'s');
    writeFileSync(join(out, 'vf2.pcap.partial-4242'), 'a killed run\'s');
    writeFileSync(join(out, 'notes.txt'), 'not fpo\'s');
    writeFileSync(join(out, 'vf9.pcap'), 'not a port of this topology');
    writeFileSync(join(out, 'vf3.pcap.partial-1'), 'a run still going (pid 1 is alive)');
    const listed = replayJson([DEMO, '--topology', topo, '--out', out]);
    expect(listed.stale).toEqual(['vf1.pcapng', 'vf2.pcap.partial-4242', 'vf4.pcap'].map((f) => join(out, f)));
    expect(listed.cleaned).toBeUndefined();
    const text = runCli(['replay', DEMO, '--topology', topo, '--out', out]);
    expect(text.stdout).toContain(`stale (not written by this run; --clean removes them): ${listed.stale.join(', ')}\n`);
    const cleaned = replayJson([DEMO, '--topology', topo, '--out', out, '--clean']);
    expect(cleaned.cleaned).toEqual(['vf1.pcap', 'vf1.pcapng', 'vf2.pcap', 'vf2.pcap.partial-4242', 'vf3.pcap', 'vf4.pcap'].map((f) => join(out, f)));
    expect(cleaned.stale).toEqual([]);
    expect(readdirSync(out).sort()).toEqual(['notes.txt', 'vf1.pcap', 'vf2.pcap', 'vf3.pcap', 'vf3.pcap.partial-1', 'vf9.pcap']);
    let frames = 0;
    for (const p of cleaned.ports.filter((x) => x.file)) {
      expect(tsharkFields(p.file!, ['frame.number']).length, p.name).toBe(p.tx.packets);
      frames += p.tx.packets;
    }
    expect(frames).toBe(cleaned.packets.copies);
    expect(cleaned.ports.find((p) => p.name === 'vf4')!.tx.packets).toBe(0);
  }, 60_000);
});

describe('replay interrupted', () => {
  // A capture long enough (1.5 M frames, 300 K flows: ~2 s here) that a signal lands mid-way.
  const dir = tempDir('interrupt');
  const cap = join(dir, 'big.pcap');
  const topo = join(dir, 'topo.json');
  const FRAMES = 1_500_000;
  writeFileSync(topo, JSON.stringify(benchTopology(4)));
  // Made by the first test that needs it (120 MB), not when the file is collected.
  const bigCapture = () => { if (!existsSync(cap)) generate(cap, { frames: FRAMES, size: 64, flows: 300_000, vms: 4 }); };

  /** Starts a replay, waits until it is writing (a temp file of each of the 4 VM ports exists), sends `signal`; resolves with the exit code and output. */
  function interrupted(signal: NodeJS.Signals, out: string, extra: string[] = []): Promise<{ code: number | null; stdout: string; stderr: string; seenWriting: string[] }> {
    bigCapture();
    return new Promise((resolve) => {
      const p = spawn(process.execPath, [CLI, 'replay', cap, '-t', topo, '-o', out, '--json', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      let seenWriting: string[] = [];
      p.stdout.on('data', (d) => (stdout += d));
      p.stderr.on('data', (d) => (stderr += d));
      const poll = setInterval(() => {
        const names = existsSync(out) ? readdirSync(out) : [];
        if (names.filter((n) => n.includes('.partial-')).length === 4) { // vf0..vf3 all writing
          clearInterval(poll);
          seenWriting = names.sort();
          p.kill(signal);
        }
      }, 5);
      p.on('exit', (code) => { clearInterval(poll); resolve({ code, stdout, stderr, seenWriting }); });
    });
  }

  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    it(`${signal} finishes the batch, renames complete captures of what was switched, reports "interrupted" and exits ${code}`, async (ctx) => {
      needTool(ctx, 'tshark', 'reads what is written');
      const out = join(tempDir('sig'), 'out');
      const r = await interrupted(signal, out);
      expect(r.seenWriting.every((n) => /^vf\d\.pcap\.partial-\d+$/.test(n)), r.seenWriting.join(' ')).toBe(true);
      expect(r.code).toBe(code);
      const rep = JSON.parse(r.stdout) as ReplayReport;
      expect(rep.interrupted).toBe(signal);
      expect(rep.packets.in).toBeGreaterThan(0);
      expect(rep.packets.in).toBeLessThan(FRAMES);
      expect(rep.packets.in).toBe(rep.packets.out + rep.packets.dropped);
      expect(r.stderr).toBe(`fpo: interrupted by ${signal} after ${rep.packets.in} packets; the outputs hold those packets\n`);
      // Only final names, each a whole capture that tshark reads to the end, holding exactly what the report says.
      const files = rep.ports.filter((p) => p.file).map((p) => p.file!);
      expect(readdirSync(out).sort()).toEqual(files.map((f) => basename(f)).sort());
      expect(files.length).toBe(4);
      let frames = 0;
      for (const p of rep.ports.filter((x) => x.file)) {
        expect(tsharkFields(p.file!, ['frame.number']).length, p.name).toBe(p.tx.packets);
        frames += p.tx.packets;
      }
      expect(frames).toBe(rep.packets.copies);
    }, 120_000);
  }

  it('SIGKILL leaves only temp names, never a complete-looking capture; the next run lists them, --clean removes them', async () => {
    const out = join(tempDir('kill'), 'out');
    const r = await interrupted('SIGKILL', out);
    expect(r.code).toBe(null);
    const left = readdirSync(out).sort();
    expect(left.length).toBe(4);
    for (const n of left) expect(n).toMatch(/^vf\d\.pcap\.partial-\d+$/);
    // The next run, on the small demo capture (its floods reach the bench topology's VMs).
    const next = replayJson([DEMO, '--topology', topo, '--out', out]);
    expect(next.stale).toEqual(left.map((n) => join(out, n)));
    const written = next.ports.filter((p) => p.file).map((p) => basename(p.file!));
    expect(written.length).toBeGreaterThan(0);
    const clean = replayJson([DEMO, '--topology', topo, '--out', out, '--clean']);
    // --clean removes fpo's own files of these ports: the killed run's temp files and the last run's outputs.
    expect(clean.cleaned).toEqual([...left, ...written].sort().map((n) => join(out, n)));
    expect(clean.stale).toEqual([]);
    expect(readdirSync(out).filter((n) => n.includes('.partial-'))).toEqual([]);
  }, 120_000);
});

/** The frames of a classic little-endian pcap, in order. */
function pcapFrames(path: string): Buffer[] {
  const b = readFileSync(path);
  const out: Buffer[] = [];
  for (let o = 24; o + 16 <= b.length; o += 16 + b.readUInt32LE(o + 8)) out.push(b.subarray(o + 16, o + 16 + b.readUInt32LE(o + 8)));
  return out;
}

/** A frame with its 4-byte tag after the MACs taken out. */
function untag(f: Uint8Array): Buffer {
  return Buffer.concat([f.subarray(0, 12), f.subarray(16)]);
}

describe('VLAN tags: VM ports are access ports, the uplink a trunk (red is VLAN 20 on uplink0)', () => {
  // Each packet enters on the port of the VM that sent it, the others (source 02:ee:…) on uplink0.
  const dir = tempDir('vlan');
  const cap = join(dir, 'in.pcap');
  const topo = join(dir, 'topo.json');
  const file = JSON.parse(readFileSync(TOPO, 'utf8')) as { replay: { inputPort: string } };
  file.replay = { inputPort: 'by-source-mac' };
  writeFileSync(topo, JSON.stringify(file));
  const EXT = '02:ee:00:00:00:01';
  const VM = (n: number) => `02:00:00:00:00:0${n}`;
  const dns = (src: string, dst: string, i: number) => ipv4({ src, dst, proto: 17 }, udp(5000 + i, 53, Uint8Array.from({ length: 20 + i }, (_, k) => (k * 7 + i) & 0xff)));
  const frames: Uint8Array[] = [];
  const kinds: string[] = [];
  for (let i = 0; i < 5; i++) {
    frames.push(eth(EXT, VM(3), 0x0800, dns('10.0.1.3', '10.0.1.99', i))); kinds.push('red unicast out'); // unknown unicast: red flood
    frames.push(pad60(eth('ff:ff:ff:ff:ff:ff', VM(3), 0x0806, arp(1, VM(3), '10.0.1.3', '00:00:00:00:00:00', '10.0.1.99')))); kinds.push('red broadcast');
    frames.push(eth(EXT, VM(4), 0x0800, dns('10.0.1.4', '10.0.1.99', i), [[0x8100, 0xa000]])); kinds.push('red priority-tagged'); // PCP 5, VID 0
    frames.push(eth(EXT, VM(1), 0x0800, dns('10.0.0.1', '10.0.0.99', i))); kinds.push('blue out');
    frames.push(eth(VM(3), EXT, 0x0800, dns('10.0.1.99', '10.0.1.3', i), [[0x8100, 20]])); kinds.push('uplink to vm3');
    frames.push(eth(VM(4), EXT, 0x0800, dns('10.0.1.99', '10.0.1.4', i), [[0x8100, 0x6014]])); kinds.push('uplink to vm4'); // PCP 3, VID 20
    frames.push(pad60(eth('ff:ff:ff:ff:ff:ff', EXT, 0x0806, arp(1, EXT, '10.0.1.99', '00:00:00:00:00:00', '10.0.1.3'), [[0x8100, 20]]))); kinds.push('uplink broadcast');
  }
  writePcap(cap, toRecords(frames));
  const out = join(dir, 'out');
  const report = replayJson([cap, '--topology', topo, '--out', out]);
  const of = (k: string) => frames.filter((_, i) => kinds[i] === k);

  it('every packet is delivered: in = delivered + dropped, nothing dropped', () => {
    expect(report.packets.in).toBe(35);
    expect(report.drops).toEqual({});
    expect(report.packets.out).toBe(35);
  });

  it('red VM frames leave the uplink tagged VLAN 20 (a priority tag keeps its PCP), blue ones untagged (checked with tshark)', (ctx) => {
    needTool(ctx, 'tshark', 'reads the output captures');
    const rows = tsharkFields(join(out, 'uplink0.pcap'), ['eth.src', 'vlan.id', 'vlan.priority']);
    const by = (mac: string) => rows.filter((r) => r[0] === mac);
    expect(by(VM(3)).length).toBe(10);
    for (const [, vid, pcp] of by(VM(3))) expect([vid, pcp]).toEqual(['20', '0']);
    expect(by(VM(4)).length).toBe(5);
    for (const [, vid, pcp] of by(VM(4))) expect([vid, pcp]).toEqual(['20', '5']);
    expect(by(VM(1)).length).toBe(5);
    for (const [, vid] of by(VM(1))) expect(vid).toBe('');
    expect(rows.length).toBe(20);
    // Byte for byte: the tag goes in after the source MAC, the rest is the frame as sent.
    const up = pcapFrames(join(out, 'uplink0.pcap'));
    const sent = [...of('red unicast out'), ...of('red broadcast')].map((f) => Buffer.from(f));
    const got = up.filter((f) => f.subarray(6, 12).equals(Buffer.from([2, 0, 0, 0, 0, 3])));
    expect(got.map((f) => f.readUInt32BE(12))).toEqual(got.map(() => 0x81000014));
    expect(got.map(untag)).toEqual(frames.filter((_, i) => kinds[i] === 'red unicast out' || kinds[i] === 'red broadcast').map((f) => Buffer.from(f)));
    expect(sent.length).toBe(10);
  });

  it('a flood from a red VM goes tagged to the uplink and untagged to the other red VM, in the same run', (ctx) => {
    needTool(ctx, 'tshark', 'reads the output captures');
    const vf4 = tsharkFields(join(out, 'vf4.pcap'), ['eth.src', 'vlan.id'], 'eth.src == 02:00:00:00:00:03');
    expect(vf4.length).toBe(10);
    for (const [, vid] of vf4) expect(vid).toBe('');
    const sent = frames.filter((_, i) => kinds[i] === 'red unicast out' || kinds[i] === 'red broadcast').map((f) => Buffer.from(f));
    expect(pcapFrames(join(out, 'vf4.pcap')).filter((f) => f.subarray(6, 12).equals(Buffer.from([2, 0, 0, 0, 0, 3])))).toEqual(sent);
    // The same packets' copies on the uplink: tagged 20.
    const up = tsharkFields(join(out, 'uplink0.pcap'), ['eth.src', 'vlan.id'], 'eth.src == 02:00:00:00:00:03');
    expect(up.length).toBe(10);
    for (const [, vid] of up) expect(vid).toBe('20');
    expect(existsSync(join(out, 'vf1.pcap'))).toBe(false); // blue VMs hear nothing of red
  });

  it('uplink VLAN 20 frames reach vf3 and vf4 untagged, the rest of the frame byte-identical (checked with tshark)', (ctx) => {
    needTool(ctx, 'tshark', 'reads the output captures');
    for (const port of ['vf3', 'vf4']) {
      const rows = tsharkFields(join(out, `${port}.pcap`), ['eth.src', 'vlan.id', 'udp.dstport', 'arp.opcode'], `eth.src == ${EXT}`);
      expect(rows.length, port).toBe(10); // 5 unicast to it, 5 broadcasts
      for (const [, vid] of rows) expect(vid, port).toBe('');
    }
    const fromUp = (port: string) => pcapFrames(join(out, `${port}.pcap`)).filter((f) => f.subarray(6, 12).equals(Buffer.from([2, 0xee, 0, 0, 0, 1])));
    const interleave = (a: Uint8Array[], b: Uint8Array[]) => a.flatMap((f, i) => [untag(f), untag(b[i])]);
    expect(fromUp('vf3')).toEqual(interleave(of('uplink to vm3'), of('uplink broadcast')));
    expect(fromUp('vf4')).toEqual(interleave(of('uplink to vm4'), of('uplink broadcast')));
  });
  it('the same frames come out of a pcapng input (each output frame as tshark reads it) and with the FPAG on its own thread', (ctx) => {
    needTool(ctx, 'editcap', 'converts the capture to pcapng');
    needTool(ctx, 'tshark', 'reads the output captures');
    const ng = join(dir, 'in.pcapng');
    expect(spawnSync('editcap', ['-F', 'pcapng', cap, ng]).status).toBe(0);
    const outNg = join(dir, 'out-ng');
    replayJson([ng, '--topology', topo, '--out', outNg]);
    const threaded = join(dir, 'out-thread');
    replay({ capture: cap, topology: topo, outDir: threaded, fpag: 'thread' });
    const rows = (f: string) => tsharkFields(f, ['frame.len', 'eth.src', 'eth.dst', 'vlan.id', 'vlan.priority', 'data.data', 'udp.payload']);
    for (const port of ['uplink0', 'vf2', 'vf3', 'vf4']) {
      expect(rows(join(outNg, `${port}.pcapng`)), port).toEqual(rows(join(out, `${port}.pcap`)));
      expect(readFileSync(join(threaded, `${port}.pcap`)).equals(readFileSync(join(out, `${port}.pcap`))), port).toBe(true);
    }
  });
});

describe('a VM is not trusted: VLAN tags and port security on a VM port', () => {
  // Frames vm1 sends on vf1 of the demo topology (fixtures/make.ts says what each must become).
  const dir = tempDir('untrusted');
  const cap = join(dir, 'vm1.pcap');
  const topo = join(dir, 'topo.json');
  const frames = untrustedVmFrames();
  writePcap(cap, toRecords(frames.map((f) => f.frame)));
  const file = JSON.parse(readFileSync(TOPO, 'utf8')) as { replay: { inputPort: string } };
  file.replay = { inputPort: 'vf1' };
  writeFileSync(topo, JSON.stringify(file));
  const out = join(dir, 'out');
  const report = replayJson([cap, '--topology', topo, '--out', out]);
  const want = (w: string) => frames.filter((f) => f.want === w).length;

  it('drops tagged frames (VLAN 20, 0 then 20, QinQ) as vlanFromVm and spoofed sources by kind; in = delivered + dropped', () => {
    expect(frames.length).toBe(600);
    expect(report.packets.in).toBe(600);
    expect(report.drops).toEqual({ vlanFromVm: want('vlanFromVm'), portSecMac: want('portSecMac'), portSecIpv4: want('portSecIpv4'), portSecArp: want('portSecArp'), portSecIpv6: want('portSecIpv6') });
    expect(want('vlanFromVm')).toBe(160);
    expect(report.packets.out).toBe(want('delivered'));
    expect(report.packets.out).toBe(240);
    expect(report.packets.in).toBe(report.packets.out + report.packets.dropped);
  });

  it('nothing vm1 sent leaves the uplink tagged, or with another source MAC or IPv4 source (checked with tshark)', (ctx) => {
    needTool(ctx, 'tshark', 'reads the output captures');
    const up = tsharkFields(join(out, 'uplink0.pcap'), ['vlan.id', 'eth.src', 'ip.src', 'ipv6.src']);
    // Broadcasts (DHCP discover, ARP probe) and the multicast NS and echo flood out of the uplink: 40 of each.
    expect(up.length).toBe(160);
    for (const [vlan, src, ip4] of up) {
      expect(vlan === '' || vlan === '0').toBe(true);
      expect(src).toBe('02:00:00:00:00:01');
      expect(ip4 === '' || ip4 === '0.0.0.0').toBe(true);
    }
    expect(existsSync(join(out, 'vf3.pcap'))).toBe(false); // the red VMs hear nothing
    const vf2 = tsharkFields(join(out, 'vf2.pcap'), ['eth.src']);
    expect(vf2.length).toBe(240);
    expect(new Set(vf2.map((r) => r[0]))).toEqual(new Set(['02:00:00:00:00:01']));
  });

  it('with "portSecurity": false on vm1-eth0, spoofed sources pass but tags are still dropped', () => {
    const t = JSON.parse(readFileSync(topo, 'utf8')) as { nodes: { interfaces: { portSecurity?: boolean }[] }[] };
    t.nodes[0].interfaces[0].portSecurity = false;
    const topo2 = join(dir, 'topo-off.json');
    writeFileSync(topo2, JSON.stringify(t));
    const r = replayJson([cap, '--topology', topo2, '--out', join(dir, 'out-off')]);
    expect(r.drops).toEqual({ vlanFromVm: 160 });
    expect(r.packets.out).toBe(440);
  });
});

describe('port security: the ARP sender MAC', () => {
  // vm1 (02:00:00:00:00:01, 10.0.0.1) on vf1: ARPs whose sender hardware address is its own pass; ones that
  // name vm2's or vm5's MAC from vm1's own frames (poisoning the others' ARP caches) are dropped, in any order.
  const dir = tempDir('arp-sha');
  const me = '02:00:00:00:00:01';
  const frames = [
    pad60(eth('ff:ff:ff:ff:ff:ff', me, 0x0806, arp(1, me, '10.0.0.1', '00:00:00:00:00:00', '10.0.0.2'))), // good
    pad60(eth('ff:ff:ff:ff:ff:ff', me, 0x0806, arp(1, '02:00:00:00:00:02', '10.0.0.1', '00:00:00:00:00:00', '10.0.0.2'))), // sha vm2's
    pad60(eth('ff:ff:ff:ff:ff:ff', me, 0x0806, arp(1, me, '10.0.0.1', '00:00:00:00:00:00', '10.0.0.2'))), // good again
    pad60(eth('02:00:00:00:00:02', me, 0x0806, arp(2, '02:00:00:00:00:05', '10.0.0.1', '02:00:00:00:00:02', '10.0.0.2'))), // a reply, sha vm5's
    pad60(eth('02:00:00:00:00:02', me, 0x0806, arp(2, me, '10.0.0.1', '02:00:00:00:00:02', '10.0.0.2'))), // a good reply
    pad60(eth('02:00:00:00:00:02', me, 0x0806, arp(2, '02:00:00:00:00:05', '10.0.0.1', '02:00:00:00:00:02', '10.0.0.2'))), // bad after good
  ];
  const cap = join(dir, 'arp.pcap');
  writePcap(cap, toRecords(frames));
  const file = JSON.parse(readFileSync(TOPO, 'utf8')) as { replay: { inputPort: string }; nodes: { interfaces: { portSecurity?: boolean }[] }[] };
  file.replay = { inputPort: 'vf1' };
  const topo = join(dir, 'topo.json');
  writeFileSync(topo, JSON.stringify(file));

  it('an ARP naming another MAC as its sender is dropped as portSecArp, its own passes (checked with tshark)', (ctx) => {
    const out = join(dir, 'out');
    const r = replayJson([cap, '--topology', topo, '--out', out]);
    expect(r.packets.in).toBe(6);
    expect(r.drops).toEqual({ portSecArp: 3 });
    expect(r.packets.in).toBe(r.packets.out + r.packets.dropped);
    needTool(ctx, 'tshark', 'reads the output captures');
    const vf2 = tsharkFields(join(out, 'vf2.pcap'), ['arp.src.hw_mac', 'arp.opcode']);
    expect(vf2).toEqual([[me, '1'], [me, '1'], [me, '2']]);
    const up = tsharkFields(join(out, 'uplink0.pcap'), ['arp.src.hw_mac']);
    expect(up).toEqual([[me], [me]]); // the two broadcasts; the replies were for vm2
  });

  it('with "portSecurity": false they all pass', () => {
    file.nodes[0].interfaces[0].portSecurity = false;
    const topo2 = join(dir, 'topo-off.json');
    writeFileSync(topo2, JSON.stringify(file));
    const r = replayJson([cap, '--topology', topo2, '--out', join(dir, 'out-off')]);
    expect(r.drops).toEqual({});
    expect(r.packets.out).toBe(6);
  });
});

describe('a VM is not a tunnel endpoint', () => {
  // vm1 on vf1 of the demo topology, this host a tunnel endpoint (192.168.0.1): vm1 wraps a VLAN 20
  // broadcast in VXLAN and Geneve to that endpoint, flagged and not.
  const dir = tempDir('vm-tunnel');
  const topo = join(dir, 'topo.json');
  const file = JSON.parse(readFileSync(TOPO, 'utf8')) as Record<string, unknown>;
  file.replay = { inputPort: 'vf1' };
  file.tunnel = { vtep: '192.168.0.1' };
  writeFileSync(topo, JSON.stringify(file));
  const me = '02:00:00:00:00:01';
  const inner = pad60(eth('ff:ff:ff:ff:ff:ff', me, 0x0806, arp(1, me, '10.0.0.1', '00:00:00:00:00:00', '10.0.1.3'), [[0x8100, 20]]));
  const outer = (payload: Uint8Array, port: number) => eth('02:fe:00:00:00:01', me, 0x0800, ipv4({ src: '10.0.0.1', dst: '192.168.0.1', proto: 17 }, udp(40000, port, payload)));
  const frames: Uint8Array[] = [];
  for (let i = 0; i < 20; i++) {
    frames.push(outer(vxlan(5001, inner), 4789));
    frames.push(outer(geneve(5001, inner, [[0xfff0, 0x01, new Uint8Array(0)]]), 6081)); // with the special-processing flag
    frames.push(outer(geneve(5001, inner), 6081));
  }
  const cap = join(dir, 'vm1.pcap');
  writePcap(cap, toRecords(frames));

  it('the fast lane and the stages agree on them', () => {
    const run = (lane: boolean) => replay({ capture: cap, topology: topo, outDir: join(dir, lane ? 'lane' : 'stages'), fastLane: lane, batchSize: 8 }).report;
    const on = run(true);
    const off = run(false);
    expect(on.packets).toEqual(off.packets);
    expect(on.tunnel).toEqual(off.tunnel);
    expect(on.drops).toEqual(off.drops);
    expect(on.tunnel.unflagged + on.tunnel.flagged).toBe(0);
    for (const p of ['uplink0', 'vf2']) expect(readFileSync(join(dir, 'lane', `${p}.pcap`)).equals(readFileSync(join(dir, 'stages', `${p}.pcap`))), p).toBe(true);
  });

  it('its VXLAN/Geneve packets to this host are not terminated: the tagged inner frame never reaches the uplink as a frame of its own (checked with tshark)', (ctx) => {
    needTool(ctx, 'tshark', 'reads the output captures');
    const out = join(dir, 'out');
    const r = replayJson([cap, '--topology', topo, '--out', out]);
    expect(r.packets.in).toBe(60);
    expect(r.packets.in).toBe(r.packets.out + r.packets.dropped);
    expect(r.tunnel.flagged).toBe(0);
    expect(r.tunnel.unflagged).toBe(0);
    // Plain UDP from vm1 to an unknown MAC in blue: flooded (vf2, uplink0) as it is.
    expect(r.packets.out).toBe(60);
    const up = tsharkFields(join(out, 'uplink0.pcap'), ['eth.type', 'ip.dst']);
    expect(up.length).toBe(60);
    for (const [types, dst] of up) {
      expect(types.split(',')[0]).toBe('0x0800'); // the outer frame, untagged
      expect(dst.split(',')[0]).toBe('192.168.0.1');
    }
  });
});
