/**
 * The pcap-live port (datapath/ports/pcap-live-port.ts): libpcap through the
 * cap addon on real interfaces — veth pairs whose other ends are in network
 * namespaces made here (fpoc-*) — with real frames, checked with tshark
 * through fpo ctl capture; a filter that keeps frames out; bad devices and
 * filters refused with the port, the field and libpcap's words; a missing
 * cap addon said plainly.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { topologyFrom } from '../../../control/topology.js';
import { FpoError } from '../../../datapath/errors.js';
import { CLI, cleanTemp, needRoot, needTool, runCli, tempDir, tsharkFields } from '../../helpers.js';
import { killAll, req, startService } from '../../control/run-service.js';

const sh = (cmd: string) => spawnSync('sh', ['-c', cmd], { encoding: 'utf8', timeout: 30_000 });
const NS = ['fpoc-pl-a', 'fpoc-pl-b'];

function down(): void {
  for (const ns of NS) sh(`ip netns del ${ns} 2>/dev/null`);
  sh('ip link del fpoc-pl-ha 2>/dev/null; ip link del fpoc-pl-hb 2>/dev/null');
}

afterAll(() => {
  killAll();
  if (process.getuid?.() === 0) down();
  cleanTemp();
});

/** Two VMs' namespaces, each on a veth whose host end (fpoc-pl-ha, -hb) a port attaches to. */
function up(): void {
  down();
  for (const [x, n] of [['a', 1], ['b', 2]] as const) {
    const r = sh(`ip netns add fpoc-pl-${x} && ip link add fpoc-pl-h${x} type veth peer name fpoc-pl-v${x}`
      + ` && ip link set fpoc-pl-v${x} netns fpoc-pl-${x} && ip link set fpoc-pl-h${x} up`
      + ` && ip -n fpoc-pl-${x} link set fpoc-pl-v${x} address 02:00:00:00:76:0${n}`
      + ` && ip -n fpoc-pl-${x} addr add 10.76.0.${n}/24 dev fpoc-pl-v${x} && ip -n fpoc-pl-${x} link set fpoc-pl-v${x} up`);
    expect(r.status, r.stderr).toBe(0);
  }
}

function topo(portA: Record<string, unknown>, portB: Record<string, unknown> = { kind: 'pcap-live', device: 'fpoc-pl-hb' }): Record<string, unknown> {
  return {
    name: 'pl', ports: [{ name: 'pa', ppid: 11, ...portA }, { name: 'pb', ppid: 12, ...portB }],
    segments: [{ name: 's' }],
    nodes: [
      { name: 'a', interfaces: [{ name: 'a0', mac: '02:00:00:00:76:01', ip: '10.76.0.1', segment: 's', port: 'pa' }] },
      { name: 'b', interfaces: [{ name: 'b0', mac: '02:00:00:00:76:02', ip: '10.76.0.2', segment: 's', port: 'pb' }] },
    ],
  };
}

function writeTopo(t: Record<string, unknown>): string {
  const f = join(tempDir('pltopo'), 'topo.json');
  writeFileSync(f, JSON.stringify(t));
  return f;
}

describe('pcap-live port', () => {
  it('VMs ping each other through two pcap-live ports; a capture of one sees requests in and replies out (tshark)', async (ctx) => {
    needRoot(ctx, 'makes namespaces and veths');
    for (const t of ['ip', 'ping', 'tshark']) needTool(ctx, t, 'the test makes namespaces, pings and reads the capture');
    up();
    const svc = await startService({ topology: writeTopo(topo({ kind: 'pcap-live', device: 'fpoc-pl-ha' })) });
    const dir = tempDir('plcap');
    const file = join(dir, 'pa.pcapng');
    const cap = spawnSync('sh', ['-c', `${process.execPath} ${CLI} ctl -s ${svc.socket} capture pa --filter icmp -c 6 -w ${file} & sleep 0.5; ip netns exec fpoc-pl-a ping -c 3 -i 0.2 -W 2 10.76.0.2; wait`], { encoding: 'utf8', timeout: 30_000 });
    expect(cap.stdout).toContain('3 packets transmitted, 3 received');
    expect(cap.stderr).toContain('6 frames captured');
    const frames = tsharkFields(file, ['icmp.type', 'ip.src', 'frame.packet_flags_direction', 'frame.interface_name']);
    expect(frames).toEqual([0, 1, 2].flatMap(() => [['8', '10.76.0.1', '0x00000001', 'pa'], ['0', '10.76.0.2', '0x00000002', 'pa']]));
    const st = (await req(svc.socket, 'stats')).result;
    expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
    const { code } = await svc.stop();
    expect(code).toBe(0);
  }, 60_000);

  it('a filter keeps what it does not match out of the switch: UDP to port 9 never reaches b, port 10 does', async (ctx) => {
    needRoot(ctx, 'makes namespaces and veths');
    for (const t of ['ip', 'tshark']) needTool(ctx, t, 'the test makes namespaces and reads the capture');
    up();
    // ARP answered by hand-set neighbours, so only the UDP frames cross.
    sh('ip -n fpoc-pl-a neigh replace 10.76.0.2 lladdr 02:00:00:00:76:02 dev fpoc-pl-va && ip -n fpoc-pl-b neigh replace 10.76.0.1 lladdr 02:00:00:00:76:01 dev fpoc-pl-vb');
    const svc = await startService({ topology: writeTopo(topo({ kind: 'pcap-live', device: 'fpoc-pl-ha', filter: 'not (udp and dst port 9)' })) });
    const dir = tempDir('plfilt');
    const send = `${process.execPath} -e "const s=require('dgram').createSocket('udp4');let k=0;const go=()=>{if(k===20){s.close();return;}const p=k%2?9:10;k++;s.send(Buffer.alloc(8),p,'10.76.0.2',go);};go();"`;
    // What pa received (in the switch, after libpcap's filter) and what pb sent to b: 10 frames each, all to port 10.
    const ctl = (port: string) => `${process.execPath} ${CLI} ctl -s ${svc.socket} capture ${port} --filter udp -c 10 -w ${join(dir, port)}.pcapng`;
    const r = spawnSync('sh', ['-c', `${ctl('pa')} & ${ctl('pb')} & sleep 0.7; ip netns exec fpoc-pl-a ${send}; wait`], { encoding: 'utf8', timeout: 30_000 });
    expect(r.stderr.match(/10 frames captured/g)?.length, r.stderr).toBe(2);
    expect(tsharkFields(join(dir, 'pa.pcapng'), ['udp.dstport', 'frame.packet_flags_direction'])).toEqual(Array.from({ length: 10 }, () => ['10', '0x00000001']));
    expect(tsharkFields(join(dir, 'pb.pcapng'), ['udp.dstport', 'frame.packet_flags_direction'])).toEqual(Array.from({ length: 10 }, () => ['10', '0x00000002']));
    await svc.stop();
  }, 60_000);

  it('a device that does not exist stops fpo run with the port named, exit 1, no stack', () => {
    const r = runCli(['run', '-t', writeTopo(topo({ kind: 'pcap-live', device: 'fpoc-nosuch' })), '-s', join(tempDir('plnodev'), 's'), '-o', tempDir('plnodevout')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe('fpo: pcap-live port pa: no interface named "fpoc-nosuch"\n');
  });

  it('without the cap addon (not built: no libpcap-dev at install), fpo run says so and how to get it, exit 1, no stack', (ctx) => {
    needRoot(ctx, 'makes a veth for the port');
    needTool(ctx, 'ip', 'makes a veth');
    up();
    // A preload that makes require('cap') fail as it does when its build/Release/cap.node was never built.
    const pre = join(tempDir('nocap'), 'nocap.cjs');
    writeFileSync(pre, `const M = require('module'); const load = M._load; M._load = function (r, ...a) { if (r === 'cap') { const e = new Error("Cannot find module '../build/Release/cap.node'\\nRequire stack: ..."); e.code = 'MODULE_NOT_FOUND'; throw e; } return load.call(this, r, ...a); };`);
    const r = spawnSync(process.execPath, ['--require', pre, CLI, 'run', '-t', writeTopo(topo({ kind: 'pcap-live', device: 'fpoc-pl-ha' })), '-s', join(tempDir('nocaps'), 's'), '-o', tempDir('nocapout')], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toBe("fpo: pcap-live ports need the cap module (libpcap for Node), which cannot be loaded: Cannot find module '../build/Release/cap.node'. It is an optional dependency built at install: install libpcap-dev, g++, make and python3, then run npm rebuild cap\n");
  });

  it('a filter that libpcap refuses is refused at load, naming the file, the port\'s field, the filter and libpcap\'s words', () => {
    const f = writeTopo(topo({ kind: 'pcap-live', device: 'fpoc-pl-ha', filter: 'udp and and' }));
    expect(() => topologyFrom(JSON.parse(JSON.stringify(topo({ kind: 'pcap-live', device: 'fpoc-pl-ha', filter: 'udp and and' }))), f))
      .toThrow(`${f}: ports[0].filter: "udp and and": libpcap: can't parse filter expression: syntax error`);
    const r = runCli(['run', '-t', f, '-s', join(tempDir('plbad'), 's'), '-o', tempDir('plbadout')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`fpo: ${f}: ports[0].filter: "udp and and": libpcap: can't parse filter expression: syntax error\n`);
    expect(() => topologyFrom(topo({ kind: 'afpacket', device: 'x', filter: 'udp' }), 't.json')).toThrow('t.json: ports[0].filter: only a pcap-live port takes a filter; this port is afpacket');
  });

  it('fuzz: a pcap-live port\'s device and filter load, or are refused naming the file and the field', () => {
    const device = fc.oneof(fc.constantFrom('eth0', 'fpoc-x', '', '.', '..', 'a'.repeat(16), 'a/b', 'veth 0', 'ä', '-x'), fc.string({ maxLength: 20 }), fc.constantFrom<unknown>(null, 5, [], {}));
    const filter = fc.oneof(fc.constantFrom('udp', 'not ip6', 'udp and and', 'port 70000', '\u0000', 'x'.repeat(5000), '', 'vlan 20 and host 10.0.0.1'), fc.string({ maxLength: 40 }), fc.constantFrom<unknown>(null, 1, [], {}));
    fc.assert(fc.property(device, fc.option(filter, { nil: undefined }), (d, f) => {
      const port: Record<string, unknown> = { kind: 'pcap-live', device: d };
      if (f !== undefined) port.filter = f;
      try {
        const t = topologyFrom(topo(port), 'fuzz.json');
        expect(t.ports[0].kind).toBe('pcap-live');
        expect(t.ports[0].device).toBe(d);
      } catch (e) {
        expect(e).toBeInstanceOf(FpoError);
        expect((e as FpoError).message).toMatch(/^fuzz\.json: ports\[0\]\.(device|filter): /);
      }
    }), { numRuns: 300 });
  });
});
