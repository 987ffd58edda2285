/**
 * `fpo ctl migrate-vm` between two `fpo run`s (issue 21): host A runs the
 * VM (its guest on a vf port: its driver and its own writes), host B takes
 * migrations on a TCP address. Frames go to the VM on A before and during
 * the migration; A pre-copies its memory to B round by round (both dirty
 * logs), then stops and copies the rest, and B resumes the VM on its vf
 * port (the interface mapped there: one mapping update). The two memories'
 * SHA-256 at the switch are equal — and not without the VF-side log — and
 * the VM's driver on B consumes frames sent to it there, going on from
 * where it left off on A.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eth, ipv4, udp, writePcap } from '../../../fixtures/packets.js';
import { DRV_FRAMES, DRV_NEXT } from '../../../control/migration/guest-driver.js';
import { REG_HEAD } from '../../../datapath/ports/vf/vf-port.js';
import { cleanTemp, runCli, tempDir } from '../../helpers.js';
import { killAll, startService } from '../run-service.js';
import { createServer } from 'node:net';

afterAll(() => { killAll(); cleanTemp(); });

const MEM = 64 << 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const freePort = () => new Promise<number>((resolve) => { const s = createServer(); s.listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)); }); });

function topo(dir: string, host: string, guest: 'boot' | 'arrival'): string {
  const f = join(dir, `${host}.json`);
  writeFileSync(f, JSON.stringify({
    name: host,
    ports: [{ name: 'up0', ppid: 1, role: 'uplink', segments: ['s'] }, { name: 'vf1', ppid: 2, kind: 'vf', memory: MEM, memoryFile: join(dir, `${host}-vm1.mem`), guest: { dirtyRate: guest === 'boot' ? 3000 : 0, start: guest } }],
    segments: [{ name: 's', vni: 5001 }],
    nodes: [{ name: 'vm1', interfaces: [{ name: 'vm1-eth0', mac: '02:00:00:00:00:01', ip: '10.0.0.1', segment: 's', port: 'vf1' }] }],
    ...(host === 'a' ? { tunnel: { vtep: '192.168.0.1', mac: '02:fe:00:00:00:01', kind: 'vxlan', remotes: [{ name: 'b', vtep: '192.168.0.2', mac: '02:fe:00:00:00:02', uplink: 'up0' }] } } : {}),
  }));
  return f;
}

const u32 = (b: Buffer, at: number) => b.readUInt32LE(at);

async function migration(vfLog: boolean) {
  const dir = tempDir('mig');
  const port = await freePort();
  const a = await startService({ topology: topo(dir, 'a', 'boot'), out: join(dir, 'outa') });
  const b = await startService({ topology: topo(dir, 'b', 'arrival'), out: join(dir, 'outb'), extra: ['--migrate-listen', `127.0.0.1:${port}`] });
  // Frames to the VM, each with its own payload (what the VF writes differs from what was there).
  const capture = (name: string, n: number, from: number) => {
    const f = join(dir, name);
    writePcap(f, Array.from({ length: n }, (_, k) => ({ sec: 1, usec: k, data: eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(5000, 9, Buffer.alloc(200, (from + k) & 255)))) })));
    return f;
  };
  for (let i = 0; i < 100 && u32(readFileSync(join(dir, 'a-vm1.mem')).subarray(0, 8), 0) === 0; i++) await sleep(20); // the guest set its queue up
  a.ctl('inject', capture('before.pcap', 3000, 0));
  // Traffic during the migration: injects in the background while migrate-vm runs.
  let on = true;
  const traffic = (async () => { let k = 1; while (on) { await new Promise<void>((r) => { const c = runCliAsync(['ctl', '-s', a.socket, 'inject', capture(`during${k}.pcap`, 2000, k * 7)]); c.then(() => r()); }); k++; } })();
  await sleep(1500); // injects under way before the migration starts, and through it
  const args = ['ctl', '-s', a.socket, '--json', 'migrate-vm', 'vm1-eth0', '--to', `127.0.0.1:${port}`, '--dest-port', 'vf1', '--remote', 'b', ...(vfLog ? [] : ['--no-vf-log'])];
  const r = await runCliAsync(args);
  on = false;
  await traffic;
  return { dir, a, b, r };
}

/** runCli without blocking the event loop (the traffic loop runs beside it). */
function runCliAsync(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return import('node:child_process').then(({ spawn }) => new Promise((resolve) => {
    const c = spawn(process.execPath, [join(import.meta.dirname, '..', '..', '..', 'dist', 'control', 'cli.js'), ...args]);
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    c.on('close', (status) => resolve({ status, stdout, stderr }));
  }));
}

describe('fpo ctl migrate-vm between two fpo hosts', () => {
  it('under traffic: pre-copy rounds, stop-and-copy, the VM resumed on B with its memory exact (SHA-256 equal at the switch); its driver there goes on; A lets the interface go', async () => {
    const { dir, a, b, r } = await migration(true);
    try {
      expect(r.stderr).toBe('');
      const j = JSON.parse(r.stdout);
      expect(j.exact).toBe(true);
      expect(j.sourceSha256).toBe(j.destination.sha256);
      expect(j.rounds[0].pages).toBe(MEM / 4096); // every page first, then what was dirtied meanwhile
      expect(j.pagesCopied).toBeGreaterThan(MEM / 4096);
      expect(j.destination.guestStarted).toBe(true); // B started the VM's stand-in on the memory that arrived
      expect(j.destination.mapping.vpid).toBeGreaterThan(0);
      expect(j.destination.mapping.flowRewrites).toBe(0); // the destination: one mapping update, no flow rewritten
      // Every frame sent to the VM on A: written into its memory, or counted by the VF with its reason.
      const sa = JSON.parse(a.ctl('--json', 'stats').stdout);
      const vfa = sa.vf.find((v: { port: string }) => v.port === 'vf1');
      const toVf = sa.ports.find((p: { name: string }) => p.name === 'vf1').txPackets;
      expect(vfa.written + vfa.noDescriptor + vfa.notReady + vfa.paused + vfa.tooLong + vfa.badBuffer + vfa.badQueue).toBe(toVf);
      expect(sa.packets.in).toBe(sa.packets.out + sa.packets.dropped);
      expect(j.sourceMapping.remote).toBe('b'); // A: the interface is behind host B now
      // A: the VM is remote now — a frame for it from the underlay is not sent back into it (noDestination), nor to
      // the VF it left (no vpidUnmapped). (Frames from A's own VMs go through the tunnel: test/control/migration/remote.test.ts.)
      const before = JSON.parse(a.ctl('--json', 'stats').stdout);
      const one = join(dir, 'one.pcap');
      writePcap(one, [{ sec: 3, usec: 0, data: eth('02:00:00:00:00:01', '02:00:00:00:00:77', 0x0800, ipv4({ src: '10.0.0.9', dst: '10.0.0.1', proto: 17 }, udp(1, 9, new Uint8Array(10)))) }]);
      a.ctl('inject', one, '--port', 'up0');
      const after = JSON.parse(a.ctl('--json', 'stats').stdout);
      expect(after.packets.in - before.packets.in).toBe(1);
      expect((after.drops.noDestination ?? 0) - (before.drops.noDestination ?? 0)).toBe(1);
      expect(after.drops.vpidUnmapped ?? 0).toBe(before.drops.vpidUnmapped ?? 0);
      // B: the driver goes on from its state in the memory: first what A's VF wrote and it had not taken, then new frames.
      const memB = () => readFileSync(join(dir, 'b-vm1.mem'));
      const atSwitch = u32(memB(), DRV_FRAMES);
      for (let i = 0; i < 200 && u32(memB(), DRV_NEXT) !== u32(memB(), REG_HEAD); i++) await sleep(10);
      const head0 = u32(memB(), REG_HEAD);
      const frames0 = u32(memB(), DRV_FRAMES);
      expect(frames0).toBeGreaterThanOrEqual(atSwitch);
      const f = join(dir, 'after.pcap');
      writePcap(f, Array.from({ length: 50 }, (_, k) => ({ sec: 2, usec: k, data: eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(6000, 9, Buffer.alloc(64, k)))) })));
      b.ctl('inject', f);
      const st = JSON.parse(runCli(['ctl', '-s', b.socket, '--json', 'dirty-log', 'status', 'vf1']).stdout);
      expect(st.vf.completed).toBe(50);
      expect(st.vf.rxNoDescriptor).toBe(0);
      for (let i = 0; i < 200 && u32(memB(), DRV_NEXT) !== u32(memB(), REG_HEAD); i++) await sleep(10);
      const m = memB();
      expect(u32(m, REG_HEAD) - head0).toBe(50);
      expect(u32(m, DRV_FRAMES) - frames0).toBe(50); // every one consumed, in order, by the driver that came with the memory
      expect(u32(m, DRV_NEXT)).toBe(u32(m, REG_HEAD));
    } finally {
      await a.stop();
      await b.stop();
    }
  }, 120_000);

  it('the same without the VF-side log: the memories differ at the switch (the log is what makes the copy exact)', async () => {
    const { a, b, r } = await migration(false);
    try {
      expect(r.stderr).toBe('');
      const j = JSON.parse(r.stdout);
      expect(j.vfLog).toBe(false);
      expect(j.exact).toBe(false);
    } finally {
      await a.stop();
      await b.stop();
    }
  }, 120_000);

  it('the listener takes garbage, a wrong size, an unknown port or interface, and pages before HELLO: each refused or dropped, nothing paused, fpo goes on', async () => {
    const dir = tempDir('migbad');
    const port = await freePort();
    const b = await startService({ topology: topo(dir, 'b', 'arrival'), out: join(dir, 'outb'), extra: ['--migrate-listen', `127.0.0.1:${port}`] });
    try {
      const { connect } = await import('node:net');
      const { jsonFrame, pagesFrame, T_HELLO } = await import('../../../control/migration/wire.js');
      const talk = (bytes: Buffer) => new Promise<string>((resolve) => {
        const c = connect(port, '127.0.0.1', () => c.write(bytes));
        let got = '';
        c.on('data', (d) => (got += d.toString('latin1')));
        c.on('error', () => resolve(got));
        c.on('close', () => resolve(got));
        setTimeout(() => c.destroy(), 500);
      });
      expect(await talk(jsonFrame(T_HELLO, { interface: 'vm1-eth0', destPort: 'vf1', size: 12345 }))).toMatch(/size: 12345 bytes, the port's guest memory has/);
      expect(await talk(jsonFrame(T_HELLO, { interface: 'vm1-eth0', destPort: 'nope', size: MEM }))).toMatch(/nope.{0,3} is no vf port here \(vf1\)/);
      expect(await talk(jsonFrame(T_HELLO, { interface: 'vm9', destPort: 'vf1', size: MEM }))).toMatch(/no interface named .{0,2}vm9/);
      expect(await talk(pagesFrame(Uint32Array.of(0), 1, new Uint8Array(4096), 0))).toMatch(/PAGES before HELLO/);
      expect(await talk(Buffer.from('GET / HTTP/1.0\r\n\r\n'))).toMatch(/a frame of \d+ bytes/);
      // A HELLO then a page past the memory: refused, the VF not left paused.
      expect(await talk(Buffer.concat([jsonFrame(T_HELLO, { interface: 'vm1-eth0', destPort: 'vf1', size: MEM }), pagesFrame(Uint32Array.of(0), 1, new Uint8Array(4096), 0).fill(0xff, 9, 13)]))).toMatch(/page 4294967295 past the memory/);
      const st = JSON.parse(runCli(['ctl', '-s', b.socket, '--json', 'dirty-log', 'status', 'vf1']).stdout);
      expect(st.vf.rxPaused).toBe(0);
      const f = join(dir, 'x.pcap');
      writePcap(f, [{ sec: 1, usec: 0, data: eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(1, 9, new Uint8Array(10)))) }]);
      b.ctl('inject', f);
      const st2 = JSON.parse(runCli(['ctl', '-s', b.socket, '--json', 'dirty-log', 'status', 'vf1']).stdout);
      expect(st2.vf.rxPaused).toBe(0); // not paused: counted as not ready (no VM there yet)
      expect(st2.vf.rxNotReady).toBe(1);
    } finally {
      await b.stop();
    }
  }, 60_000);
});
