/**
 * Timed control events in a replay (`fpo replay --events FILE`, events.ts):
 * where each kind lands and what it changes. Every capture here is built by
 * the test, so which packet goes where after the event is worked out from
 * the capture; the ports' outputs are read back with tshark, each packet
 * named by its own source port.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { loadEvents } from '../../control/events.js';
import { replay, type ReplayReport } from '../../control/replay.js';
import { FpoError } from '../../datapath/errors.js';
import { eth, ipv4, tcp, udp, writePcap, type Record as PcapRecord } from '../../fixtures/packets.js';
import { FIXTURES, cleanTemp, needTool, runCli, tempDir, tsharkFields } from '../helpers.js';

afterAll(cleanTemp);

const TOPO = join(FIXTURES, 'topology.json');
const SEC = 1_700_000_000;
const VM1 = '02:00:00:00:00:01';
const FROM = '02:ee:00:00:00:01';
/** Each packet's id is its source port (they share one megaflow: no rule looks at tp_src). */
const ID0 = 10_000;

const toVm1Udp = (i: number, dport = 9) => eth(VM1, FROM, 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(ID0 + i, dport, new Uint8Array(18))));
const toVm1Tcp = (i: number, dport: number) => eth(VM1, FROM, 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 6 }, tcp(ID0 + i, dport)));

/** Replays CAPTURE with the events file's text through the CLI; returns the report. */
function replayWithEvents(capture: string, eventsJson: string): { report: ReplayReport; out: string } {
  const dir = tempDir('events');
  const ev = join(dir, 'events.json');
  writeFileSync(ev, eventsJson);
  const out = join(dir, 'out');
  const r = runCli(['replay', capture, '-t', TOPO, '-o', out, '--events', ev, '--json']);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return { report: JSON.parse(r.stdout) as ReplayReport, out };
}

/** The ids (source ports) of the packets a port wrote, in order, read by tshark; [] when it wrote none. */
function idsOn(out: string, port: string, proto: 'udp' | 'tcp'): number[] {
  const f = join(out, `${port}.pcap`);
  if (!existsSync(f)) return [];
  return tsharkFields(f, [`${proto}.srcport`]).map((r) => Number(r[0]) - ID0);
}

const range = (a: number, b: number) => Array.from({ length: Math.max(0, b - a) }, (_, i) => a + i);

describe('events file: a set-mapping\'s PPID', () => {
  it('out of range is refused at load naming the field and the bound (it was taken, and failed mid-replay as "not a port")', () => {
    const dir = tempDir('ev-ppid');
    const cap = join(dir, 'one.pcap');
    writePcap(cap, [{ sec: SEC, usec: 0, data: toVm1Udp(0) }]);
    let seen = 0;
    for (const ppid of [4096, 99999, 1e300]) {
      const ev = join(dir, 'events.json');
      writeFileSync(ev, JSON.stringify([{ atPacket: 1, do: 'set-mapping', vpid: 1, ppid }]));
      const r = runCli(['replay', cap, '-t', TOPO, '-o', join(dir, 'out'), '--events', ev]);
      // The wording is check.ts int()'s; the field and the bound are this test's point.
      expect(r.stderr).toMatch(new RegExp(`^fpo: ${ev}: events\\[0\\]\\.ppid: .*4095`));
      expect(r.status).toBe(1);
      expect(existsSync(join(dir, 'out'))).toBe(false);
      seen++;
    }
    expect(seen).toBe(3);
  });
});

describe('replay events at a capture time (atTime)', () => {
  // 600 packets to vm1 (two full batches of 256 and a part), µs apart from .000003 on, except
  // packets 100..104, which share one timestamp. The µs values are ones where the capture's
  // time computed in floating-point ms can come out below the same time written in seconds.
  const N = 600;
  const usec = (i: number) => (i >= 100 && i <= 104 ? 103 : i + 3);
  const dir = tempDir('attime');
  const cap = join(dir, 'vm1.pcap');
  writePcap(cap, range(0, N).map((i) => ({ sec: SEC, usec: usec(i), data: toVm1Udp(i) })));

  // The event's time is written exactly as tshark prints the packet's timestamp (or half a µs
  // after the previous packet), so the boundary comes from the capture, not from fpo's reader.
  const cases: { name: string; at: number; time: (t: string[]) => string }[] = [
    { name: 'the first packet\'s own time applies before packet 0', at: 0, time: (t) => t[0] },
    { name: 'the second packet\'s own time applies between packets 0 and 1', at: 1, time: (t) => t[1] },
    { name: 'a time half a µs after packet 0 applies before packet 1', at: 1, time: (t) => `${t[0].slice(0, -3)}500` },
    { name: 'a time shared by packets 100..104 applies before the first of them', at: 100, time: (t) => t[102] },
    { name: 'the time of the last packet of the first batch applies between packets 254 and 255', at: 255, time: (t) => t[255] },
    { name: 'the time of the first packet of the second batch applies between packets 255 and 256', at: 256, time: (t) => t[256] },
    { name: 'a time half a µs before packet 257 applies between packets 256 and 257', at: 257, time: (t) => `${t[256].slice(0, -3)}500` },
    { name: 'the last packet\'s time applies before the last packet', at: N - 1, time: (t) => t[N - 1] },
    { name: 'a time after the last packet applies after the capture', at: N, time: (t) => `${t[N - 1].slice(0, -3)}500` },
  ];

  for (const c of cases) {
    it(`a set-mapping at ${c.name}, moving vm1's packets from vf1 to vf5 from there on`, (ctx) => {
      needTool(ctx, 'tshark', 'reads the capture\'s timestamps and the ports\' outputs');
      const times = tsharkFields(cap, ['frame.time_epoch']).map((r) => r[0]);
      expect(times.length).toBe(N);
      expect(times[0]).toMatch(/^1700000000\.000003000$/); // tshark prints ns digits: the half-µs cases append to µs
      const { report, out } = replayWithEvents(cap, `[{ "atTime": ${c.time(times)}, "do": "set-mapping", "vpid": 1, "ppid": 15 }]`);
      expect(report.events!.length).toBe(1);
      expect(report.events![0].atPacket).toBe(c.at);
      expect(idsOn(out, 'vf1', 'udp')).toEqual(range(0, c.at));
      expect(idsOn(out, 'vf5', 'udp')).toEqual(range(c.at, N));
      expect(report.packets).toEqual({ in: N, out: N, dropped: 0, copies: N });
    });
  }

  for (const format of ['pcapng', 'nsecpcap'] as const) {
    it(`in a ${format === 'pcapng' ? 'pcapng' : 'nanosecond pcap'} copy of the capture, a packet's own time still applies before that packet`, (ctx) => {
      needTool(ctx, 'tshark', 'reads the capture\'s timestamps and the ports\' outputs');
      needTool(ctx, 'editcap', 'converts the capture');
      const copy = join(dir, `vm1.${format}`);
      execFileSync('editcap', ['-F', format, cap, copy]);
      const times = tsharkFields(copy, ['frame.time_epoch']).map((r) => r[0]);
      expect(times.length).toBe(N);
      for (const at of [0, 1, 256]) {
        const { report, out } = replayWithEvents(copy, `[{ "atTime": ${times[at]}, "do": "set-mapping", "vpid": 1, "ppid": 15 }]`);
        expect(report.format).toBe(format === 'pcapng' ? 'pcapng' : 'pcap');
        expect(report.events![0].atPacket).toBe(at);
        const ext = format === 'pcapng' ? 'pcapng' : 'pcap';
        const ids = (port: string) => { const f = join(out, `${port}.${ext}`); return existsSync(f) ? tsharkFields(f, ['udp.srcport']).map((r) => Number(r[0]) - ID0) : []; };
        expect(ids('vf1')).toEqual(range(0, at));
        expect(ids('vf5')).toEqual(range(at, N));
      }
    });
  }

  it('two events at the times of consecutive packets land one packet apart, in time order whatever their order in the file', (ctx) => {
    needTool(ctx, 'tshark', 'reads the capture\'s timestamps and the ports\' outputs');
    const times = tsharkFields(cap, ['frame.time_epoch']).map((r) => r[0]);
    expect(times.length).toBe(N);
    // vm1 to vf5 at packet 301, then (listed first) back to vf1 at packet 302: exactly one packet on vf5.
    const { report, out } = replayWithEvents(cap, `[{ "atTime": ${times[302]}, "do": "set-mapping", "vpid": 1, "ppid": 11 },
      { "atTime": ${times[301]}, "do": "set-mapping", "vpid": 1, "ppid": 15 }]`);
    expect(report.events!.map((e) => e.atPacket)).toEqual([301, 302]);
    expect(idsOn(out, 'vf5', 'udp')).toEqual([301]);
    expect(idsOn(out, 'vf1', 'udp')).toEqual(range(0, N).filter((i) => i !== 301));
  });
});

describe('replay events at a packet count (atPacket)', () => {
  const N = 600;
  const cap = join(tempDir('atpacket'), 'vm1.pcap');
  writePcap(cap, range(0, N).map((i) => ({ sec: SEC, usec: i, data: toVm1Udp(i) })));

  for (const at of [0, 1, 255, 256, 257, 599, 600, 1000]) {
    it(`a set-mapping at packet ${at} sends packets before ${at} to the old port and the rest to the new one`, (ctx) => {
      needTool(ctx, 'tshark', 'reads the ports\' outputs');
      const { report, out } = replayWithEvents(cap, JSON.stringify([{ atPacket: at, do: 'set-mapping', vpid: 1, ppid: 15 }]));
      const landed = Math.min(at, N); // past the end: after the last packet
      expect(report.events![0].atPacket).toBe(landed);
      expect(report.events![0].result).toEqual({ vpid: 1, ppid: 15 });
      expect(idsOn(out, 'vf1', 'udp')).toEqual(range(0, landed));
      expect(idsOn(out, 'vf5', 'udp')).toEqual(range(landed, N));
      // The mapping stays: the report names vm1's interface on vf5.
      expect(report.ports.find((p) => p.name === 'vf5')!.vpid).toBe(1);
    });
  }
});

describe('replay events that change the rules', () => {
  const N = 600;

  it('an add-flow sends the packets its rule matches where the rule says from its packet on, and no earlier', (ctx) => {
    needTool(ctx, 'tshark', 'reads the ports\' outputs');
    // Every third packet is DNS to vm1; the others go to port 9.
    const recs: PcapRecord[] = range(0, N).map((i) => ({ sec: SEC, usec: i, data: toVm1Udp(i, i % 3 === 0 ? 53 : 9) }));
    const cap = join(tempDir('addflow'), 'mixed.pcap');
    writePcap(cap, recs);
    for (const at of [299, 300]) { // 300 is a DNS packet, 299 is not: the boundary falls on each kind
      const { report, out } = replayWithEvents(cap, JSON.stringify([{ atPacket: at, do: 'add-flow', flow: 'priority=200,udp,tp_dst=53,actions=output:vm2-eth0' }]));
      expect(report.events![0].atPacket).toBe(at);
      const dns = (i: number) => i % 3 === 0;
      const vf1 = idsOn(out, 'vf1', 'udp');
      const vf2 = idsOn(out, 'vf2', 'udp');
      expect(vf1).toEqual(range(0, N).filter((i) => !dns(i) || i < at));
      expect(vf2).toEqual(range(at, N).filter(dns));
      expect(vf1.length + vf2.length).toBe(N);
      expect(report.packets).toEqual({ in: N, out: N, dropped: 0, copies: N });
    }
  });

  it('an add-flow that drops: the packets it matches are dropped from its time on, counted as ruleDrop', (ctx) => {
    needTool(ctx, 'tshark', 'reads the capture\'s timestamps and the ports\' outputs');
    const recs: PcapRecord[] = range(0, N).map((i) => ({ sec: SEC, usec: 5 * i + 3, data: toVm1Udp(i, i % 2 === 0 ? 53 : 9) }));
    const cap = join(tempDir('addflow-drop'), 'mixed.pcap');
    writePcap(cap, recs);
    const times = tsharkFields(cap, ['frame.time_epoch']).map((r) => r[0]);
    expect(times.length).toBe(N);
    const at = 400;
    const { report, out } = replayWithEvents(cap, `[{ "atTime": ${times[at]}, "do": "add-flow", "flow": "priority=200,udp,tp_dst=53,actions=drop" }]`);
    expect(report.events![0].atPacket).toBe(at);
    const vf1 = idsOn(out, 'vf1', 'udp');
    expect(vf1).toEqual(range(0, N).filter((i) => i % 2 === 1 || i < at));
    expect(report.drops).toEqual({ ruleDrop: range(at, N).filter((i) => i % 2 === 0).length });
  });

  it('a del-flow lets through the packets its rule dropped, from its packet on, and no earlier', (ctx) => {
    needTool(ctx, 'tshark', 'reads the ports\' outputs');
    // The topology's rule drops telnet (tcp/23); every other packet is telnet, the rest go to port 80.
    const recs: PcapRecord[] = range(0, N).map((i) => ({ sec: SEC, usec: i, data: toVm1Tcp(i, i % 2 === 0 ? 23 : 80) }));
    const cap = join(tempDir('delflow'), 'telnet.pcap');
    writePcap(cap, recs);
    for (const at of [299, 300]) { // 300 is telnet, 299 is not
      const { report, out } = replayWithEvents(cap, JSON.stringify([{ atPacket: at, do: 'del-flow', flow: 'tcp,tp_dst=23' }]));
      expect(report.events![0].atPacket).toBe(at);
      const telnet = (i: number) => i % 2 === 0;
      const vf1 = idsOn(out, 'vf1', 'tcp');
      expect(vf1).toEqual(range(0, N).filter((i) => !telnet(i) || i >= at));
      expect(report.drops).toEqual({ ruleDrop: range(0, at).filter(telnet).length });
      expect(vf1.length + report.packets.dropped).toBe(N);
    }
  });

  it('a del-flow that gives a priority removes only the rule of that priority, as fpo ctl del-flow does', (ctx) => {
    needTool(ctx, 'tshark', 'reads the ports\' outputs');
    // Telnet to vm1: the topology drops it (priority 100); from packet 0 a priority-300 rule sends it to
    // vm2; from packet 200 that rule is gone and the topology's drop applies again.
    const recs: PcapRecord[] = range(0, 300).map((i) => ({ sec: SEC, usec: i, data: toVm1Tcp(i, 23) }));
    const cap = join(tempDir('delprio'), 'telnet.pcap');
    writePcap(cap, recs);
    const { report, out } = replayWithEvents(cap, JSON.stringify([
      { atPacket: 0, do: 'add-flow', flow: 'priority=300,tcp,tp_dst=23,actions=output:vm2-eth0' },
      { atPacket: 200, do: 'del-flow', flow: 'priority=300,tcp,tp_dst=23' },
    ]));
    expect(report.events!.map((e) => e.atPacket)).toEqual([0, 200]);
    expect(report.events![1].result).toMatchObject({ removed: 1 });
    expect(idsOn(out, 'vf2', 'tcp')).toEqual(range(0, 200));
    expect(idsOn(out, 'vf1', 'tcp')).toEqual([]);
    expect(report.drops).toEqual({ ruleDrop: 100 });
  });

  it('events at the same packet apply in the order of the file', (ctx) => {
    needTool(ctx, 'tshark', 'reads the ports\' outputs');
    const recs: PcapRecord[] = range(0, 300).map((i) => ({ sec: SEC, usec: i, data: toVm1Udp(i, 53) }));
    const cap = join(tempDir('same'), 'dns.pcap');
    writePcap(cap, recs);
    const add = { do: 'add-flow', flow: 'priority=200,udp,tp_dst=53,actions=output:vm2-eth0' };
    const del = { do: 'del-flow', flow: 'udp,tp_dst=53' };
    // Added then deleted at 100: nothing changes. Deleted (nothing yet) then added at 100: vm2 from 100 on.
    const first = replayWithEvents(cap, JSON.stringify([{ atPacket: 100, ...add }, { atPacket: 100, ...del }]));
    expect(first.report.events!.map((e) => [e.event.do, e.atPacket])).toEqual([['add-flow', 100], ['del-flow', 100]]);
    expect(idsOn(first.out, 'vf1', 'udp')).toEqual(range(0, 300));
    expect(idsOn(first.out, 'vf2', 'udp')).toEqual([]);
    const second = replayWithEvents(cap, JSON.stringify([{ atPacket: 100, ...del }, { atPacket: 100, ...add }]));
    expect(second.report.events!.map((e) => [e.event.do, e.atPacket])).toEqual([['del-flow', 100], ['add-flow', 100]]);
    expect(second.report.events![0].result).toMatchObject({ removed: 0 });
    expect(idsOn(second.out, 'vf1', 'udp')).toEqual(range(0, 100));
    expect(idsOn(second.out, 'vf2', 'udp')).toEqual(range(100, 300));
  });

  it('an add-flow and a del-flow of the same rule bracket exactly the packets between them', (ctx) => {
    needTool(ctx, 'tshark', 'reads the ports\' outputs');
    const recs: PcapRecord[] = range(0, N).map((i) => ({ sec: SEC, usec: i, data: toVm1Udp(i, 53) }));
    const cap = join(tempDir('bracket'), 'dns.pcap');
    writePcap(cap, recs);
    const { report, out } = replayWithEvents(cap, JSON.stringify([
      { atPacket: 100, do: 'add-flow', flow: 'priority=200,udp,tp_dst=53,actions=output:vm3-eth0' },
      { atPacket: 260, do: 'del-flow', flow: 'udp,tp_dst=53' },
    ]));
    expect(report.events!.map((e) => e.atPacket)).toEqual([100, 260]);
    expect(idsOn(out, 'vf3', 'udp')).toEqual(range(100, 260));
    expect(idsOn(out, 'vf1', 'udp')).toEqual([...range(0, 100), ...range(260, N)]);
  });
});

describe('events files: keys and names Object.prototype has', () => {
  const PROTO_KEYS = ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf'];
  const dir = tempDir('events-keys');
  let files = 0;
  /** loadEvents over the text; the FpoError's message (or 'loaded'). */
  const load = (text: string): string => {
    const p = join(dir, `e${files++}.json`);
    writeFileSync(p, text);
    try {
      loadEvents(p);
      return 'loaded';
    } catch (e) {
      expect(e).toBeInstanceOf(FpoError);
      return (e as Error).message.slice(p.length + 2);
    }
  };

  it('an add-flow or del-flow whose flow names one is refused naming it (it was a match-all)', () => {
    for (const k of PROTO_KEYS) {
      expect(load(`[{ "atPacket": 1, "do": "add-flow", "flow": "priority=60000,${k},actions=drop" }]`)).toMatch(new RegExp(`^events\\[0\\]\\.flow: match: unknown field "${k}"`));
      expect(load(`[{ "atPacket": 1, "do": "del-flow", "flow": "${k}=1" }]`)).toMatch(new RegExp(`^events\\[0\\]\\.flow: match\\.${k}: unknown field "${k}"`));
    }
  });

  it('an event with such a key is refused naming the key; a "do" of such a name is not a kind of event', () => {
    for (const k of PROTO_KEYS) {
      expect(load(`[{ "atPacket": 1, "do": "migrate", "interface": "vm1-eth0", "to": "vf5", ${JSON.stringify(k)}: { "away": true } }]`)).toBe(`events[0]: Unrecognized key: ${JSON.stringify(k)}`);
      expect(load(`[{ "atPacket": 1, "do": ${JSON.stringify(k)} }]`)).toBe('events[0].do: Invalid discriminator value. Expected \'migrate\' | \'set-mapping\' | \'add-flow\' | \'del-flow\' | \'firewall-upgrade\'');
    }
  });

  it('a migrate of an interface named "toString" that the topology lacks stops the replay naming it', () => {
    const ev = join(dir, 'to-string.json');
    writeFileSync(ev, '[{ "atPacket": 1, "do": "migrate", "interface": "toString", "to": "vf5" }]');
    const r = runCli(['replay', join(FIXTURES, 'demo.pcap'), '-t', TOPO, '-o', join(dir, 'out'), '--events', ev]);
    expect(r.stderr).toBe('fpo: interface: no interface named "toString"\n');
    expect(r.status).toBe(1);
  }, 60_000);
});

describe('events files (fuzz): events or an FpoError naming the file and a field; a replay with them reports or refuses', () => {
  const PROTO_KEYS = ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf'];
  const NAMES = [...PROTO_KEYS, 'vm1-eth0', 'vm2-eth0', 'vf5', 'vf1', 'uplink0', '..', '../x', ''];
  const valid = [
    { atPacket: 3, do: 'migrate', interface: 'vm1-eth0', to: 'vf5' },
    { atPacket: 100, do: 'set-mapping', vpid: 1, ppid: 11 },
    { atTime: 1700000000.5, do: 'add-flow', flow: 'priority=200,udp,actions=drop' },
    { atPacket: 400, do: 'del-flow', flow: 'priority=200,udp' },
    { atPacket: 500, do: 'migrate', interface: 'vm2-eth0', away: true },
  ];
  const flowText = fc.oneof(
    fc.constantFrom('priority=60000,constructor,actions=drop', 'toString=1', 'tcp,__proto__,actions=drop', 'in_port=valueOf,actions=normal', 'actions=output:hasOwnProperty', 'priority=99999,actions=drop', ''),
    fc.string({ maxLength: 40 }),
  );
  const field = fc.constantFrom('atPacket', 'atTime', 'do', 'interface', 'to', 'away', 'newVpid', 'vpid', 'ppid', 'flow', ...PROTO_KEYS);
  const value = fc.oneof(fc.jsonValue({ maxDepth: 1 }), fc.constantFrom(...NAMES), flowText, fc.constantFrom(-1, 0, 4096, 1e12, 2 ** 53, 0.5, 1e300, true, null));
  const edit = fc.record({ event: fc.nat(), field, value, drop: fc.boolean() });

  const dir = tempDir('events-fuzz');
  let n = 0;
  /** loadEvents, then a replay of the demo with them: 'refused' (load), 'failed' (replay, FpoError) or 'replayed'. */
  function check(text: string | Uint8Array): string {
    const file = join(dir, `e${n++}.json`);
    writeFileSync(file, text);
    let events;
    try {
      events = loadEvents(file);
    } catch (e) {
      if (!(e instanceof FpoError)) throw e;
      expect(e.message.startsWith(`${file}: `), e.message).toBe(true);
      expect(e.message.slice(file.length + 2), e.message).toMatch(/^(\(file\)|events(\[\d+\])?(\.\w+)*): \S/);
      return 'refused';
    }
    // A loaded flow never names a key of Object.prototype as a field or shorthand (one was a match-all).
    for (const e of events) {
      if (e.do !== 'add-flow' && e.do !== 'del-flow') continue;
      const tokens = e.flow.split('actions=')[0].split(',').map((t) => t.split('=')[0].trim());
      expect(tokens.filter((t) => PROTO_KEYS.includes(t)), e.flow).toEqual([]);
    }
    const out = join(dir, `out${n}`);
    try {
      replay({ capture: join(FIXTURES, 'demo.pcap'), topology: TOPO, outDir: out, events });
    } catch (e) {
      if (!(e instanceof FpoError)) throw e; // a TypeError would be exit 70
      return 'failed';
    }
    return 'replayed';
  }

  it('random JSON, random bytes and edits of a valid file (prototype-ish keys and names, out-of-range numbers, bad flows)', () => {
    const seen: Record<string, number> = { refused: 0, failed: 0, replayed: 0 };
    fc.assert(fc.property(fc.oneof(
      { arbitrary: fc.array(edit, { minLength: 1, maxLength: 3 }).map((es) => {
        const doc = structuredClone(valid) as Record<string, unknown>[];
        for (const e of es) {
          const ev = doc[e.event % doc.length];
          if (e.drop) delete ev[e.field];
          else Object.defineProperty(ev, e.field, { value: e.value, enumerable: true, configurable: true, writable: true });
        }
        return JSON.stringify(doc);
      }), weight: 4 },
      { arbitrary: fc.jsonValue().map((v) => JSON.stringify(v) ?? 'null'), weight: 1 },
      { arbitrary: fc.uint8Array({ maxLength: 100 }), weight: 1 },
    ), (text) => {
      seen[check(text)]++;
    }), { numRuns: 300, seed: 17 });
    expect(seen.refused).toBeGreaterThan(100);
    expect(seen.replayed + seen.failed).toBeGreaterThan(10);
  }, 120_000);
});
