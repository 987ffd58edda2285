/**
 * fpo replay --workers N (control/replay-workers.ts): N datapaths, one FPAG.
 * Against one worker on the same input, every output holds the same
 * packets, each flow's packets in the same order (grouped by the flow hash
 * the workers spread by, compared byte for byte; and checked with tshark),
 * and the report gives the same totals. Most runs here use workersJoin
 * 'start' so that every worker switches from the first packet (with the
 * default, a small capture may be done before a thread is up).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { replay, replayAsync, replayHostsAsync, type ReplayOptions, type ReplayReport } from '../../control/replay.js';
import { loadHosts } from '../../control/topology.js';
import { CaptureReader } from '../../datapath/ports/capture-reader.js';
import { PacketBatch } from '../../datapath/batch.js';
import type { ControlEvent } from '../../control/events.js';
import { FpoError } from '../../datapath/errors.js';
import { flowHash, workerOf } from '../../datapath/spread.js';
import { arp, eth, ipv4, ipv6, tcp, udp, writePcap, type Record as PcapRecord } from '../../fixtures/packets.js';
import { CORPUS, FIXTURES, captureFrames, cleanTemp, needTool, runCli, tempDir, tsharkFields } from '../helpers.js';

afterAll(cleanTemp);

const TOPO = join(FIXTURES, 'topology.json');
const TOPO_RULE_FIELDS = (() => {
  const f = join(tempDir('topo'), 'topology.json');
  writeFileSync(f, JSON.stringify({ ...JSON.parse(readFileSync(TOPO, 'utf8')), wildcarding: 'rule-fields' }));
  return f;
})();
const DEMO = join(FIXTURES, 'demo.pcap');

/** Capture time (epoch seconds) of packet i of a classic pcap (µs). */
function timeOf(capture: string, i: number): number {
  const r = new CaptureReader(capture);
  const b = new PacketBatch(256);
  let seen = 0;
  try {
    while (r.fill(b, 0) > 0) {
      if (i < seen + b.count) return b.tsA[i - seen] + b.tsB[i - seen] / 1e6;
      seen += b.count;
    }
  } finally {
    r.close();
  }
  throw new Error(`${capture} has no packet ${i}`);
}

async function run(capture: string, workers: number, extra: Partial<ReplayOptions> = {}): Promise<{ report: ReplayReport; out: string }> {
  const out = tempDir(`w${workers}`);
  const { report } = await replayAsync({ capture, topology: TOPO, outDir: out, workers, workersJoin: 'start', ...extra });
  return { report, out };
}

/** A file's frames grouped by flow hash: hash → the frames' bytes, in file order. */
function flowsOf(file: string): Map<number, string[]> {
  const m = new Map<number, string[]>();
  for (const f of captureFrames(file)) {
    const h = flowHash(f, new DataView(f.buffer, f.byteOffset, f.byteLength), 0, f.length);
    let l = m.get(h);
    if (!l) m.set(h, (l = []));
    l.push(Buffer.from(f).toString('hex'));
  }
  return m;
}

/** The totals a report must agree on whatever the worker count. */
function totals(r: ReplayReport): unknown {
  return {
    packets: r.packets, drops: r.drops, tunnel: r.tunnel, error: r.error?.code,
    ports: r.ports.map((p) => ({ name: p.name, vpid: p.vpid, rx: p.rx, tx: p.tx, file: p.file !== undefined })),
    // The FPAG's decisions: equal when no flow expired or was evicted (per-datapath tables do that on their own).
    flows: r.flows.expired === 0 && r.flows.evicted === 0 ? { installed: r.flows.installed, upcalls: r.flows.upcalls, active: r.flows.active } : null,
  };
}

/** Same files, same packets per file, same per-flow sequences (by bytes). */
function expectSameOutputs(a: string, b: string, what: string): void {
  const fa = readdirSync(a).sort();
  expect(readdirSync(b).sort(), what).toEqual(fa);
  for (const f of fa) {
    expect(f, what).not.toContain('.partial-');
    const x = flowsOf(join(a, f));
    const y = flowsOf(join(b, f));
    expect([...y.keys()].sort(), `${what}: ${f}: flows`).toEqual([...x.keys()].sort());
    for (const [h, seq] of x) expect(y.get(h), `${what}: ${f}: flow ${h}`).toEqual(seq);
  }
}

/** in = delivered + dropped, drops by reason add up, the workers' shares add up to the input. */
function expectAccounted(r: ReplayReport, what: string): void {
  expect(r.packets.in, what).toBe(r.packets.out + r.packets.dropped);
  expect(Object.values(r.drops).reduce((a, b) => a + (b ?? 0), 0), what).toBe(r.packets.dropped);
  if (r.workers) expect(r.workers.each.reduce((a, w) => a + w.packets, 0), what).toBe(r.packets.in);
}

describe('replay --workers N: the same outputs and totals as one worker', () => {
  it('the demo capture with 1, 2 and 3 workers: same packets per port, same per-flow order, same report totals', async () => {
    const one = await run(DEMO, 1);
    expectAccounted(one.report, 'one');
    for (const n of [2, 3]) {
      const r = await run(DEMO, n);
      expect(r.report.workers!.count).toBe(n);
      expect(r.report.workers!.joinedAt).toEqual(Array(n).fill(0));
      // Every worker switched some of the 671 packets.
      for (const w of r.report.workers!.each) expect(w.packets).toBeGreaterThan(0);
      expectAccounted(r.report, `n=${n}`);
      expect(totals(r.report), `n=${n}`).toEqual(totals(one.report));
      expectSameOutputs(one.out, r.out, `demo n=${n}`);
    }
  });

  it('the outputs of 2 workers open in tshark and hold the same frames as one worker\'s (time, length, addresses)', async (ctx) => {
    needTool(ctx, 'tshark', 'reads the outputs');
    const one = await run(DEMO, 1);
    const two = await run(DEMO, 2);
    const fields = ['frame.time_epoch', 'frame.len', 'eth.src', 'eth.dst', 'ip.src', 'ip.dst', 'udp.srcport', 'tcp.srcport'];
    for (const f of readdirSync(one.out)) {
      const a = tsharkFields(join(one.out, f), fields).map((r) => r.join('|'));
      const b = tsharkFields(join(two.out, f), fields).map((r) => r.join('|'));
      expect(b.length, f).toBeGreaterThan(0);
      expect([...b].sort(), f).toEqual([...a].sort());
      // Per flow (tshark's addresses and ports), the same order.
      const byFlow = (rows: string[]) => {
        const m = new Map<string, string[]>();
        for (const r of rows) {
          const c = r.split('|');
          const k = c.slice(2).join('|');
          m.set(k, [...(m.get(k) ?? []), c[0]]);
        }
        return m;
      };
      expect(byFlow(b), f).toEqual(byFlow(a));
    }
  });

  it('real captures from the tcpdump corpus (pcap and pcapng, tunnels, VLANs, broken ones) with 1, 2 and 3 workers', async () => {
    const files = readdirSync(CORPUS).sort();
    const named = ['afs.pcap', 'pim-packet-assortment.pcap', 'of13_ericsson.pcapng', 'AoE_Linux.pcap', 'bigtcp-ipv4-vxlan-ipv4.pcap', 'bigtcp-ipv6-geneve-ipv6.pcap', 'spb.pcap', '802.1ad_QinQ.pcap'];
    const sample = [...new Set([...named.filter((f) => files.includes(f)), ...files.filter((_, i) => i % 41 === 0)])];
    let compared = 0;
    let packets = 0;
    for (const f of sample) {
      const cap = join(CORPUS, f);
      let one: { report: ReplayReport; out: string };
      try {
        one = await run(cap, 1);
      } catch (e) {
        // Refused with one worker: refused the same way with two.
        expect(e, f).toBeInstanceOf(FpoError);
        await expect(run(cap, 2), f).rejects.toMatchObject({ code: (e as FpoError).code });
        continue;
      }
      for (const n of [2, 3]) {
        const r = await run(cap, n);
        expectAccounted(r.report, `${f} n=${n}`);
        expect(totals(r.report), `${f} n=${n}`).toEqual(totals(one.report));
        expectSameOutputs(one.out, r.out, `${f} n=${n}`);
        rmSync(r.out, { recursive: true, force: true });
      }
      compared++;
      packets += one.report.packets.in;
      rmSync(one.out, { recursive: true, force: true });
    }
    expect(compared).toBeGreaterThan(12);
    expect(packets).toBeGreaterThan(1000);
  }, 240_000);

  it('the default join (a thread takes its flows once it is up) gives the same outputs and totals', async () => {
    // 60 000 frames: long enough that the thread is usually up before the end; either way the result is the same.
    const cap = join(tempDir('big'), 'in.pcap');
    const recs: PcapRecord[] = [];
    for (let i = 0; i < 60_000; i++) {
      const f = i % 97;
      recs.push({ sec: 1_700_000_000 + (i >> 10), usec: i & 1023, data: eth('02:00:00:00:00:0' + (1 + (f % 4)), '02:fe:00:00:00:01', 0x0800, ipv4({ src: `10.9.${f}.1`, dst: '10.0.0.1', proto: 17 }, udp(1000 + f, 2000, new Uint8Array([i >> 16, (i >> 8) & 255, i & 255, 0])))) });
    }
    writePcap(cap, recs);
    const one = await run(cap, 1);
    const out = tempDir('ready');
    const { report } = await replayAsync({ capture: cap, topology: TOPO, outDir: out, workers: 2 });
    expect(report.workers!.joinedAt[0]).toBe(0);
    expectAccounted(report, 'ready');
    expect(totals(report)).toEqual(totals(one.report));
    expectSameOutputs(one.out, out, 'ready');
  });
});

describe('replay --workers N: a classic pcap through the shared chunk ring (read and indexed once)', () => {
  /** `n` UDP frames of 61 flows to vm1..vm4, of lengths 60..1400 bytes (so 1 MiB chunks cut records), each carrying its flow and number. */
  function bigCapture(n: number): { cap: string; recs: PcapRecord[] } {
    const recs: PcapRecord[] = [];
    for (let i = 0; i < n; i++) {
      const f = i % 61;
      const pay = new Uint8Array(8 + ((i * 7919) % 1340));
      pay.set([0xf1, f, (i >> 8) & 255, i & 255]);
      recs.push({ sec: 1_700_000_000 + (i >> 10), usec: (i & 1023) * 7, data: eth(`02:00:00:00:00:0${1 + (f % 4)}`, '02:fe:00:00:00:01', 0x0800, ipv4({ src: `10.3.${f}.1`, dst: '10.0.0.1', proto: 17 }, udp(2000 + f, 53, pay))) });
    }
    const cap = join(tempDir('ring'), 'in.pcap');
    writePcap(cap, recs);
    return { cap, recs };
  }
  /** Index of the first record that does not lie whole in the first `bytes` of the file (a chunk's end cuts it). */
  function firstCut(recs: PcapRecord[], bytes: number): number {
    let o = 24;
    for (let i = 0; i < recs.length; i++) {
      o += 16 + recs[i].data.length;
      if (o > bytes) return i;
    }
    return recs.length;
  }

  it('a capture of several chunks whose ends cut records, 2 and 3 workers: every packet once, each flow in order on every output, the same totals; events at a chunk\'s edge and by time land where one worker puts them', async () => {
    const { cap, recs } = bigCapture(9000); // ~6.5 MB: 6 or 7 chunks of 1 MiB
    const cut = firstCut(recs, 1 << 20);
    expect(cut).toBeGreaterThan(100);
    const events: ControlEvent[] = [
      { atPacket: cut, do: 'migrate', interface: 'vm1-eth0', to: 'vf5' },
      { atPacket: cut - 1, do: 'migrate', interface: 'vm2-eth0', away: true },
      { atTime: recs[firstCut(recs, 3 << 20)].sec + recs[firstCut(recs, 3 << 20)].usec / 1e6, do: 'migrate', interface: 'vm3-eth0', away: true },
    ];
    const one = await run(cap, 1, { events });
    expect(one.report.packets.in).toBe(9000);
    for (const n of [2, 3]) {
      const r = await run(cap, n, { events });
      expectAccounted(r.report, `n=${n}`);
      expect(r.report.packets.in).toBe(9000);
      for (const w of r.report.workers!.each) expect(w.packets, `n=${n}`).toBeGreaterThan(1000);
      expect(totals(r.report), `n=${n}`).toEqual(totals(one.report));
      expect(r.report.events!.map((e) => [e.atPacket, e.result]), `n=${n}`).toEqual(one.report.events!.map((e) => [e.atPacket, e.result]));
      expectSameOutputs(one.out, r.out, `ring n=${n}`);
      // Each flow's packets in order on every output (the number each carries).
      for (const f of readdirSync(r.out)) {
        const last = new Map<number, number>();
        for (const fr of captureFrames(join(r.out, f))) {
          const at = 14 + 20 + 8;
          const flow = fr[at + 1];
          const seq = (fr[at + 2] << 8) | fr[at + 3];
          expect(seq, `${f}: flow ${flow}`).toBeGreaterThan(last.get(flow) ?? -1);
          last.set(flow, seq);
        }
      }
    }
  }, 60_000);

  it('a capture cut short in its fourth chunk: the packets before the cut, and the same error (code, offset, message) as one worker', async () => {
    const { cap, recs } = bigCapture(6000);
    const bytes = readFileSync(cap);
    const k = firstCut(recs, 3 << 20) + 5;
    let o = 24;
    for (let i = 0; i < k; i++) o += 16 + recs[i].data.length;
    writeFileSync(cap, bytes.subarray(0, o + 16 + 3)); // record k: its header and 3 bytes of its data
    const one = await run(cap, 1);
    expect(one.report.error?.code).toBe('FPO_ERR_TRUNCATED_CAPTURE');
    for (const n of [2, 3]) {
      const r = await run(cap, n);
      expectAccounted(r.report, `n=${n}`);
      expect(r.report.packets.in).toBe(k);
      expect(r.report.error, `n=${n}`).toEqual(one.report.error);
      expect(totals(r.report), `n=${n}`).toEqual(totals(one.report));
      expectSameOutputs(one.out, r.out, `cut n=${n}`);
    }
  }, 60_000);

  it('pcapng input (every worker reads it: the ring takes classic pcap only): the same outputs and totals as one worker', async (ctx) => {
    needTool(ctx, 'editcap', 'makes the pcapng');
    const { cap } = bigCapture(4000);
    const ng = cap.replace(/\.pcap$/, '.pcapng');
    execFileSync('editcap', ['-F', 'pcapng', cap, ng]);
    const one = await run(ng, 1);
    expect(one.report.format).toBe('pcapng');
    const two = await run(ng, 2);
    expectAccounted(two.report, 'pcapng');
    expect(totals(two.report)).toEqual(totals(one.report));
    expectSameOutputs(one.out, two.out, 'pcapng');
  }, 60_000);

  it('big-endian pcap (full fills from the ring, not lazy ones): the same outputs and totals as one worker', async () => {
    const { cap } = bigCapture(3000);
    const b = readFileSync(cap);
    const be = Buffer.from(b);
    for (const w of [0, 16, 20]) be.writeUInt32BE(b.readUInt32LE(w), w);
    be.writeUInt16BE(2, 4); be.writeUInt16BE(4, 6);
    for (let o = 24; o < be.length; o += 16 + b.readUInt32LE(o + 8)) for (let w = 0; w < 16; w += 4) be.writeUInt32BE(b.readUInt32LE(o + w), o + w);
    const bcap = cap.replace(/\.pcap$/, '-be.pcap');
    writeFileSync(bcap, be);
    const one = await run(bcap, 1);
    expect(one.report.packets.in).toBe(3000);
    const two = await run(bcap, 2);
    expectAccounted(two.report, 'be');
    expect(totals(two.report)).toEqual(totals(one.report));
    expectSameOutputs(one.out, two.out, 'be');
  }, 60_000);
});

describe('replay --workers N: a thread that joins mid-stream', () => {
  /** A UDP frame of flow f (10.4.f.1 → port 9) to vm `vm`, numbered i. */
  const frame = (f: number, vm: number, i: number) => eth(`02:00:00:00:00:0${vm}`, '02:fe:00:00:00:01', 0x0800, ipv4({ src: `10.4.${f}.1`, dst: `10.0.0.${vm}`, proto: 17 }, udp(3000 + f, 9, new Uint8Array([0xf1, f, i >> 8, i & 255]))));
  const workerOfFrame = (b: Uint8Array) => workerOf(flowHash(b, new DataView(b.buffer, b.byteOffset, b.byteLength), 0, b.length), 2);
  /** A flow number whose frames to vm `vm` go to worker w (of 2): the hash covers the destination too. */
  const flowFor = (w: number, vm: number) => { for (let f = 1; ; f++) if (workerOfFrame(frame(f, vm, 0)) === w) return f; };

  it('takes over its flows at the join: what the main thread switched before is in the file first (per-flow order), and it gets the mappings of earlier events', async () => {
    const a = flowFor(1, 1); // the thread's, to vm1 (vf1)
    const b = flowFor(0, 2); // the main thread's, to vm2 (vf2)
    const recs: PcapRecord[] = [];
    let t = 0;
    const put = (data: Uint8Array) => recs.push({ sec: 1_700_000_000, usec: t++, data });
    for (let i = 0; i < 50; i++) { put(frame(a, 1, i)); put(frame(b, 2, i)); }
    // After the join at 100: a few more of the thread's flow, then much of the main thread's (so the thread ends first).
    for (let i = 50; i < 55; i++) put(frame(a, 1, i));
    for (let i = 50; i < 30_050; i++) put(frame(b, 2, i));
    const cap = join(tempDir('join'), 'in.pcap');
    writePcap(cap, recs);
    // vm1 moves to vf5 at packet 20, before the join: the thread must know it.
    const events: ControlEvent[] = [{ atPacket: 20, do: 'migrate', interface: 'vm1-eth0', to: 'vf5' }];
    const one = await run(cap, 1, { events, batchSize: 50 });
    const two = await run(cap, 2, { events, batchSize: 50, workersJoin: 100 });
    expect(two.report.workers!.joinedAt).toEqual([0, 100]);
    expect(two.report.workers!.each[1].packets).toBe(5);
    expectAccounted(two.report, 'join');
    expect(totals(two.report)).toEqual(totals(one.report));
    expectSameOutputs(one.out, two.out, 'join');
    // vf5 holds flow a from packet 20 on: 40 of the main thread's, then the thread's 5, in order.
    const seqs = captureFrames(join(two.out, 'vf5.pcap')).map((f) => (f[f.length - 2] << 8) | f[f.length - 1]);
    expect(seqs).toEqual(Array.from({ length: 45 }, (_, i) => i + 10));
  });
});

describe('replay --workers N: control events reach every worker at their packet', () => {
  const cases: [string, ControlEvent[]][] = [
    ['migrate at packet 300', [{ atPacket: 300, do: 'migrate', interface: 'vm1-eth0', to: 'vf5' }]],
    ['migrate with a new VPID at packet 250, then away at 500', [{ atPacket: 250, do: 'migrate', interface: 'vm2-eth0', to: 'vf5', newVpid: 77 }, { atPacket: 500, do: 'migrate', interface: 'vm3-eth0', away: true }]],
    ['set-mapping at 100, add-flow at 200, del-flow at 400', [{ atPacket: 100, do: 'set-mapping', vpid: 1, ppid: 15 }, { atPacket: 200, do: 'add-flow', flow: 'priority=200,udp,actions=drop' }, { atPacket: 400, do: 'del-flow', flow: 'priority=200,udp' }]],
    ['an event at packet 0 and one past the end', [{ atPacket: 0, do: 'migrate', interface: 'vm1-eth0', to: 'vf5' }, { atPacket: 100_000, do: 'migrate', interface: 'vm1-eth0', to: 'vf1' }]],
    ['a migrate at the capture time of packet 333 (atTime)', [{ atTime: timeOf(DEMO, 333), do: 'migrate', interface: 'vm2-eth0', to: 'vf5' }]],
  ];
  for (const [name, events] of cases) {
    it(`${name}: the same split of the traffic as one worker, for 2 and 3 workers`, async () => {
      const one = await run(DEMO, 1, { events });
      for (const n of [2, 3]) {
        const r = await run(DEMO, n, { events });
        expectAccounted(r.report, `n=${n}`);
        expect(totals(r.report), `n=${n}`).toEqual(totals(one.report));
        expect(r.report.events!.map((e) => [e.atPacket, e.result]), `n=${n}`).toEqual(one.report.events!.map((e) => [e.atPacket, e.result]));
        expectSameOutputs(one.out, r.out, `${name} n=${n}`);
      }
    });
  }

  it('a migrate at packet N: before N the interface\'s packets leave on its old port, from N on on the new one, in every worker', async () => {
    const events: ControlEvent[] = [{ atPacket: 300, do: 'migrate', interface: 'vm1-eth0', to: 'vf5' }];
    const one = await run(DEMO, 1, { events });
    const two = await run(DEMO, 2, { events });
    // vf5 carries vm1's traffic only after the migration: the same packets with one or two workers.
    const vf5 = two.report.ports.find((p) => p.name === 'vf5')!;
    expect(vf5.tx.packets).toBeGreaterThan(0);
    expect(vf5.tx).toEqual(one.report.ports.find((p) => p.name === 'vf5')!.tx);
    expect(captureFrames(join(two.out, 'vf5.pcap')).length).toBe(vf5.tx.packets);
  });
});

describe('replay --workers N: interrupted, and through several hosts', () => {
  it('a signal stops every worker after its batch: the report says so, in = out + dropped, the outputs are whole captures', async (ctx) => {
    needTool(ctx, 'tshark', 'reads the outputs');
    const out = tempDir('intr');
    const { report } = await replayAsync({ capture: DEMO, topology: TOPO, outDir: out, workers: 2, workersJoin: 'start', batchSize: 16, interrupt: { signal: 'SIGINT' } });
    expect(report.interrupted).toBe('SIGINT');
    expectAccounted(report, 'interrupted');
    expect(report.packets.in).toBeLessThan(671);
    for (const f of readdirSync(out)) {
      expect(f).not.toContain('.partial-');
      expect(tsharkFields(join(out, f), ['frame.len']).length, f).toBe(report.ports.find((p) => `${p.name}.pcap` === f)!.tx.packets);
    }
  });

  it('two hosts joined by a tunnel (replayHosts) with 2 workers: each host\'s totals and outputs as with one', async () => {
    const hosts = loadHosts(join(FIXTURES, 'two-hosts.json'));
    const cap = join(FIXTURES, 'two-hosts.pcap');
    const runHosts = async (workers: number) => {
      const out = tempDir(`hosts${workers}`);
      return { out, r: await replayHostsAsync({ capture: cap, hosts: loadHosts(join(FIXTURES, 'two-hosts.json')), outDir: out, workers, workersJoin: 'start' }) };
    };
    const one = await runHosts(1);
    const two = await runHosts(2);
    expect(two.r.hosts.length).toBe(hosts.length);
    two.r.hosts.forEach((h, i) => {
      expectAccounted(h, h.host);
      expect(totals(h), h.host).toEqual(totals(one.r.hosts[i]));
      expectSameOutputs(join(one.out, h.host), join(two.out, h.host), h.host);
    });
  });
});

describe('replay --workers N: failures', () => {
  it('a worker thread that throws fails the replay with FPO_ERR_WORKER naming the worker, and leaves no output or temp file', async () => {
    const out = tempDir('fail');
    const err = await replayAsync({ capture: DEMO, topology: TOPO, outDir: out, workers: 3, workersJoin: 'start', failWorker: { worker: 2, atPacket: 400 } }).then(() => null, (e) => e);
    expect(err).toBeInstanceOf(FpoError);
    expect(err.code).toBe('FPO_ERR_WORKER');
    expect(err.message).toMatch(/replay worker 2 \(a thread\) of 3 failed: fault injected for a test at packet 400/);
    expect(readdirSync(out)).toEqual([]);
  });

  it('a worker thread that stalls (finishes no batch) fails the replay with FPO_ERR_WORKER after the stall bound, no hang, nothing kept', async () => {
    const out = tempDir('stall');
    const err = await replayAsync({ capture: DEMO, topology: TOPO, outDir: out, workers: 2, workersJoin: 'start', failWorker: { worker: 1, atPacket: 100, stall: true }, workerStallMs: 300 }).then(() => null, (e) => e);
    expect(err).toBeInstanceOf(FpoError);
    expect(err.code).toBe('FPO_ERR_WORKER');
    expect(err.message).toMatch(/replay worker 1 \(a thread\) of 2 failed: made no progress for 300 ms \(stalled\)/);
    expect(readdirSync(out)).toEqual([]);
  });

  it('workers out of range and --fpag thread with workers are refused as usage errors', async () => {
    const out = tempDir('usage');
    await expect(replayAsync({ capture: DEMO, topology: TOPO, outDir: out, workers: 0 })).rejects.toMatchObject({ code: 'FPO_ERR_USAGE' });
    await expect(replayAsync({ capture: DEMO, topology: TOPO, outDir: out, workers: 2, fpag: 'thread' })).rejects.toMatchObject({ code: 'FPO_ERR_USAGE' });
    await expect(replayAsync({ capture: DEMO, topology: TOPO, outDir: out, workers: 2, fpag: 'async' })).rejects.toMatchObject({ code: 'FPO_ERR_USAGE' });
    const r = runCli(['replay', DEMO, '-t', TOPO, '-o', out, '--workers', '65']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/^fpo: --workers: expected an integer in 1\.\.64, got "65"/);
  });

  it('the synchronous replay() with workers gives the same report (the main thread serves the threads between its batches)', () => {
    const out = tempDir('sync');
    const { report } = replay({ capture: DEMO, topology: TOPO, outDir: out, workers: 2, workersJoin: 'start' });
    expectAccounted(report, 'sync');
    expect(report.packets.in).toBe(671);
  });
});

describe('fpo replay --workers (the command line)', () => {
  it('prints the same totals with --workers 2 as with 1, and writes the same captures', () => {
    const outs = [1, 2].map((n) => {
      const out = tempDir(`cli${n}`);
      const r = runCli(['replay', DEMO, '-t', TOPO, '-o', out, '--workers', String(n), '--json']);
      expect(r.status, r.stderr).toBe(0);
      return { out, report: JSON.parse(r.stdout) as ReplayReport };
    });
    expect(totals(outs[1].report)).toEqual(totals(outs[0].report));
    expect(outs[1].report.workers!.count).toBe(2);
    expectSameOutputs(outs[0].out, outs[1].out, 'cli');
  });
});

// Random small captures: flows of several kinds, interleaved at random; each
// packet carries its flow's number and its place in the flow.
const FLOW_KINDS = ['udp4', 'tcp4', 'udp6', 'arp', 'frag4'] as const;
const DSTS = ['02:00:00:00:00:01', '02:00:00:00:00:02', '02:00:00:00:00:03', 'ff:ff:ff:ff:ff:ff', '02:00:00:00:00:09'];

function frameOf(kind: (typeof FLOW_KINDS)[number], flow: number, seq: number, dst: string): Uint8Array {
  const tag = new Uint8Array([0xf1, flow, seq >> 8, seq & 255]);
  const src = '02:fe:00:00:00:01';
  switch (kind) {
    case 'udp4': return eth(dst, src, 0x0800, ipv4({ src: `10.7.${flow}.1`, dst: '10.0.0.2', proto: 17 }, udp(4000 + flow, 53, tag)));
    case 'tcp4': return eth(dst, src, 0x0800, ipv4({ src: `10.8.${flow}.1`, dst: '10.0.0.1', proto: 6 }, tcp(5000 + flow, 80, tag)));
    case 'udp6': return eth(dst, src, 0x86dd, ipv6({ src: `fd00::${flow}`, dst: 'fd00::2', nh: 17 }, udp(6000 + flow, 53, tag)));
    case 'arp': return eth(dst, src, 0x0806, new Uint8Array([...arp(1, src, `10.6.${flow}.1`, '00:00:00:00:00:00', '10.0.0.1'), ...tag]));
    case 'frag4': return eth(dst, src, 0x0800, ipv4({ src: `10.5.${flow}.1`, dst: '10.0.0.3', proto: 17, flags: 1, id: flow }, udp(7000 + flow, 53, tag)));
  }
}

describe('replay --workers N: random captures (property)', () => {
  it('for N in 1..4: every flow\'s packets in order on every output, the same counts as one worker, in = out + dropped', async () => {
    const arb = fc.record({
      flows: fc.array(fc.record({ kind: fc.constantFrom(...FLOW_KINDS), dst: fc.constantFrom(...DSTS), len: fc.integer({ min: 1, max: 40 }) }), { minLength: 1, maxLength: 12 }),
      order: fc.array(fc.nat(), { minLength: 0, maxLength: 400 }),
      workers: fc.integer({ min: 2, max: 4 }),
    });
    await fc.assert(fc.asyncProperty(arb, async ({ flows, order, workers }) => {
      // Interleave: each draw sends the next packet of a flow that has packets left.
      const next = flows.map(() => 0);
      const recs: PcapRecord[] = [];
      let t = 0;
      for (const o of [...order, ...Array(500).fill(0)]) {
        const live = flows.map((f, i) => (next[i] < f.len ? i : -1)).filter((i) => i >= 0);
        if (live.length === 0) break;
        const i = live[o % live.length];
        recs.push({ sec: 1_700_000_000, usec: t++, data: frameOf(flows[i].kind, i, next[i]++, flows[i].dst) });
      }
      const cap = join(tempDir('prop'), 'in.pcap');
      writePcap(cap, recs);
      // Megaflows as wide as a rule's fields (wildcarding "rule-fields"): each packet class has its own, so the
      // flow counts cannot depend on which worker's packet came first (under "proof" a flow may cover another's packets).
      const one = await run(cap, 1, { topology: TOPO_RULE_FIELDS });
      const many = await run(cap, workers, { topology: TOPO_RULE_FIELDS });
      expectAccounted(many.report, 'many');
      expect(totals(many.report)).toEqual(totals(one.report));
      for (const f of readdirSync(many.out)) {
        // The tag's place in each frame: the last 4 bytes before any padding are not fixed, so search for it.
        const last = new Map<number, number>();
        for (const fr of captureFrames(join(many.out, f))) {
          let at = -1;
          for (let j = fr.length - 4; j >= 14; j--) if (fr[j] === 0xf1) { at = j; break; }
          expect(at, f).toBeGreaterThan(0);
          const flow = fr[at + 1];
          const seq = (fr[at + 2] << 8) | fr[at + 3];
          expect(seq, `${f}: flow ${flow}`).toBeGreaterThan(last.get(flow) ?? -1);
          last.set(flow, seq);
        }
      }
      expectSameOutputs(one.out, many.out, 'property');
      rmSync(one.out, { recursive: true, force: true });
      rmSync(many.out, { recursive: true, force: true });
    }), { numRuns: 25 });
  }, 240_000);
});

