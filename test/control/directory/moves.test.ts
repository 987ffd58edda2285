/**
 * VPIDs and moves in the etcd directory (issue 22): a VM interface's VPID
 * is claimed by compare-and-swap and kept across restarts and moves (no two
 * interfaces ever given one, whatever allocates at once); `fpo ctl attach`
 * and `fpo ctl migrate-vm` end in one etcd transaction that moves the VM,
 * and every other host re-points its tunnel. Real etcd members on loopback.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Etcd3 } from 'etcd3';
import { VpidClaims, parseClaim } from '../../../control/directory/vpids.js';
import { Directory } from '../../../control/directory/directory.js';
import { cleanTemp, needTool, runCli, tempDir } from '../../helpers.js';
import { killAll, req, startService, type Svc } from '../run-service.js';
import { etcdMember, freePort, killMembers, sleep } from './etcd-member.js';

afterAll(() => { killAll(); killMembers(); cleanTemp(); });

/** A host's topology: an uplink, VM ports p1..pN, the given interfaces (name, MAC, IP, port). */
function topo(dir: string, host: string, n: number, interfaces: { name: string; mac: string; ip: string; port?: string }[], ports = 3): string {
  const f = join(dir, `${host}-${Math.random().toString(36).slice(2, 8)}.json`);
  writeFileSync(f, JSON.stringify({
    name: host, segments: [{ name: 'blue', vni: 5001 }],
    ports: [{ name: 'up0', ppid: 1, role: 'uplink', segments: ['blue'] }, ...Array.from({ length: ports }, (_, k) => ({ name: `p${k + 1}`, ppid: 11 + k }))],
    nodes: interfaces.map((i) => ({ name: i.name.replace(/-eth0$/, ''), interfaces: [{ name: i.name, mac: i.mac, ip: i.ip, segment: 'blue', ...(i.port !== undefined ? { port: i.port } : {}) }] })),
    tunnel: { vtep: `192.168.0.${n}`, mac: `02:fe:00:00:00:0${n}`, kind: 'vxlan', remotes: [] },
  }));
  return f;
}

/** VM n's interface on port `port`: vmN-eth0, 02:00:00:00:0N:01, 10.0.0.N. */
const vm = (n: number, port: string) => ({ name: `vm${n}-eth0`, mac: `02:00:00:00:0${n}:01`, ip: `10.0.0.${n}`, port });
const show = (s: Svc) => JSON.parse(s.ctl('--json', 'show').stdout);
const vpidOf = (s: Svc, name: string) => (show(s).interfaces as { name: string; vpid: number }[]).find((i) => i.name === name)?.vpid;
/** What host `s` does with a frame from VM n (MAC 02:00:00:00:0n:01, 10.0.0.n) on its port `port` to MAC `to`. */
const trace = (s: Svc, n: number, to: string, port = 'p1') => runCli(['ctl', '-s', s.socket, 'trace', `in_port=${port},eth_src=02:00:00:00:0${n}:01,eth_dst=${to},udp,ipv4_src=10.0.0.${n},ipv4_dst=10.0.0.200`]).stdout;
async function until(what: () => boolean, ms = 8000): Promise<void> {
  for (let t = 0; t < ms && !what(); t += 100) await sleep(100);
}

describe('VPID claims in etcd', () => {
  it('allocators racing on one deployment never give two interfaces one VPID; a name claimed again gets its own back', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const url = await etcdMember();
    // 6 clients (as 6 hosts starting at once), a space of 48 VPIDs, 40 names — each name wanted by 2 clients, all preferring VPID 1..4.
    const clients = Array.from({ length: 6 }, () => new Etcd3({ hosts: url }));
    const claims = clients.map((c) => new VpidClaims(c, 'race', 48));
    const names = Array.from({ length: 40 }, (_, k) => `vm${k}`);
    const got = await Promise.all(names.flatMap((n, k) => [0, 1].map(async (j) => ({ n, ...(await claims[(k + j * 3) % 6].claim(n, 1 + (k % 4))) }))));
    const byName = new Map<string, number>();
    for (const g of got) {
      if (byName.has(g.n)) expect(g.vpid, g.n).toBe(byName.get(g.n));
      byName.set(g.n, g.vpid);
    }
    expect(byName.size).toBe(40);
    expect(new Set(byName.values()).size).toBe(40); // no VPID given twice
    for (const v of byName.values()) expect(v >= 1 && v <= 48).toBe(true);
    // Each name claimed exactly once (the other of its two got claimed: false).
    expect(got.filter((g) => g.claimed).length).toBe(40);
    // A new client (a restart) gets each name's own VPID back, claimed: false; a full space is refused with why.
    const fresh = new VpidClaims(new Etcd3({ hosts: url }), 'race', 48);
    for (const [n, v] of byName) expect(await fresh.claim(n, 7)).toEqual({ vpid: v, claimed: false });
    for (let k = 40; k < 48; k++) await fresh.claim(`vm${k}`, 1);
    await expect(fresh.claim('one-too-many', 1)).rejects.toThrow(/none free in 1\.\.48 \(48 claimed/);
    // Released: both keys go, and the VPID is free again.
    const v3 = byName.get('vm3')!;
    expect(await fresh.release('vm3')).toBe(true);
    expect(await fresh.of('vm3')).toBeNull();
    expect(await fresh.claim('newcomer', v3)).toEqual({ vpid: v3, claimed: true });
    // A broken claim (not a VPID; or a VPID whose key names another interface) is no claim: replaced by a fresh one.
    await clients[0].put('/fpo-vpids/race/by-name/broken').value('12abc');
    expect(await fresh.of('broken')).toBeNull();
    await fresh.release('vm4');
    await fresh.release('vm5');
    await clients[0].put('/fpo-vpids/race/by-name/thief').value(String(v3)); // says newcomer's VPID
    expect(await fresh.of('thief')).toBeNull();
    const b1 = await fresh.claim('broken', 1);
    const t1 = await fresh.claim('thief', v3);
    expect(b1.claimed && t1.claimed).toBe(true);
    expect(t1.vpid).not.toBe(v3);
    expect(fresh.staleReplaced).toBe(2);
    expect(await fresh.of('newcomer')).toBe(v3);
    for (const c of clients) c.close();
  }, 60_000);

  it('fuzz: any claim value is a VPID in range or refused with why', () => {
    fc.assert(fc.property(fc.oneof(fc.string(), fc.integer().map(String), fc.constantFrom('0', '1', '65279', '65280', '007', ' 5', '5 ', '1e3', '-1', '')), (v) => {
      const r = parseClaim(v);
      if (typeof r === 'number') {
        expect(Number.isInteger(r) && r >= 1 && r <= 65279).toBe(true);
        expect(String(r)).toBe(v);
      } else expect(r.error).toMatch(/expected a VPID/);
    }), { numRuns: 3000 });
  });
});

describe('fpo run --etcd: VPIDs kept, VMs moved', () => {
  it('an interface keeps its VPID across restarts (even when the topology lists it elsewhere); uplinks number from 65535 down', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const url = await etcdMember();
    const dir = tempDir('vpidkeep');
    const a = await startService({ topology: topo(dir, 'hostA', 1, [vm(1, 'p1'), vm(2, 'p2')]), out: join(dir, 'a1'), extra: ['--etcd', url, '--deployment', 'k'] });
    const first = { vm1: vpidOf(a, 'vm1-eth0'), vm2: vpidOf(a, 'vm2-eth0') };
    expect(first).toEqual({ vm1: 1, vm2: 2 }); // new to the deployment: each claims its own topology VPID (free)
    expect(show(a).ports.find((p: { name: string }) => p.name === 'up0').vpid).toBe(65535);
    await a.stop();
    // The same host restarted with its VMs listed the other way round and no state file (a new out folder):
    // the topology alone would give vm2 VPID 1 and vm1 VPID 2; etcd keeps theirs.
    const a2 = await startService({ topology: topo(dir, 'hostA', 1, [vm(2, 'p2'), vm(1, 'p1')]), out: join(dir, 'a2'), extra: ['--etcd', url, '--deployment', 'k'] });
    expect({ vm1: vpidOf(a2, 'vm1-eth0'), vm2: vpidOf(a2, 'vm2-eth0') }).toEqual(first);
    // And they are mapped to their ports under those VPIDs.
    const ports = show(a2).ports as { name: string; vpid: number }[];
    expect(ports.find((p) => p.name === 'p1')!.vpid).toBe(first.vm1);
    expect(ports.find((p) => p.name === 'p2')!.vpid).toBe(first.vm2);
    // Another host's VM new to the deployment wanting VPID 1 (its topology's) gets a free one.
    const b = await startService({ topology: topo(dir, 'hostB', 2, [vm(3, 'p1')]), out: join(dir, 'b1'), extra: ['--etcd', url, '--deployment', 'k'] });
    expect(vpidOf(b, 'vm3-eth0')).toBe(3);
    await a2.stop();
    await b.stop();
  }, 60_000);

  it('attach moves a VM to another host in one transaction: its old host and a third re-point their tunnels, the VPID goes with it; a new VM attached is reachable; refusals change nothing', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const url = await etcdMember();
    const dir = tempDir('attach');
    const extra = (metrics?: number) => ['--etcd', url, '--deployment', 'mv', ...(metrics !== undefined ? ['--metrics', `127.0.0.1:${metrics}`] : [])];
    const mport = await freePort();
    const a = await startService({ topology: topo(dir, 'hostA', 1, [vm(1, 'p1'), vm(4, 'p2')]), out: join(dir, 'a'), extra: extra(mport) });
    const b = await startService({ topology: topo(dir, 'hostB', 2, [vm(2, 'p1')]), out: join(dir, 'b'), extra: extra() });
    const c = await startService({ topology: topo(dir, 'hostC', 3, [vm(3, 'p1')]), out: join(dir, 'c'), extra: extra() });
    const raw = new Etcd3({ hosts: url });
    try {
      const vm1 = '02:00:00:00:01:01';
      await until(() => /through tunnel \d+ to hostA/.test(trace(c, 3, vm1)));
      expect(trace(c, 3, vm1)).toMatch(/vm1-eth0 \(through tunnel \d+ to hostA\)/);
      const vpid1 = vpidOf(a, 'vm1-eth0')!;
      // Refusals first: each changes nothing in etcd (its revision) or on B.
      const rev0 = Number((await raw.get('x').exec()).header.revision);
      const before = show(b);
      for (const [args, why] of [
        [{ interface: 'vm1-eth0', port: 'p1' }, /port: "p1" carries interface "vm2-eth0"/],
        [{ interface: 'vm1-eth0', port: 'up0' }, /is an uplink/],
        [{ interface: 'vm1-eth0', port: 'nope' }, /no port named "nope"/],
        [{ interface: 'vm1-eth0', port: 'p2', mac: '02:00:00:00:99:99' }, /a moved VM keeps its MAC, segment and addresses/],
        [{ interface: 'vm9-eth0', port: 'p2' }, /not in the directory; give its --mac and --segment/],
        [{ interface: 'vm9-eth0', port: 'p2', mac: '02:00:00:00:09:01', segment: 'red' }, /segment: "red" is not a segment of this host/],
        [{ interface: 'vm9-eth0', port: 'p2', mac: 'zz', segment: 'blue' }, /mac: .*expected a lowercase MAC/],
        [{ interface: 'vm9-eth0', port: 'p2', mac: '02:00:00:00:03:01', segment: 'blue' }, /mac: 02:00:00:00:03:01 is "vm3-eth0"'s/],
        [{ interface: '../x', port: 'p2' }, /interface: expected a name/],
        [{ interface: 'vm1-eth0', port: 'p2', bogus: 1 }, /bogus/],
      ] as const) {
        const r = await req(b.socket, 'attach', args);
        expect(r.ok, JSON.stringify(args)).toBe(false);
        expect(r.error.message, JSON.stringify(args)).toMatch(why);
      }
      expect(Number((await raw.get('x').exec()).header.revision)).toBe(rev0);
      expect(show(b)).toEqual(before);
      // The move: vm1 on B's port p2, by B.
      const r = JSON.parse(b.ctl('--json', 'attach', 'vm1-eth0', '--port', 'p2').stdout);
      expect(r).toMatchObject({ interface: 'vm1-eth0', port: 'p2', vpid: vpid1, vpidClaimed: false, from: 'hostA', moved: true });
      // One transaction: the entry now says hostB, under B's lease.
      const entry = JSON.parse((await raw.get('/fpo/mv/interfaces/vm1-eth0').string())!);
      expect(entry).toMatchObject({ host: 'hostB', vpid: vpid1 });
      // B delivers to p2 under the same VPID; C re-points at B; A lets it go behind B.
      expect(show(b).ports.find((p: { name: string }) => p.name === 'p2').vpid).toBe(vpid1);
      await until(() => /to hostB/.test(trace(c, 3, vm1)) && /to hostB/.test(trace(a, 4, vm1, 'p2')));
      expect(trace(c, 3, vm1)).toMatch(/vm1-eth0 \(through tunnel \d+ to hostB\)/);
      expect(trace(a, 4, vm1, 'p2')).toMatch(/vm1-eth0 \(through tunnel \d+ to hostB\)/);
      const sa = show(a);
      expect(sa.interfaces.find((i: { name: string }) => i.name === 'vm1-eth0')).toMatchObject({ port: null, behind: 'hostB', vpid: vpid1 });
      expect(sa.directory).toMatchObject({ movedAway: 1, published: ['vm4-eth0'] });
      const metrics = await (await fetch(`http://127.0.0.1:${mport}/metrics`)).text();
      expect(metrics).toMatch(/^fpo_directory_vms_moved_away_total 1$/m);
      expect(metrics).toMatch(/^fpo_directory_connected 1$/m);
      expect(metrics).toMatch(/^fpo_directory_entries\{kind="remote-interfaces"\} 3$/m); // vm1 (on B now), vm2, vm3
      // A new VM started on A's free port: claimed a new VPID, reachable from C without touching C.
      const n = JSON.parse(a.ctl('--json', 'attach', 'vm5-eth0', '--port', 'p1', '--mac', '02:00:00:00:05:01', '--segment', 'blue', '--ip', '10.0.0.5').stdout);
      expect(n).toMatchObject({ interface: 'vm5-eth0', port: 'p1', vpidClaimed: true, from: null, moved: false });
      expect([vpid1, vpidOf(a, 'vm4-eth0'), vpidOf(b, 'vm2-eth0'), vpidOf(c, 'vm3-eth0')]).not.toContain(n.vpid);
      await until(() => /vm5-eth0 \(through tunnel \d+ to hostA\)/.test(trace(c, 3, '02:00:00:00:05:01')));
      expect(trace(c, 3, '02:00:00:00:05:01')).toMatch(/vm5-eth0 \(through tunnel \d+ to hostA\)/);
      // vm1 back to A (p3): C re-points at A again, B lets it go; the VPID is still its own.
      const back = JSON.parse(a.ctl('--json', 'attach', 'vm1-eth0', '--port', 'p3').stdout);
      expect(back).toMatchObject({ vpid: vpid1, from: 'hostB', moved: true });
      await until(() => /to hostA/.test(trace(c, 3, vm1)) && show(b).interfaces.find((i: { name: string }) => i.name === 'vm1-eth0')?.behind === 'hostA');
      expect(trace(c, 3, vm1)).toMatch(/vm1-eth0 \(through tunnel \d+ to hostA\)/);
      expect(show(b).ports.find((p: { name: string }) => p.name === 'p2').vpid).toBe(-1);
      for (const s of [a, b, c]) {
        const st = JSON.parse(s.ctl('--json', 'stats').stdout);
        expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
      }
    } finally {
      raw.close();
      await Promise.all([a.stop(), b.stop(), c.stop()]);
    }
  }, 90_000);

  it('fuzz: attach with any arguments is done or refused; a refusal changes nothing in etcd', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const url = await etcdMember();
    const dir = tempDir('attachfuzz');
    const a = await startService({ topology: topo(dir, 'hostA', 1, [{ name: 'vm1-eth0', mac: '02:00:00:00:01:01', ip: '10.0.0.1', port: 'p1' }], 2), out: join(dir, 'a'), extra: ['--etcd', url, '--deployment', 'fz'] });
    const raw = new Etcd3({ hosts: url });
    const rev = async () => Number((await raw.get('x').exec()).header.revision);
    try {
      const str = fc.oneof(fc.string({ maxLength: 20 }), fc.constantFrom('vm1-eth0', 'vm2-eth0', 'p1', 'p2', 'up0', 'blue', '02:00:00:00:02:01', '10.0.0.2', ''));
      const arg = fc.oneof(str, fc.integer(), fc.constant(null), fc.boolean(), fc.array(str, { maxLength: 2 }));
      await fc.assert(fc.asyncProperty(fc.record({ interface: arg, port: arg, mac: arg, segment: arg, ip: arg }, { requiredKeys: [] }), async (args) => {
        const r0 = await rev();
        const r = await req(a.socket, 'attach', args);
        if (!r.ok) {
          expect(r.error.code).toMatch(/^FPO_ERR_/);
          expect(await rev()).toBe(r0);
        } else {
          // Done: then it is in etcd, this host's, under its VPID.
          const e = JSON.parse((await raw.get(`/fpo/fz/interfaces/${String(args.interface)}`).string())!);
          expect(e).toMatchObject({ host: 'hostA', vpid: r.result.vpid });
        }
      }), { numRuns: 150 });
      const st = JSON.parse(a.ctl('--json', 'stats').stdout);
      expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
    } finally {
      raw.close();
      await a.stop();
    }
  }, 120_000);
});

describe('fpo run --etcd under hostile or racing directory changes', () => {
  it('two attaches racing for one port: one wins, the other changes nothing anywhere (etcd, its old host); a remote entry with a local MAC is not taken; deleting a refused sub-key keeps the entry', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const url = await etcdMember();
    const dir = tempDir('race');
    const extra = ['--etcd', url, '--deployment', 'rc'];
    const a = await startService({ topology: topo(dir, 'hostA', 1, [vm(1, 'p1'), vm(2, 'p2')]), out: join(dir, 'a'), extra });
    const b = await startService({ topology: topo(dir, 'hostB', 2, [vm(3, 'p1')]), out: join(dir, 'b'), extra });
    const raw = new Etcd3({ hosts: url });
    const entry = async (n: string) => JSON.parse((await raw.get(`/fpo/rc/interfaces/${n}`).string())!);
    try {
      await until(() => show(b).directory.interfaces === 3);
      const [r1, r2] = await Promise.all([req(b.socket, 'attach', { interface: 'vm1-eth0', port: 'p2' }), req(b.socket, 'attach', { interface: 'vm2-eth0', port: 'p2' })]);
      expect([r1.ok, r2.ok].filter(Boolean).length).toBe(1);
      const [won, lost] = r1.ok ? ['vm1-eth0', 'vm2-eth0'] : ['vm2-eth0', 'vm1-eth0'];
      expect((r1.ok ? r2 : r1).error.message).toMatch(/port: "p2" carries interface/);
      expect(await entry(won)).toMatchObject({ host: 'hostB' });
      expect(await entry(lost)).toMatchObject({ host: 'hostA' });
      await until(() => show(a).interfaces.find((i: { name: string }) => i.name === won)?.behind === 'hostB');
      await sleep(300);
      expect(show(a).interfaces.find((i: { name: string }) => i.name === lost)).not.toHaveProperty('behind');
      expect(show(a).interfaces.find((i: { name: string }) => i.name === lost).port).not.toBeNull();
      // Someone writes an entry with vm3's MAC (B's local VM) for another host: B does not take it (vm3 keeps its traffic), and says so.
      await raw.put('/fpo/rc/interfaces/evil').value(JSON.stringify({ name: 'evil', mac: '02:00:00:00:03:01', ips: [], segment: 'blue', host: 'hostA', vpid: 999 }));
      await until(() => (show(b).directory.conflicts as { name: string }[]).some((c) => c.name === 'evil'));
      expect(show(b).directory.conflicts).toEqual([{ name: 'evil', why: 'MAC 02:00:00:00:03:01 is vm3-eth0\'s in segment blue' }]);
      expect(trace(b, 3, '02:00:00:00:03:01', 'p1')).not.toMatch(/through tunnel/);
      await raw.delete().key('/fpo/rc/interfaces/evil').exec();
      await until(() => show(b).directory.conflicts.length === 0);
      // A refused sub-key's put and delete: the entry it sits under stays.
      const n0 = show(a).directory.interfaces;
      await raw.put(`/fpo/rc/interfaces/vm3-eth0/x`).value('junk');
      await until(() => show(a).directory.refused.length === 1);
      await raw.delete().key(`/fpo/rc/interfaces/vm3-eth0/x`).exec();
      await until(() => show(a).directory.refused.length === 0);
      expect(show(a).directory.interfaces).toBe(n0);
      expect(trace(a, lost === 'vm1-eth0' ? 1 : 2, '02:00:00:00:03:01', lost === 'vm1-eth0' ? 'p1' : 'p2')).toMatch(/vm3-eth0 \(through tunnel \d+ to hostB\)/);
      // Host B comes back on a new address (its entry rewritten): A's tunnel to it follows, no new tunnel.
      const before = show(a).hosts.length;
      await raw.put('/fpo/rc/hosts/hostB').value(JSON.stringify({ name: 'hostB', vtep: '192.168.9.2', mac: '02:fe:00:00:09:02', kind: 'geneve' }));
      await until(() => show(a).hosts.find((h: { name: string }) => h.name === 'hostB')?.vtep === '192.168.9.2');
      expect(show(a).hosts.length).toBe(before);
      expect(trace(a, lost === 'vm1-eth0' ? 1 : 2, '02:00:00:00:03:01', lost === 'vm1-eth0' ? 'p1' : 'p2')).toMatch(/vm3-eth0 \(through tunnel \d+ to hostB\)/);
    } finally {
      raw.close();
      await Promise.all([a.stop(), b.stop()]);
    }
  }, 90_000);

  it('broken VPID claims (garbage, or two names on one VPID) do not stop a host: each is replaced, the VPIDs stay unique', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const url = await etcdMember();
    const dir = tempDir('stale');
    const raw = new Etcd3({ hosts: url });
    await raw.put('/fpo-vpids/st/by-name/vm1-eth0').value('7');
    await raw.put('/fpo-vpids/st/by-name/vm2-eth0').value('7');
    await raw.put('/fpo-vpids/st/by-vpid/7').value('vm1-eth0');
    await raw.put('/fpo-vpids/st/by-name/vm3-eth0').value('garbage');
    const a = await startService({ topology: topo(dir, 'hostA', 1, [vm(1, 'p1'), vm(2, 'p2'), vm(3, 'p3')]), out: join(dir, 'a'), extra: ['--etcd', url, '--deployment', 'st'] });
    try {
      const v = ['vm1-eth0', 'vm2-eth0', 'vm3-eth0'].map((n) => vpidOf(a, n));
      expect(v[0]).toBe(7); // the one whose keys say each other
      expect(new Set(v).size).toBe(3);
      expect(await raw.get('/fpo-vpids/st/by-name/vm3-eth0').string()).toBe(String(v[2]));
      expect(await raw.get(`/fpo-vpids/st/by-vpid/${v[1]}`).string()).toBe('vm2-eth0');
    } finally {
      raw.close();
      await a.stop();
    }
  }, 60_000);

  it('while an attach waits for etcd, the port it takes is refused to a local migrate and set-mapping: the attach ends, etcd and both hosts agree (a review had a migrate take the port meanwhile: the attach, committed in etcd, was undone, and the VM\'s old host never took it back)', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const { restartableMember, lateProxy } = await import('./etcd-member.js');
    const m = await restartableMember();
    const proxy = await lateProxy(m.url);
    const dir = tempDir('attach-port');
    const b = await startService({ topology: topo(dir, 'hostB', 2, [vm(9, 'p1')]), out: join(dir, 'b'), extra: ['--etcd', m.url, '--deployment', 'ap'] });
    const a = await startService({ topology: topo(dir, 'hostA', 1, [vm(1, 'p1')]), out: join(dir, 'a'), extra: ['--etcd', proxy.url, '--deployment', 'ap'] });
    const raw = new Etcd3({ hosts: m.url });
    try {
      const vm9 = '02:00:00:00:09:01';
      await until(() => /vm9-eth0 \(through tunnel \d+ to hostB\)/.test(trace(a, 1, vm9)), 20_000);
      expect(trace(a, 1, vm9)).toMatch(/vm9-eth0 \(through tunnel \d+ to hostB\)/);
      // The answer to hostA's transaction moving vm9 comes 2.5 s late (etcd has applied it).
      proxy.armOn(['vm9-eth0', '"host":"hostA"'], { delayMs: 2500, windowMs: 1000, scope: 'conn' });
      const pending = req(a.socket, 'attach', { interface: 'vm9-eth0', port: 'p2' });
      await sleep(800);
      const mig = await req(a.socket, 'migrate', { interface: 'vm1-eth0', to: 'p2' });
      expect(mig.ok).toBe(false);
      expect(mig.error.message).toMatch(/^to: p2 is being taken by the attach of vm9-eth0/);
      const map = await req(a.socket, 'set-mapping', { vpid: vpidOf(a, 'vm1-eth0'), ppid: 12 });
      expect(map.ok).toBe(false);
      expect(map.error.message).toMatch(/^ppid: p2 is being taken by the attach of vm9-eth0/);
      const r = await pending;
      expect(r).toMatchObject({ ok: true, result: { interface: 'vm9-eth0', port: 'p2', from: 'hostB', moved: true } });
      // etcd, A and B agree: vm9 is A's, on p2; B let it go behind A; vm1 stayed on p1.
      expect(JSON.parse((await raw.get('/fpo/ap/interfaces/vm9-eth0').string())!)).toMatchObject({ host: 'hostA' });
      const onA = (show(a).ports as { name: string; vpid: number }[]);
      expect(onA.find((p) => p.name === 'p2')!.vpid).toBe(vpidOf(a, 'vm9-eth0'));
      expect(onA.find((p) => p.name === 'p1')!.vpid).toBe(vpidOf(a, 'vm1-eth0'));
      await until(() => (show(b).interfaces as { name: string; behind?: string }[]).find((i) => i.name === 'vm9-eth0')?.behind === 'hostA', 20_000);
      expect((show(b).interfaces as { name: string }[]).find((i) => i.name === 'vm9-eth0')).toMatchObject({ port: null, behind: 'hostA' });
      // Once it ended, the port is another's to take again (refused only as taken: vm9 is on it).
      const after = await req(a.socket, 'migrate', { interface: 'vm1-eth0', to: 'p2' });
      expect(after.ok).toBe(false);
      expect(after.error.message).not.toMatch(/being taken by the attach/);
    } finally {
      raw.close();
      proxy.close();
      await Promise.all([a.stop(), b.stop()]);
      m.kill();
    }
  }, 120_000);
});

describe('fpo ctl migrate-vm with the directory', () => {
  it('ends in one etcd transaction by the destination: the VM is B\'s with its VPID, A lets it go behind B, a third host re-points — no --remote given', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const url = await etcdMember();
    const dir = tempDir('migetcd');
    const MEM = 16 << 20;
    const vfTopo = (host: string, n: number, guest: 'boot' | 'arrival', withVm: boolean) => {
      const f = join(dir, `${host}.json`);
      writeFileSync(f, JSON.stringify({
        name: host, segments: [{ name: 'blue', vni: 5001 }],
        ports: [{ name: 'up0', ppid: 1, role: 'uplink', segments: ['blue'] }, { name: 'vf1', ppid: 2, kind: 'vf', memory: MEM, memoryFile: join(dir, `${host}-vm1.mem`), guest: { dirtyRate: guest === 'boot' ? 2000 : 0, start: guest } }, { name: 'p1', ppid: 3 }],
        nodes: [...(withVm ? [{ name: 'vm1', interfaces: [{ name: 'vm1-eth0', mac: '02:00:00:00:01:01', ip: '10.0.0.1', segment: 'blue', port: 'vf1' }] }] : []),
          { name: `vm${n}x`, interfaces: [{ name: `vm${n}x-eth0`, mac: `02:00:00:00:0${n}:01`, ip: `10.0.0.${n}`, segment: 'blue', port: 'p1' }] }],
        tunnel: { vtep: `192.168.0.${n}`, mac: `02:fe:00:00:00:0${n}`, kind: 'vxlan', remotes: [] },
      }));
      return f;
    };
    const listen = await freePort();
    const extra = ['--etcd', url, '--deployment', 'mig'];
    const a = await startService({ topology: vfTopo('hostA', 2, 'boot', true), out: join(dir, 'a'), extra });
    const b = await startService({ topology: vfTopo('hostB', 3, 'arrival', false), out: join(dir, 'b'), extra: [...extra, '--migrate-listen', `127.0.0.1:${listen}`] });
    const c = await startService({ topology: topo(dir, 'hostC', 4, [{ name: 'vm4-eth0', mac: '02:00:00:00:04:01', ip: '10.0.0.4', port: 'p1' }]), out: join(dir, 'c'), extra });
    const raw = new Etcd3({ hosts: url });
    try {
      const vm1 = '02:00:00:00:01:01';
      await until(() => /to hostA/.test(trace(c, 4, vm1)));
      expect(trace(c, 4, vm1)).toMatch(/vm1-eth0 \(through tunnel \d+ to hostA\)/);
      const vpid1 = vpidOf(a, 'vm1-eth0')!;
      const r = runCli(['ctl', '-s', a.socket, '--json', 'migrate-vm', 'vm1-eth0', '--to', `127.0.0.1:${listen}`, '--dest-port', 'vf1']);
      expect(r.stderr).toBe('');
      const j = JSON.parse(r.stdout);
      expect(j.exact).toBe(true);
      expect(j.destination).toMatchObject({ host: 'hostB', vpid: vpid1, sameVpid: true, guestStarted: true });
      expect(j.sourceMapping.remote).toBe('hostB');
      // The destination's one transaction: the entry is B's, with the VPID it had.
      expect(JSON.parse((await raw.get('/fpo/mig/interfaces/vm1-eth0').string())!)).toMatchObject({ host: 'hostB', vpid: vpid1 });
      expect(show(b).ports.find((p: { name: string }) => p.name === 'vf1').vpid).toBe(vpid1);
      expect(show(a).interfaces.find((i: { name: string }) => i.name === 'vm1-eth0')).toMatchObject({ behind: 'hostB', port: null });
      await until(() => /to hostB/.test(trace(c, 4, vm1)));
      expect(trace(c, 4, vm1)).toMatch(/vm1-eth0 \(through tunnel \d+ to hostB\)/);
      // A's own VM reaches it through the tunnel to B; B delivers it to the VF port.
      expect(trace(a, 2, vm1)).toMatch(/vm1-eth0 \(through tunnel \d+ to hostB\)/);
      expect(runCli(['ctl', '-s', b.socket, 'trace', `in_port=p1,eth_src=02:00:00:00:03:01,eth_dst=${vm1},udp,ipv4_src=10.0.0.3,ipv4_dst=10.0.0.1`]).stdout).toContain(`output: vpid ${vpid1} (vm1-eth0) → ppid 2 (vf1)`);
      for (const s of [a, b, c]) {
        const st = JSON.parse(s.ctl('--json', 'stats').stdout);
        expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
      }
    } finally {
      raw.close();
      await Promise.all([a.stop(), b.stop(), c.stop()]);
    }
  }, 90_000);
});

describe('the directory and a host that loses its lease', () => {
  it('a lease lost (etcd unreachable past twice its TTL) is taken again: the host and its VMs are put back under a new one', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const { restartableMember } = await import('./etcd-member.js');
    const m = await restartableMember();
    const a = new Directory([m.url], 'll', { timeoutMs: 500 });
    const b = new Directory([m.url], 'll');
    try {
      await a.registerHost({ name: 'hostA', vtep: '192.168.0.1', mac: '02:fe:00:00:00:01', kind: 'vxlan' }, 1);
      await a.publish({ name: 'vm1-eth0', mac: '02:00:00:00:01:01', ips: [], segment: 'blue', host: 'hostA', vpid: 1 });
      m.kill();
      await sleep(3500); // past 2 × TTL: the client gives the lease up
      await m.start();
      // The old lease expires in etcd; the new one holds the host and its VM.
      await sleep(2500);
      for (let i = 0; i < 50 && a.registrations < 2; i++) await sleep(100);
      expect(a.registrations).toBe(2);
      await b.load();
      expect([...b.hosts.keys()]).toEqual(['hostA']);
      expect([...b.interfaces.keys()]).toEqual(['vm1-eth0']);
    } finally {
      await a.close();
      await b.close();
    }
  }, 60_000);

  it('taken again while a member takes connections without serving: the old lease is kept alive until the new one holds the entries — the others never see them go', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const { restartableMember, holdingProxy } = await import('./etcd-member.js');
    const m = await restartableMember();
    // The hosts reach one member two ways: directly, and through a proxy that holds (as a member restarted, not yet serving).
    const proxy = await holdingProxy(m.url);
    const TTL = 2;
    const N = 6;
    const hosts = Array.from({ length: N }, () => new Directory([m.url, proxy.url], 'lh'));
    const b = new Directory([m.url], 'lh');
    const gone: string[] = [];
    let puts = 0;
    try {
      for (const [k, a] of hosts.entries()) {
        const n = k + 1;
        await a.registerHost({ name: `host${n}`, vtep: `192.168.0.${n}`, mac: `02:fe:00:00:00:0${n}`, kind: 'vxlan' }, TTL);
        await a.publish({ name: `vm${n}-eth0`, mac: `02:00:00:00:0${n}:01`, ips: [], segment: 'blue', host: `host${n}`, vpid: n });
      }
      await b.load();
      await b.watch((c) => { if (c.type === 'delete') gone.push(`${c.kind}/${c.name}`); else puts++; });
      proxy.hold();
      m.kill();
      // Past twice the TTL each client gives its lease up and tries to take one again; etcd, back, still holds it (for its TTL + 1 s).
      await until(() => hosts.every((a) => a.lastError?.startsWith('lease lost') === true), 15_000);
      expect(hosts.map((a) => a.registrations)).toEqual(hosts.map(() => 1));
      await m.start();
      // Held longer than that: a call or a keep-alive the client sends through the proxy waits.
      await sleep(3 * TTL * 1000);
      proxy.serve();
      await until(() => hosts.every((a) => a.registrations >= 2), 15_000);
      // The new leases kept alive past their TTL; the watch has seen each host and VM put again.
      await sleep(2 * TTL * 1000);
      await until(() => puts >= 2 * N, 10_000);
      expect(gone).toEqual([]);
      expect(hosts.map((a) => a.registrations)).toEqual(hosts.map(() => 2));
      expect([...b.hosts.keys()].sort()).toEqual(hosts.map((_, k) => `host${k + 1}`));
      expect([...b.interfaces.keys()].sort()).toEqual(hosts.map((_, k) => `vm${k + 1}-eth0`));
    } finally {
      for (const a of hosts) await a.close().catch(() => undefined);
      await b.close();
      proxy.close();
    }
  }, 90_000);

  it('a stop (SIGTERM) with a member that answers nothing ends within seconds, its counters printed and its state saved (the watch\'s cancel and the lease\'s revoke waited for ever)', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const { restartableMember, holdingProxy } = await import('./etcd-member.js');
    const m = await restartableMember();
    const proxy = await holdingProxy(m.url);
    const dir = tempDir('silent-stop');
    const a = await startService({ topology: topo(dir, 'hostA', 1, [vm(1, 'p1')]), out: join(dir, 'a'), extra: ['--etcd', proxy.url, '--deployment', 'ss'] });
    try {
      await until(() => show(a).directory?.connected === true, 20_000);
      expect(show(a).directory?.connected).toBe(true);
      proxy.hold();
      const t0 = Date.now();
      const r = await Promise.race([a.stop(), sleep(40_000).then(() => null)]);
      expect(r, 'still running 40 s after SIGTERM').not.toBeNull();
      expect(Date.now() - t0).toBeLessThan(15_000);
      expect(r!.code).toBe(0);
      expect(r!.stdout).toMatch(/packets/); // the final counters
      const { existsSync } = await import('node:fs');
      expect(existsSync(join(dir, 'a', 'fpo-state.json'))).toBe(true);
    } finally {
      a.proc.kill('SIGKILL');
      proxy.close();
      m.kill();
    }
  }, 120_000);

  it('a start against a member that answers nothing is refused within the join\'s bound (it had waited for ever), as FPO_ERR_IO (exit 1), and the process exits; nothing of the host stays in etcd past its lease', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const { restartableMember, holdingProxy } = await import('./etcd-member.js');
    const { spawn } = await import('node:child_process');
    const { CLI } = await import('../../helpers.js');
    const { JOIN_MS } = await import('../../../control/service.js');
    const m = await restartableMember();
    const proxy = await holdingProxy(m.url);
    proxy.hold(); // (from the first connection: taken, never answered)
    const dir = tempDir('silent-start');
    try {
      const t0 = Date.now();
      const proc = spawn(process.execPath, [CLI, 'run', '-t', topo(dir, 'hostS', 1, [vm(1, 'p1')]), '-s', join(dir, 'ctl.sock'), '-o', join(dir, 'out'), '--etcd', proxy.url, '--deployment', 'sst'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      proc.stderr!.on('data', (d) => (stderr += d));
      const code = await Promise.race([new Promise<number | null>((resolve) => proc.on('exit', (c) => resolve(c))), sleep(JOIN_MS + 30_000).then(() => 'running' as const)]);
      if (code === 'running') proc.kill('SIGKILL');
      expect(code, 'still running past the bound').not.toBe('running');
      expect(code).toBe(1); // (an FpoError: FPO_ERR_IO)
      expect(Date.now() - t0).toBeGreaterThanOrEqual(JOIN_MS);
      expect(stderr).toMatch(new RegExp(`^fpo: --etcd ${proxy.url}: etcd did not answer within ${JOIN_MS / 1000} s .*; not started$`, 'm'));
      // The member answering again: whatever it took of the given-up start is under the host's lease (5 s), gone after it.
      proxy.serve();
      const e = new Etcd3({ hosts: m.url });
      try {
        await sleep(7_000);
        const left = await e.getAll().prefix('/fpo/sst/').keys();
        expect(left.filter((k) => /\/(hosts|interfaces)\//.test(k))).toEqual([]); // (segments are the deployment's, not the host's)
      } finally {
        e.close();
      }
    } finally {
      proxy.close();
      m.kill();
    }
  }, 120_000);

  it('etcd gone: an attach is refused as FPO_ERR_IO "etcd (…) unreachable", also once etcd3\'s circuit breaker opens (it had said FPO_ERR_INTERNAL); nothing changes on the host', async (ctx) => {
    needTool(ctx, 'etcd', 'the directory tests run a real etcd member (Debian: etcd-server)');
    const { restartableMember } = await import('./etcd-member.js');
    const m = await restartableMember();
    const dir = tempDir('gone-attach');
    const a = await startService({ topology: topo(dir, 'hostA', 1, [vm(1, 'p1')]), out: join(dir, 'a'), extra: ['--etcd', m.url, '--deployment', 'ga'] });
    try {
      await until(() => show(a).directory?.connected === true, 20_000);
      const before = show(a);
      m.kill();
      await sleep(500);
      const args = { interface: 'vm9-eth0', port: 'p2', mac: '02:00:00:00:09:01', segment: 'blue' };
      const msgs: string[] = [];
      for (let k = 0; k < 4; k++) {
        const r = await req(a.socket, 'attach', args);
        expect(r.ok).toBe(false);
        expect(r.error.code).toBe('FPO_ERR_IO');
        expect(r.error.message).toMatch(new RegExp(`^etcd \\(${m.url}\\) unreachable: `));
        msgs.push(r.error.message);
      }
      expect(msgs.some((x) => /circuit breaker/.test(x))).toBe(true); // (the breaker's refusal met too)
      const after = show(a);
      expect(after.interfaces).toEqual(before.interfaces);
      expect(after.ports).toEqual(before.ports);
    } finally {
      await a.stop();
    }
  }, 120_000);
});
