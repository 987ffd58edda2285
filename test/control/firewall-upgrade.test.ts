import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadEvents } from '../../control/events.js';
import { replay } from '../../control/replay.js';
import { writePcap } from '../../fixtures/packets.js';
import fc from 'fast-check';
import { FIXTURES, captureFrames, cleanTemp, tempDir } from '../helpers.js';
import { TOPO, killAll, req, startService } from './run-service.js';
import { Datapath } from '../../datapath/datapath.js';
import { C, C_MAC, S, S_MAC, fwConns, seg, twoVms } from '../datapath/conntrack/switch.js';
import { eth, ipv4, udp } from '../../fixtures/packets.js';

// The per-port firewall's upgrade (control/firewall-upgrade.ts) on a client
// and a web server VM, both firewalled, frames through the datapath.

afterAll(() => { killAll(); cleanTemp(); });

const CLIENT_FW = { firewall: [{ direction: 'out', action: 'allow' }] };
const WEB_SERVER = { firewall: [{ direction: 'in', action: 'allow', proto: 'tcp', ports: 80 }, { direction: 'in', action: 'allow', proto: 'udp' }] };

function accounted(dp: Datapath): Record<string, number> {
  const s = dp.stats();
  expect(s.packetsIn).toBe(s.delivered + s.dropped);
  return s.drops as Record<string, number>;
}

/** The switch with a TCP connection client → server:80 open (handshake and a segment each way). */
function withConnection(opts: Parameters<typeof twoVms>[3] = {}) {
  const sw = twoVms([], CLIENT_FW, WEB_SERVER, opts);
  const { send } = sw;
  expect(send([[1, seg('c', 100, 0, 'S')]]).toServer).toHaveLength(1);
  expect(send([[2, seg('s', 500, 101, 'SA')]]).toClient).toHaveLength(1);
  const r = send([[1, seg('c', 101, 501, 'PA', 10)], [2, seg('s', 501, 111, 'PA', 20)]]);
  expect([r.toServer.length, r.toClient.length]).toEqual([1, 1]);
  return { ...sw, seq: { c: 111, s: 521 } };
}

const CLIENT_ZONE = 1;
const SERVER_ZONE = 2;

describe('firewall upgrade, port by port', () => {
  it('v1 → v2 moves each port\'s connections (saved, transformed, restored): the open connection goes on both ways; back to v1 the same', () => {
    const { dp, fpag, send, seq } = withConnection();
    expect([dp.firewallVersionOf(CLIENT_ZONE), dp.firewallVersionOf(SERVER_ZONE)]).toEqual(['v1', 'v1']);
    const up = fpag.firewallUpgrade;
    up.plan('v2');
    const st = up.runSync();
    expect(st.state).toBe('done');
    expect(st.ports.map((p) => [p.interface, p.from, p.to, p.state, p.connections])).toEqual([['client', 'v1', 'v2', 'done', 1], ['server', 'v1', 'v2', 'done', 1]]);
    expect(st.ports.every((p) => typeof p.pauseMs === 'number' && p.pauseMs >= 0)).toBe(true);
    expect([dp.firewallVersionOf(CLIENT_ZONE), dp.firewallVersionOf(SERVER_ZONE)]).toEqual(['v2', 'v2']);
    expect(fwConns(dp, 'v1')).toHaveLength(0); // the old version let go of the ports' tables
    expect(fwConns(dp, 'v2')).toHaveLength(2);
    // The connection goes on: its next segments pass both ways (strict TCP: a lost state would make them invalid).
    let r = send([[1, seg('c', seq.c, seq.s, 'PA', 10)], [2, seg('s', seq.s, seq.c + 10, 'PA', 20)]]);
    expect([r.toServer.length, r.toClient.length]).toEqual([1, 1]);
    // A new connection to 22 is still refused, to 80 allowed: the same rules.
    expect(send([[1, seg('c', 7000, 0, 'S', 0, 22)]]).toServer).toHaveLength(0);
    // And back (a downgrade is the same way round).
    up.plan('v1');
    expect(up.runSync().ports.map((p) => [p.from, p.to, p.state])).toEqual([['v2', 'v1', 'done'], ['v2', 'v1', 'done']]);
    r = send([[1, seg('c', seq.c + 10, seq.s + 20, 'PA', 10)], [2, seg('s', seq.s + 20, seq.c + 20, 'PA', 20)]]);
    expect([r.toServer.length, r.toClient.length]).toEqual([1, 1]);
    expect(accounted(dp)).toEqual({ firewall: 1 });
  });

  it('a plain restart (the new version without the state) drops the open connection: the state hand-over is what keeps it', () => {
    const { dp, send, seq } = withConnection();
    for (const zone of [CLIENT_ZONE, SERVER_ZONE]) {
      dp.firewall('v1').forget(zone);
      dp.firewall('v1').release(zone);
      dp.setFirewallVersion(zone, 'v2');
    }
    const r = send([[1, seg('c', seq.c, seq.s, 'PA', 10)], [2, seg('s', seq.s, seq.c + 10, 'PA', 20)]]);
    expect([r.toServer.length, r.toClient.length]).toEqual([0, 0]);
    expect(accounted(dp)).toEqual({ firewall: 2 });
  });

  it('a restore that fails rolls that port back with its connections and stops; resume finishes the upgrade', () => {
    const { dp, fpag, send, seq } = withConnection();
    const up = fpag.firewallUpgrade;
    up.failpoints.restore.add('server');
    up.plan('v2');
    let st = up.runSync();
    expect(st.state).toBe('stopped');
    expect(st.ports.map((p) => [p.interface, p.state])).toEqual([['client', 'done'], ['server', 'rolled-back']]);
    expect(st.ports[1].error).toMatch(/failpoint firewall-restore=server/);
    expect(dp.firewallVersionOf(SERVER_ZONE)).toBe('v1');
    expect(dp.firewall('v1').connections(SERVER_ZONE, dp.now)).toBe(1); // its state intact
    expect(dp.firewall('v2').connections(SERVER_ZONE, dp.now)).toBe(0);
    let r = send([[1, seg('c', seq.c, seq.s, 'PA', 10)], [2, seg('s', seq.s, seq.c + 10, 'PA', 20)]]);
    expect([r.toServer.length, r.toClient.length]).toEqual([1, 1]);
    up.failpoints.restore.clear();
    up.plan('v2'); // a stopped upgrade may be planned again
    st = up.runSync();
    expect(st.ports.map((p) => p.interface)).toEqual(['server']); // the client is on v2 already
    expect(st.state).toBe('done');
    r = send([[1, seg('c', seq.c + 10, seq.s + 20, 'PA', 10)], [2, seg('s', seq.s + 20, seq.c + 20, 'PA', 20)]]);
    expect([r.toServer.length, r.toClient.length]).toEqual([1, 1]);
    // resume: after a stop, the rolled-back port first.
    up.failpoints.restore.add('client');
    up.plan('v1');
    expect(up.runSync().state).toBe('stopped');
    expect(() => up.plan('nope')).toThrow(/this build has v1, v2/);
    up.failpoints.restore.clear();
    expect(up.resume().ports.find((p) => p.interface === 'client')!.state).toBe('pending');
    expect(up.runSync().state).toBe('done');
    expect([dp.firewallVersionOf(CLIENT_ZONE), dp.firewallVersionOf(SERVER_ZONE)]).toEqual(['v1', 'v1']);
    expect(accounted(dp)).toEqual({});
  });

  it('live: the moving port\'s packets wait in the hold queue while other traffic forwards, and go on in order through the new version; a full queue drops with its reason', async () => {
    const { dp, fpag, send, seq } = withConnection({ dp: { firewallHoldPackets: 3 } });
    const up = fpag.firewallUpgrade;
    up.plan('v2', ['server']);
    const done = up.run(); // holds the server's port at once, then a step per turn of the event loop
    expect(dp.firewallHold[SERVER_ZONE]).toBe(1);
    // ARP (not firewalled) is not held.
    expect(send([[1, eth('ff:ff:ff:ff:ff:ff', C_MAC, 0x0806, new Uint8Array(28))]]).toServer).toHaveLength(1);
    // Four segments to the server while it moves: three held, one over the queue's room.
    const segs = [0, 1, 2, 3].map((k) => seg('c', seq.c + k * 10, seq.s, 'PA', 10));
    const r = send(segs.map((f) => [1, f] as [number, Uint8Array]));
    expect(r.toServer).toHaveLength(0);
    expect(dp.holdStats).toMatchObject({ now: 3, held: 3, overflow: 1 });
    const st = await done;
    expect(st.state).toBe('done');
    expect(st.ports[0].held).toBe(3);
    expect(r.toServer.map((f) => f.slice())).toEqual(segs.slice(0, 3)); // released in order, through v2 (the connection moved first)
    expect(dp.holdStats).toMatchObject({ now: 0, released: 3 });
    expect(accounted(dp)).toEqual({ fwHoldOverflow: 1 });
    // The dropped one's bytes come again (as TCP would retransmit) and pass.
    expect(send([[1, segs[3]]]).toServer).toHaveLength(1);
  });

  it('v2 keeps each connection\'s rule generation: a connection committed under older rules is checked by the rules again (allowed: kept, under the new generation)', () => {
    const { dp, send, seq } = withConnection();
    for (const zone of [CLIENT_ZONE, SERVER_ZONE]) {
      const st = dp.firewall('v1').saveState(zone, dp.now);
      dp.firewall('v2').restoreState(zone, st, 'v1', dp.now);
      dp.firewall('v1').release(zone);
      dp.setFirewallVersion(zone, 'v2');
    }
    const v2 = dp.firewall('v2') as import('../../datapath/services/firewall/v2/firewall.js').FirewallV2;
    dp.firewallRuleGen[SERVER_ZONE] = 7; // the server's rules changed
    const r = send([[1, seg('c', seq.c, seq.s, 'PA', 10)]]);
    expect(r.toServer).toHaveLength(1); // tcp 80 still allowed: checked again and kept
    expect(v2.revalidated).toBe(1);
    const id = v2.table(SERVER_ZONE)!.list(dp.now, SERVER_ZONE)[0].id;
    expect(v2.ruleGenerationOf(SERVER_ZONE, id)).toBe(7);
    expect(send([[1, seg('c', seq.c + 10, seq.s, 'PA', 10)]]).toServer).toHaveLength(1);
    expect(v2.revalidated).toBe(1); // once: the connection is under generation 7 now
    // UDP from the client to the server: allowed in, it becomes a stream after two packets each way (v2's timeout class).
    const u = (from: 'c' | 's') => from === 'c'
      ? eth(S_MAC, C_MAC, 0x0800, ipv4({ src: C, dst: S, proto: 17 }, udp(5000, 53, new Uint8Array(8))))
      : eth(C_MAC, S_MAC, 0x0800, ipv4({ src: S, dst: C, proto: 17 }, udp(53, 5000, new Uint8Array(8))));
    for (let k = 0; k < 3; k++) send([[1, u('c')], [2, u('s')]]);
    expect(v2.table(SERVER_ZONE)!.list(dp.now, SERVER_ZONE).map((c) => c.state)).toContain('STREAM');
    expect(fwConns(dp, 'v1').map((c) => c.state)).not.toContain('STREAM');
  });
});

/** 12 TCP connections client → server:80 through both VMs' firewalls, interleaved, each: handshake, 20 segments each way, close; and its topology. */
function fwCapture(dir: string): { cap: string; topo: string; recs: { sec: number; usec: number; data: Uint8Array }[] } {
    const cap = join(dir, 'in.pcap');
    // 12 TCP connections client → server:80, interleaved, each: handshake, 20 segments each way, close.
    const recs: { sec: number; usec: number; data: Uint8Array }[] = [];
    const convs: Uint8Array[][] = [];
    for (let k = 0; k < 12; k++) {
      const out: Uint8Array[] = [];
      let cs = 1000 + k * 7919;
      let ss = 900000 + k * 104729;
      const port = 41000 + k;
      const c = (flags: string, len: number) => { out.push(portSeg('c', port, cs, ss, flags, len)); cs += len + (/[SF]/.test(flags) ? 1 : 0); };
      const s = (flags: string, len: number) => { out.push(portSeg('s', port, ss, cs, flags, len)); ss += len + (/[SF]/.test(flags) ? 1 : 0); };
      c('S', 0); s('SA', 0); c('A', 0);
      for (let j = 0; j < 20; j++) { c('PA', 30 + j); s('PA', 40 + j); }
      c('FA', 0); s('FA', 0); c('A', 0);
      convs.push(out);
    }
    for (let j = 0, more = true; more; j++) {
      more = false;
      for (const cv of convs) if (j < cv.length) { recs.push({ sec: 100, usec: recs.length, data: cv[j] }); more = true; }
    }
    writePcap(cap, recs);
    const topo = join(dir, 'topo.json');
    writeFileSync(topo, JSON.stringify({
      ports: [{ name: 'p1', ppid: 1 }, { name: 'p2', ppid: 2 }], segments: [{ name: 'a' }],
      nodes: [
        { name: 'client', interfaces: [{ name: 'client', mac: C_MAC, ip: C, segment: 'a', port: 'p1', ...CLIENT_FW }] },
        { name: 'server', interfaces: [{ name: 'server', mac: S_MAC, ip: S, segment: 'a', port: 'p2', ...WEB_SERVER }] },
      ],
      replay: { inputPort: 'by-source-mac' },
    }));
    return { cap, topo, recs };
}

describe('firewall upgrade in a replay (--events)', () => {
  it('a capture replayed with an upgrade (and a downgrade) in the middle gives byte-identical outputs to one without; a flush of the state there (a restart) does not', () => {
    const dir = tempDir('fwup');
    const { cap, topo, recs } = fwCapture(dir);
    const run = (name: string, events: object[]) => {
      const outDir = join(dir, name);
      const ev = join(dir, `${name}.json`);
      writeFileSync(ev, JSON.stringify(events));
      const res = replay({ capture: cap, topology: topo, outDir, events: events.length ? loadEvents(ev) : undefined, batchSize: 4 });
      // (Batches of 4: a connection's next packet is 12 records on, never in the batch of the one it answers —
      // a SYN-ACK in its SYN's batch meets the firewall before the SYN's commit, as in any batched switch.)
      expect(res.report.packets.in).toBe(res.report.packets.out + res.report.packets.dropped);
      return { res, files: Object.fromEntries(['p1.pcap', 'p2.pcap'].map((f) => [f, readFileSync(join(outDir, f))])) };
    };
    const plain = run('plain', []);
    expect(plain.res.report.packets.dropped).toBe(0);
    const mid = Math.floor(recs.length / 2);
    const upgraded = run('upgraded', [{ atPacket: mid, do: 'firewall-upgrade', to: 'v2' }, { atPacket: mid + 200, do: 'firewall-upgrade', to: 'v1', ports: ['server'] }]);
    for (const f of ['p1.pcap', 'p2.pcap']) expect(upgraded.files[f].equals(plain.files[f]), f).toBe(true);
    expect(upgraded.res.report.packets).toEqual(plain.res.report.packets);
    const applied = upgraded.res.report.events!.map((e) => (e.result as { state: string; ports: { interface: string; state: string; connections: number }[] }));
    expect(applied.map((a) => a.state)).toEqual(['done', 'done']);
    expect(applied[0].ports.map((p) => [p.interface, p.state])).toEqual([['client', 'done'], ['server', 'done']]);
    expect(applied[0].ports.every((p) => p.connections === 12)).toBe(true); // every connection open at the middle, in each zone
    // The same point with a restart (the new version without the state): the open connections die there.
    const restarted = run('restarted', [{ atPacket: mid, do: 'firewall-upgrade', to: 'v2', restart: true }]);
    const after = recs.length - mid;
    expect(restarted.res.report.drops).toEqual({ firewall: after });
    expect(restarted.files['p2.pcap'].equals(plain.files['p2.pcap'])).toBe(false);
  });
});

/** portSeg: seg() with a client port of its own. */
function portSeg(from: 'c' | 's', port: number, seqNo: number, ack: number, flags: string, len: number): Uint8Array {
  const f = seg(from, seqNo, ack, flags, len);
  const l4 = 14 + 20;
  new DataView(f.buffer, f.byteOffset).setUint16(from === 'c' ? l4 : l4 + 2, port);
  // The TCP checksum is not checked here (conntrack and the firewall do not), so it is left as seg made it.
  return f;
}

describe('fpo ctl firewall over the socket', () => {
  it('fuzz: random firewall requests are carried out whole or refused naming the field, a refused one changing nothing; the switch forwards on', async () => {
    const dir = tempDir('fwsock');
    const topo = join(dir, 'topo.json');
    const t = JSON.parse(readFileSync(TOPO, 'utf8'));
    for (const n of t.nodes) for (const i of n.interfaces) if (i.name === 'vm1-eth0' || i.name === 'vm2-eth0') i.firewall = [{ direction: 'in', action: 'allow', proto: 'tcp', ports: 80 }, { direction: 'out', action: 'allow' }];
    writeFileSync(topo, JSON.stringify(t));
    const s = await startService({ topology: topo, out: dir });
    try {
      const status = async () => (await req(s.socket, 'firewall', { action: 'status' })).result;
      const versions = async () => (await status()).ports.map((p: { interface: string; version: string }) => `${p.interface}:${p.version}`);
      expect(await versions()).toEqual(['vm1-eth0:v1', 'vm2-eth0:v1']);
      const arb = fc.record({
        action: fc.constantFrom('upgrade', 'status', 'nope', 7, undefined),
        to: fc.constantFrom('v1', 'v2', 'v3', '', 5, null, undefined, 'x'.repeat(100)),
        ports: fc.constantFrom(undefined, ['vm1-eth0'], ['vm2-eth0', 'vm1-eth0'], ['vm3-eth0'], [], ['vm1-eth0', 'vm1-eth0'], 'vm1-eth0', [1]),
        maxPauseMs: fc.constantFrom(undefined, 50, 0, -1, 1e9, 'x'),
        resume: fc.constantFrom(undefined, true, false, 'yes'),
        restart: fc.constantFrom(undefined, false, 'no'),
      }, { requiredKeys: [] });
      for (const a of fc.sample(arb, { numRuns: 60, seed: 20 })) {
        const args = Object.fromEntries(Object.entries(a).filter(([, v]) => v !== undefined));
        const before = await versions();
        const r = await req(s.socket, 'firewall', args);
        if (r.error !== undefined) {
          expect(r.error.code, JSON.stringify(args)).toBe('FPO_ERR_USAGE');
          expect(await versions(), JSON.stringify(args)).toEqual(before);
        } else if (args.action === 'upgrade') {
          const up = r.result.upgrade;
          expect(['done', 'stopped']).toContain(up.state);
          const want = args.to as string;
          for (const p of up.ports) expect([p.interface, p.to, p.state]).toEqual([p.interface, want, 'done']);
        }
      }
      // Still forwarding, every packet accounted.
      s.ctl('inject', join(FIXTURES, 'demo.pcap'));
      const st = JSON.parse(s.ctl('--json', 'stats').stdout);
      expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
      const text = s.ctl('firewall', 'status').stdout;
      expect(text).toMatch(/interface\s+zone\s+version\s+connections\s+holding/);
      expect(text).toMatch(/hold queue: 0 now/);
    } finally {
      await s.stop();
    }
  }, 120_000);
});

describe('firewall upgrade: the pause limit', () => {
  it('a pause over --max-pause rolls the port back with its connection (taken back, transformed down) and stops', () => {
    const { dp, fpag, send, seq } = withConnection();
    const up = fpag.firewallUpgrade;
    up.plan('v2', ['server'], 1e-6);
    const st = up.runSync();
    expect(st.state).toBe('stopped');
    expect(st.ports[0].error).toMatch(/over the limit of 0\.000001 ms/);
    expect(dp.firewallVersionOf(SERVER_ZONE)).toBe('v1');
    expect(dp.firewall('v1').connections(SERVER_ZONE, dp.now)).toBe(1);
    expect(dp.firewall('v2').table(SERVER_ZONE)).toBeUndefined();
    const r = send([[1, seg('c', seq.c, seq.s, 'PA', 10)], [2, seg('s', seq.s, seq.c + 10, 'PA', 20)]]);
    expect([r.toServer.length, r.toClient.length]).toEqual([1, 1]);
  });
});

describe('firewall upgrade: an unexpected error', () => {
  it('a port that throws while the held packets are released ends that port rolled back and the upgrade stopped, its hold released; the next plan runs', async () => {
    const { dp, fpag, send, seq } = withConnection();
    const up = fpag.firewallUpgrade;
    // The server's port throws once (a broken port), then forwards again.
    let left = 1;
    const frames: Uint8Array[] = [];
    dp.addPort(2, { writeBatch(b: import('../../datapath/batch.js').PacketBatch, idx: Uint16Array, from: number, n: number) {
      if (left-- > 0) throw new Error('port broke');
      for (let j = from; j < from + n; j++) frames.push(b.buf.slice(b.off[idx[j]], b.off[idx[j]] + b.caplen[idx[j]]));
    } });
    up.plan('v2', ['server']);
    const run = up.run();
    send([[1, seg('c', seq.c, seq.s, 'PA', 10)]]); // held
    const st = await run;
    expect(st.state).toBe('stopped');
    expect(st.ports[0].state).toBe('rolled-back');
    expect(st.ports[0].error).toMatch(/unexpected: port broke/);
    expect(dp.firewallHold[SERVER_ZONE]).toBe(0);
    expect(up.status().state).toBe('stopped');
    up.plan('v1'); // not stuck
    expect(up.runSync().state).toBe('done');
  });
});

describe('the per-port firewall with the FPAG not waited for (--fpag async)', () => {
  it('each connection\'s packets, both ways, reach conntrack in order (a reply waits behind the packet it answers): nothing refused, the same totals, per-flow counts and per-connection order as inline; the FPAG thread waited for, the same bytes', () => {
    const dir = tempDir('fwasync');
    const { cap, topo } = fwCapture(dir);
    const flows = (r: ReturnType<typeof replay>) => r.datapath.dumpFlows().map((f) => `${[...f.key]}/${[...f.mask]} ${JSON.stringify(f.actions)} ${f.packets} ${f.bytes}`).sort();
    const inline = replay({ capture: cap, topology: topo, outDir: join(dir, 'inline'), batchSize: 4 });
    const thread = replay({ capture: cap, topology: topo, outDir: join(dir, 'thread'), batchSize: 4, fpag: 'thread' });
    const asyncR = replay({ capture: cap, topology: topo, outDir: join(dir, 'async'), batchSize: 4, fpag: 'async' });
    expect(inline.report.packets.dropped).toBe(0);
    // The firewall's ct actions cross to and from the thread as the firewall's (fw), not as plain conntrack's.
    expect(flows(thread)).toEqual(flows(inline));
    expect(flows(inline).some((f) => f.includes('"fw":true'))).toBe(true);
    for (const f of ['p1.pcap', 'p2.pcap']) expect(readFileSync(join(dir, 'thread', f)).equals(readFileSync(join(dir, 'inline', f))), f).toBe(true);
    expect(asyncR.report.fpag.queue!.parked).toBeGreaterThan(0);
    expect(asyncR.report.packets).toEqual(inline.report.packets);
    expect(asyncR.report.drops).toEqual({});
    expect(flows(asyncR)).toEqual(flows(inline));
    for (const f of ['p1.pcap', 'p2.pcap']) {
      // Per connection (the client's port, either way), the same frames in the same order.
      const byConn = (path: string) => {
        const g = new Map<number, string[]>();
        for (const fr of captureFrames(path)) {
          const sp = (fr[34] << 8) | fr[35];
          const dp = (fr[36] << 8) | fr[37];
          const k = Math.min(sp, dp) + Math.max(sp, dp) * 65536;
          if (!g.has(k)) g.set(k, []);
          g.get(k)!.push(Buffer.from(fr).toString('hex'));
        }
        return g;
      };
      const a = byConn(join(dir, 'inline', f));
      const b = byConn(join(dir, 'async', f));
      expect(b.size).toBe(a.size);
      expect(a.size).toBe(12);
      for (const [k, seq] of a) expect(b.get(k), `${f} ${k}`).toEqual(seq);
    }
  });
});
