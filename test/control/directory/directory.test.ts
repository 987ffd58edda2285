/**
 * The directory in etcd (issue 22, first slice): a real etcd member (Debian's
 * etcd-server) on loopback; host A registers under a lease and publishes its
 * VMs, host B reads the deployment (every entry checked, a bad one refused
 * with why) and follows the changes by watching from the revision it read;
 * A's lease expiring takes its entries with it.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Etcd3 } from 'etcd3';
import { Directory, type Change } from '../../../control/directory/directory.js';
import { parseEntry } from '../../../control/directory/schema.js';
import { cleanTemp, needTool, tempDir } from '../../helpers.js';
import { etcdMember, killMembers, restartableMember, sleep } from './etcd-member.js';

afterAll(() => { killMembers(); cleanTemp(); });

describe('the directory in etcd', () => {
  it('a host registers and publishes its VMs under a lease; another reads them checked, follows the changes, and sees them go with the lease', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const url = await etcdMember();
    const a = new Directory([url], 'lab1');
    const b = new Directory([url], 'lab1');
    try {
      await a.registerHost({ name: 'hostA', vtep: '192.168.0.1', mac: '02:fe:00:00:00:01', kind: 'vxlan' }, 2);
      await a.publish({ name: 'vm1-eth0', mac: '02:00:00:00:00:01', ips: ['10.0.0.1'], segment: 'blue', host: 'hostA', vpid: 1 });
      await a.publish({ name: 'vm2-eth0', mac: '02:00:00:00:00:02', ips: [], segment: 'blue', host: 'hostA', vpid: 2 });
      await a.putSegment({ name: 'blue', vni: 5001 });
      // A bad entry, written by someone else: refused with the field and what was expected; the rest taken.
      const raw = new Etcd3({ hosts: url });
      await raw.put('/fpo/lab1/interfaces/vm9-eth0').value('{"name":"vm9-eth0","mac":"02:00:00:00:00:09","segment":"blue","host":"hostA","vpid":70000}');
      await raw.put('/fpo/lab1/hosts/hostZ').value('not json');
      await raw.put('/fpo/other/hosts/x').value('{}'); // another deployment: not ours, not read
      await b.load();
      expect([...b.hosts.keys()]).toEqual(['hostA']);
      expect([...b.interfaces.keys()].sort()).toEqual(['vm1-eth0', 'vm2-eth0']);
      expect(b.segments.get('blue')?.vni).toBe(5001);
      expect(b.refused.get('/fpo/lab1/interfaces/vm9-eth0')).toMatch(/\.vpid: Invalid input: expected an integer in 1\.\.65535, got 70000/);
      expect(b.refused.get('/fpo/lab1/hosts/hostZ')).toMatch(/not JSON/);
      expect(b.refused.size).toBe(2);
      // Follow: what changes after the revision read.
      const seen: Change[] = [];
      await b.watch((c) => seen.push(c));
      await a.publish({ name: 'vm3-eth0', mac: '02:00:00:00:00:03', ips: [], segment: 'blue', host: 'hostA', vpid: 3 });
      await a.withdraw('vm2-eth0');
      await raw.put('/fpo/lab1/interfaces/vm9-eth0').value('{"name":"vm9-eth0","mac":"02:00:00:00:00:09","segment":"blue","host":"hostA","vpid":9}'); // fixed: taken
      for (let i = 0; i < 50 && seen.length < 3; i++) await sleep(50);
      expect(seen.map((c) => c.type)).toEqual(['put', 'delete', 'put']);
      expect([...b.interfaces.keys()].sort()).toEqual(['vm1-eth0', 'vm3-eth0', 'vm9-eth0']);
      expect(b.refused.has('/fpo/lab1/interfaces/vm9-eth0')).toBe(false);
      // A stops without revoking (as if it died): its lease expires, its host and VMs go; vm9 (someone else's, no lease) stays.
      await a.close(false);
      for (let i = 0; i < 100 && b.hosts.has('hostA'); i++) await sleep(100);
      expect(b.hosts.has('hostA')).toBe(false);
      expect([...b.interfaces.keys()]).toEqual(['vm9-eth0']);
      raw.close();
    } finally {
      await b.close();
      await a.close().catch(() => undefined);
    }
  }, 60_000);

  it('fuzz: any key and value under the prefix is an entry or refused with why, never an exception', () => {
    fc.assert(fc.property(fc.oneof(fc.string(), fc.constantFrom('hosts/a', 'interfaces/vm1', 'segments/s', 'hosts/', 'x/y', 'hosts/a/b')), fc.oneof(fc.string(), fc.json(), fc.constantFrom('{"name":"a","vtep":"1.2.3.4","mac":"02:00:00:00:00:01"}', '{"name":"vm1","mac":"02:00:00:00:00:01","segment":"s","host":"h","vpid":1}', '{"name":"s","vni":0}', '{"__proto__":{"x":1},"name":"a"}')), (k, v) => {
      const r = parseEntry('/fpo/d/', `/fpo/d/${k}`, v);
      expect('error' in r || 'kind' in r).toBe(true);
    }), { numRuns: 2000 });
    expect(parseEntry('/fpo/d/', '/fpo/d/hosts/a', '{"name":"a","vtep":"1.2.3.4","mac":"02:00:00:00:00:01"}')).toEqual({ kind: 'host', value: { name: 'a', vtep: '1.2.3.4', mac: '02:00:00:00:00:01', kind: 'geneve' } });
    expect(parseEntry('/fpo/d/', '/fpo/d/hosts/b', '{"name":"a","vtep":"1.2.3.4","mac":"02:00:00:00:00:01"}')).toEqual({ error: '/fpo/d/hosts/b.name: "a", the key says "b"' });
  });
});

describe('fpo run --etcd', () => {
  it('two hosts publish their VMs; each finds the other\'s VM behind its tunnel, and forgets it when that host dies (its lease expires)', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const url = await etcdMember();
    const dir = tempDir('etcdrun');
    const { writeFileSync } = await import('node:fs');
    const { startService, killAll } = await import('../run-service.js');
    const { runCli } = await import('../../helpers.js');
    const topo = (host: 'A' | 'B', n: number) => {
      const f = join(dir, `${host}.json`);
      writeFileSync(f, JSON.stringify({
        name: `host${host}`, segments: [{ name: 'blue', vni: 5001 }],
        ports: [{ name: 'up0', ppid: 1, role: 'uplink', segments: ['blue'] }, { name: 'vf1', ppid: 11 }],
        nodes: [{ name: `vm${n}`, interfaces: [{ name: `vm${n}-eth0`, mac: `02:00:00:00:0${n}:01`, ip: `10.0.0.${n}`, segment: 'blue', port: 'vf1' }] }],
        tunnel: { vtep: `192.168.0.${n}`, mac: `02:fe:00:00:00:0${n}`, kind: 'vxlan', remotes: [] },
      }));
      return f;
    };
    const a = await startService({ topology: topo('A', 1), out: join(dir, 'a'), extra: ['--etcd', url, '--deployment', 'd1'] });
    const b = await startService({ topology: topo('B', 2), out: join(dir, 'b'), extra: ['--etcd', url, '--deployment', 'd1'] });
    try {
      const trace = (s: typeof a, from: number, to: number) => runCli(['ctl', '-s', s.socket, 'trace', `in_port=vf1,eth_src=02:00:00:00:0${from}:01,eth_dst=02:00:00:00:0${to}:01,udp,ipv4_src=10.0.0.${from},ipv4_dst=10.0.0.${to}`]).stdout;
      // B started after A: it read vm1 at start; A learns vm2 through its watch.
      expect(trace(b, 2, 1)).toMatch(/vm1-eth0 \(through tunnel 0 to hostA\)/);
      for (let i = 0; i < 50 && !/through tunnel/.test(trace(a, 1, 2)); i++) await sleep(100);
      expect(trace(a, 1, 2)).toMatch(/vm2-eth0 \(through tunnel 0 to hostB\)/);
      // A dies (no revoke): its lease expires, and B forgets vm1 (flows revalidated, not flushed).
      a.proc.kill('SIGKILL');
      for (let i = 0; i < 100 && /through tunnel/.test(trace(b, 2, 1)); i++) await sleep(100);
      expect(trace(b, 2, 1)).not.toMatch(/through tunnel/);
      const st = JSON.parse(b.ctl('--json', 'stats').stdout);
      expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
    } finally {
      await b.stop();
      killAll();
    }
  }, 60_000);

  it('etcd gone: the host keeps forwarding with the directory it has and says so; when etcd is back it catches up by revision', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const m = await restartableMember();
    const dir = tempDir('etcdgone');
    const { writeFileSync } = await import('node:fs');
    const { startService, killAll } = await import('../run-service.js');
    const { runCli } = await import('../../helpers.js');
    const { writePcap, eth, ipv4, udp } = await import('../../../fixtures/packets.js');
    const f = join(dir, 'B.json');
    writeFileSync(f, JSON.stringify({
      name: 'hostB', segments: [{ name: 'blue', vni: 5001 }],
      ports: [{ name: 'up0', ppid: 1, role: 'uplink', segments: ['blue'] }, { name: 'vf1', ppid: 11 }],
      nodes: [{ name: 'vm2', interfaces: [{ name: 'vm2-eth0', mac: '02:00:00:00:02:01', ip: '10.0.0.2', segment: 'blue', port: 'vf1' }] }],
      tunnel: { vtep: '192.168.0.2', mac: '02:fe:00:00:00:02', kind: 'vxlan', remotes: [] },
    }));
    const b = await startService({ topology: f, out: join(dir, 'b'), extra: ['--etcd', m.url, '--deployment', 'd2'] });
    try {
      const show = () => JSON.parse(b.ctl('--json', 'show').stdout).directory;
      expect(show()).toMatchObject({ connected: true, hosts: 1, interfaces: 1 });
      const rev0 = show().revision;
      m.kill();
      for (let i = 0; i < 100 && show().connected; i++) await sleep(100);
      expect(show().connected).toBe(false);
      expect(show().lostAt).not.toBeNull();
      // Forwarding goes on: a frame from the uplink to vm2.
      const cap = join(dir, 'x.pcap');
      writePcap(cap, [{ sec: 1, usec: 0, data: eth('02:00:00:00:02:01', '02:00:00:00:09:09', 0x0800, ipv4({ src: '10.0.0.9', dst: '10.0.0.2', proto: 17 }, udp(1, 9, new Uint8Array(10)))) }]);
      b.ctl('inject', cap, '--port', 'up0');
      const st = JSON.parse(b.ctl('--json', 'stats').stdout);
      expect(st.ports.find((p: { name: string }) => p.name === 'vf1').txPackets).toBe(1);
      // etcd back: another host comes; B learns of it through the watch resumed from its revision.
      await m.start();
      const a = new Directory([m.url], 'd2');
      await a.registerHost({ name: 'hostA', vtep: '192.168.0.1', mac: '02:fe:00:00:00:01', kind: 'vxlan' }, 5);
      await a.publish({ name: 'vm1-eth0', mac: '02:00:00:00:01:01', ips: ['10.0.0.1'], segment: 'blue', host: 'hostA', vpid: 1 });
      const trace = () => runCli(['ctl', '-s', b.socket, 'trace', 'in_port=vf1,eth_src=02:00:00:00:02:01,eth_dst=02:00:00:00:01:01,udp,ipv4_src=10.0.0.2,ipv4_dst=10.0.0.1']).stdout;
      for (let i = 0; i < 150 && !/through tunnel/.test(trace()); i++) await sleep(100);
      expect(trace()).toMatch(/vm1-eth0 \(through tunnel 0 to hostA\)/);
      expect(show().connected).toBe(true);
      expect(show().revision).toBeGreaterThan(rev0);
      await a.close();
    } finally {
      await b.stop();
      killAll();
    }
  }, 90_000);

  it('a deployment larger than one gRPC answer (12 000 interfaces) is read whole, in pages at one revision', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const url = await etcdMember();
    const raw = new Etcd3({ hosts: url });
    const puts: Promise<unknown>[] = [];
    for (let i = 0; i < 12_000; i++) {
      puts.push(raw.put(`/fpo/big/interfaces/vm${i}`).value(JSON.stringify({ name: `vm${i}`, mac: '02:00:00:00:00:01', ips: [], segment: 'blue', host: 'h', vpid: 1 + (i % 65535), pad: undefined })).exec());
      if (puts.length === 500) { await Promise.all(puts); puts.length = 0; }
    }
    await Promise.all(puts);
    const d = new Directory([url], 'big');
    const rev = await d.load();
    expect(d.interfaces.size).toBe(12_000);
    expect(d.refused.size).toBe(0);
    expect(rev).toBeGreaterThan(12_000);
    await d.close();
    raw.close();
  }, 60_000);
});
