import { linkSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { replayHosts, type HostsReport } from '../../control/replay.js';
import { loadHosts } from '../../control/topology.js';
import { twoHostFrames } from '../../fixtures/make.js';
import { FIXTURES, captureFrames, cleanTemp, needTool, runCli, tempDir, tsharkFields } from '../helpers.js';

afterAll(cleanTemp);

const TOPO = join(FIXTURES, 'two-hosts.json');
const CAP = join(FIXTURES, 'two-hosts.pcap');


/** Which input frames the sender policy flags: ssh (rule), all of vmA2 (interface), each flow's first packet. */
function expectedFlags(): boolean[] {
  const seen = new Set<string>();
  return twoHostFrames().map((f) => {
    const src = Array.from(f.subarray(6, 12)).join(':');
    const dst = Array.from(f.subarray(0, 6)).join(':');
    const isIp = f[12] === 0x08 && f[13] === 0x00;
    const dport = isIp ? (f[36] << 8) | f[37] : 0;
    const flow = `${src}>${dst}/${isIp ? f[23] : 'arp'}/${dport}`;
    const first = !seen.has(flow);
    seen.add(flow);
    return first || dport === 22 && f[23] === 6 || src === '2:0:0:0:10:2';
  });
}

function run(topo: string, out: string): HostsReport {
  const r = runCli(['replay', CAP, '-t', topo, '-o', out, '--json']);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout) as HostsReport;
}

describe('two hosts joined by a tunnel, in one replay', () => {
  const out = tempDir('two');
  const rep = run(TOPO, out);
  const [a, b] = rep.hosts;
  const flags = expectedFlags();
  const nFlagged = flags.filter(Boolean).length;

  it('every packet is accounted for on each host', () => {
    for (const h of rep.hosts) expect(h.packets.in, h.host).toBe(h.packets.out + h.packets.dropped);
    expect(a.packets.in).toBe(twoHostFrames().length);
    expect(a.packets.dropped).toBe(0);
    expect(b.packets.in).toBe(a.ports.find((p) => p.name === 'uplink0')!.tx.packets);
  });

  it('host B counts what it received on its uplink as it arrived (outer headers included), as A counts what it sent', () => {
    const sent = a.ports.find((p) => p.name === 'uplink0')!;
    const got = b.ports.find((p) => p.role === 'uplink')!;
    expect(got.rx.packets).toBe(sent.tx.packets);
    expect(got.rx.bytes).toBe(sent.tx.bytes);
    expect(got.rx.bytes).toBe(captureFrames(sent.file!).reduce((s, f) => s + f.length, 0));
  });

  it('host A sends every packet encapsulated, flagged exactly as its policy says', () => {
    expect(a.tunnel.sent).toBe(twoHostFrames().length);
    expect(a.tunnel.flaggedSent).toBe(nFlagged);
    expect(b.tunnel).toEqual({ flagged: nFlagged, unflagged: twoHostFrames().length - nFlagged, specialTo: 'svc0', sent: 0, flaggedSent: 0 });
  });

  it('tshark reads A\'s uplink as Geneve with the VNI of each segment, the option on flagged packets only, inner frames intact', (ctx) => {
    needTool(ctx, 'tshark', 'decodes the tunnel packets');
    const uplink = join(out, 'hostA', 'uplink0.pcap');
    const rows = tsharkFields(uplink, ['geneve.vni', 'geneve.option.class', 'eth.src']);
    const input = twoHostFrames();
    const sent = captureFrames(uplink);
    expect(rows.length).toBe(input.length);
    rows.forEach(([vni, opt, src], i) => {
      const innerSrc = src.split(',')[1];
      expect(Number(vni), `frame ${i + 1}`).toBe(innerSrc === '02:00:00:00:0a:01' ? 5001 : 5002);
      expect(opt.includes('0xfff0'), `frame ${i + 1} flag`).toBe(flags[i]);
      // The inner frame is the input frame, byte for byte, at the end of the packet.
      expect(sent[i].subarray(sent[i].length - input[i].length)).toEqual(input[i]);
    });
  });

  it('host B delivers unflagged packets decapsulated to its VMs and flagged ones untouched to its service port', () => {
    const input = twoHostFrames();
    const vf1 = captureFrames(join(out, 'hostB', 'vf1.pcap'));
    const plainToB1 = input.filter((f, i) => !flags[i] && f[5] === 0x01);
    expect(vf1).toEqual(plainToB1);
    const svc = captureFrames(join(out, 'hostB', 'svc0.pcap'));
    expect(svc.length).toBe(nFlagged);
    const sent = captureFrames(join(out, 'hostA', 'uplink0.pcap'));
    expect(svc).toEqual(sent.filter((_, i) => flags[i]));
  });

  it('works the same over an IPv6 underlay', (ctx) => {
    needTool(ctx, 'tshark', 'decodes the tunnel packets');
    const t = JSON.parse(readFileSync(TOPO, 'utf8'));
    const [ha, hb] = t.hosts;
    ha.tunnel.sendFrom = ha.tunnel.vtep6 = '2001:db8::1';
    hb.tunnel.sendFrom = hb.tunnel.vtep6 = '2001:db8::2';
    ha.tunnel.remotes[0].vtep = '2001:db8::2';
    hb.tunnel.remotes[0].vtep = '2001:db8::1';
    const topo = join(tempDir(), 'v6.json');
    writeFileSync(topo, JSON.stringify(t));
    const out6 = tempDir('v6');
    const r = run(topo, out6);
    expect(r.hosts[1].tunnel).toEqual({ flagged: nFlagged, unflagged: twoHostFrames().length - nFlagged, specialTo: 'svc0', sent: 0, flaggedSent: 0 });
    expect(captureFrames(join(out6, 'hostB', 'vf1.pcap'))).toEqual(twoHostFrames().filter((f, i) => !flags[i] && f[5] === 0x01));
    const rows = tsharkFields(join(out6, 'hostA', 'uplink0.pcap'), ['ipv6.dst', 'geneve.vni', 'eth.src']);
    expect(rows.length).toBe(twoHostFrames().length);
    rows.forEach(([dst, vni, src], i) => {
      expect(dst, `frame ${i + 1}`).toBe('2001:db8::2');
      expect(Number(vni), `frame ${i + 1}`).toBe(src.split(',')[1] === '02:00:00:00:0a:01' ? 5001 : 5002);
    });
  });

  it('works the same over VXLAN (the flag in the reserved bit)', (ctx) => {
    needTool(ctx, 'tshark', 'decodes the tunnel packets');
    const t = JSON.parse(readFileSync(TOPO, 'utf8'));
    for (const h of t.hosts) h.tunnel.kind = 'vxlan';
    const topo = join(tempDir(), 'vxlan.json');
    writeFileSync(topo, JSON.stringify(t));
    const out2 = tempDir('vx');
    const r = run(topo, out2);
    expect(r.hosts[1].tunnel.flagged).toBe(nFlagged);
    const rows = tsharkFields(join(out2, 'hostA', 'uplink0.pcap'), ['vxlan.vni', 'vxlan.flags', 'eth.src']);
    expect(rows.length).toBe(twoHostFrames().length);
    rows.forEach(([vni, fl, src], i) => {
      expect(Number(vni), `frame ${i + 1}`).toBe(src.split(',')[1] === '02:00:00:00:0a:01' ? 5001 : 5002);
      expect((parseInt(fl, 16) & 0x0080) !== 0, `frame ${i + 1}`).toBe(flags[i]);
    });
  });
});

describe('host names become folders', () => {
  it('a host named "../../x" is refused before anything is written, inside or outside --out', () => {
    const root = tempDir('two-escape');
    const out = join(root, 'a', 'b', 'out');
    const file = JSON.parse(readFileSync(TOPO, 'utf8'));
    file.hosts[0].name = '../../x';
    const topo = join(root, 'hosts.json');
    writeFileSync(topo, JSON.stringify(file));
    const r = runCli(['replay', CAP, '-t', topo, '-o', out]);
    expect(r.stderr).toBe(`fpo: ${topo}: hosts[0]: name: expected one path segment (it becomes a folder name), without "/" or "\\": "../../x"\n`);
    expect(r.status).toBe(1);
    expect(readdirSync(root)).toEqual(['hosts.json']); // no out/, no a/x
  }, 60_000);

  it('replayHosts checks the names of topologies made in code too', () => {
    const [a, b] = loadHosts(TOPO);
    const root = tempDir('two-escape-api');
    for (const name of ['..', 'x/../../y', '']) {
      expect(() => replayHosts({ capture: CAP, hosts: [{ ...a, name }, b], outDir: join(root, 'out') })).toThrowError(/hosts\[0\]: name: expected/);
    }
    expect(readdirSync(root)).toEqual([]);
  }, 60_000);
});

describe('two hosts: outputs that are inputs', () => {
  it('replaying host A\'s uplink capture into the same --out is refused before any host writes', () => {
    const out = tempDir('two-same');
    run(TOPO, out);
    const input = join(out, 'hostA', 'uplink0.pcap');
    const before = readFileSync(input);
    const listing = readdirSync(join(out, 'hostB')).sort();
    const r = runCli(['replay', input, '-t', TOPO, '-o', out]);
    expect(r.stderr).toBe(`fpo: ${input}: port uplink0's output is ${input}, an input of this run (the same file); writing it would replace the input: choose another --out\n`);
    expect(r.status).toBe(1);
    expect(readFileSync(input)).toEqual(before);
    expect(readdirSync(join(out, 'hostB')).sort()).toEqual(listing); // host B (checked before host A ran) untouched too
  }, 60_000);

  it('an input that is a later host\'s output is refused before the first host writes', () => {
    const out = tempDir('two-later');
    run(TOPO, out);
    const input = join(tempDir('two-later-in'), 'vf1.pcap');
    linkSync(join(out, 'hostB', 'vf1.pcap'), input); // the same file under another name
    const a = join(out, 'hostA', 'uplink0.pcap');
    const aBefore = statSync(a).mtimeMs;
    const r = runCli(['replay', input, '-t', TOPO, '-o', out]);
    expect(r.stderr).toBe(`fpo: ${join(out, 'hostB', 'vf1.pcap')}: port vf1's output is ${input}, an input of this run (the same file); writing it would replace the input: choose another --out\n`);
    expect(r.status).toBe(1);
    expect(statSync(a).mtimeMs).toBe(aBefore); // host A did not run
    expect(readdirSync(join(out, 'hostA'))).toEqual(['uplink0.pcap']);
  }, 60_000);
});

describe('two hosts: interrupted', () => {
  it('a run interrupted in host A stops there: A\'s outputs whole under their final names, host B not replayed', (ctx) => {
    needTool(ctx, 'tshark', 'reads what is written');
    const out = tempDir('two-int');
    const hosts = loadHosts(TOPO);
    // The signal is already there: host A switches one batch (of 8 packets), then stops.
    const r = replayHosts({ capture: CAP, hosts, outDir: out, batchSize: 8, interrupt: { signal: 'SIGINT' } });
    expect(r.interrupted).toBe('SIGINT');
    expect(r.hosts.map((h) => h.host)).toEqual(['hostA']);
    const a = r.hosts[0];
    expect(a.interrupted).toBe('SIGINT');
    expect(a.packets.in).toBe(8);
    expect(a.packets.in).toBe(a.packets.out + a.packets.dropped);
    expect(readdirSync(out)).toEqual(['hostA']);
    const files = a.ports.filter((p) => p.file);
    expect(readdirSync(join(out, 'hostA')).sort()).toEqual(files.map((p) => `${p.name}.pcap`).sort());
    let frames = 0;
    for (const p of files) {
      expect(tsharkFields(p.file!, ['frame.number']).length, p.name).toBe(p.tx.packets);
      frames += p.tx.packets;
    }
    expect(frames).toBe(a.packets.copies);
    expect(frames).toBeGreaterThan(0);
  }, 60_000);
});
