/**
 * bench:directory — the etcd directory at scale (issue 22): a simulator
 * writes a deployment of H hosts and I VM interfaces into a one-member etcd
 * on loopback (Debian's etcd-server); a new host's start-up read (load:
 * every entry fetched and checked) is timed, with the memory it takes; then
 * W watching hosts (light clients of the same code path, Directory.watch)
 * follow M moves (an interface's entry rewritten to another host), and
 * each move's propagation to each watcher — from the put's return to the
 * watcher's change — is measured: p50, p99. Goals: start-up < 2 s at 50 k
 * interfaces, p99 < 100 ms. The baseline in the same run: etcd's own round
 * trip (a get of one key), the floor under any propagation.
 *
 *   node dist/bench/control/directory.js     (FPO_BENCH_SHORT=1: 100 hosts, 2 000 interfaces, 10 watchers)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { Directory } from '../../control/directory/directory.js';
import { SHORT, emit } from '../harness.js';

const HOSTS = SHORT ? 100 : 1000;
const IFACES = SHORT ? 2000 : 50_000;
const WATCHERS = SHORT ? 10 : 100;
const MOVES = SHORT ? 20 : 100;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const freePort = () => new Promise<number>((resolve) => { const s = createServer(); s.listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)); }); });
const pct = (a: number[], p: number) => { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]; };

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'fpo-bench-etcd-'));
  let etcd: ChildProcess | null = null;
  try {
    const [client, peer] = [await freePort(), await freePort()];
    const url = `http://127.0.0.1:${client}`;
    etcd = spawn('etcd', ['--name', 'b', '--data-dir', join(dir, 'data'), '--listen-client-urls', url, '--advertise-client-urls', url, '--quota-backend-bytes', String(4 << 30),
      '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`, '--initial-cluster', `b=http://127.0.0.1:${peer}`], { stdio: 'ignore' });
    const sim = new Etcd3({ hosts: url });
    for (let i = 0; i < 100; i++) { try { await sim.get('x'); break; } catch { await sleep(100); } }
    // The simulator: hosts, then interfaces, 500 puts in flight at a time.
    const prefix = '/fpo/scale/';
    const puts: [string, string][] = [];
    for (let h = 0; h < HOSTS; h++) puts.push([`${prefix}hosts/h${h}`, JSON.stringify({ name: `h${h}`, vtep: `10.${(h >> 8) & 255}.${h & 255}.1`, mac: '02:fe:00:00:00:01', kind: 'vxlan' })]);
    puts.push([`${prefix}segments/blue`, JSON.stringify({ name: 'blue', vni: 5001 })]);
    for (let i = 0; i < IFACES; i++) puts.push([`${prefix}interfaces/vm${i}`, JSON.stringify({ name: `vm${i}`, mac: `02:00:${((i >> 16) & 255).toString(16).padStart(2, '0')}:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}:01`, ips: [], segment: 'blue', host: `h${i % HOSTS}`, vpid: 1 + (Math.floor(i / HOSTS) % 65535) })]);
    const w0 = performance.now();
    for (let k = 0; k < puts.length; k += 500) await Promise.all(puts.slice(k, k + 500).map(([key, v]) => sim.put(key).value(v).exec()));
    const writeMs = performance.now() - w0;
    // A new host's start-up read.
    const heap0 = process.memoryUsage().heapUsed;
    const t0 = performance.now();
    const reader = new Directory([url], 'scale');
    await reader.load();
    const startupMs = performance.now() - t0;
    const heapBytes = process.memoryUsage().heapUsed - heap0;
    const read = { hosts: reader.hosts.size, interfaces: reader.interfaces.size, refused: reader.refused.size };
    await reader.close();
    // Watchers, then moves.
    const watchers: Directory[] = [];
    const seenAt: Map<string, number>[] = [];
    for (let w = 0; w < WATCHERS; w++) {
      const d = new Directory([url], 'scale');
      await d.load();
      const seen = new Map<string, number>();
      await d.watch((c) => { if (c.type === 'put' && c.entry.kind === 'interface') seen.set(`${c.entry.value.name}@${c.entry.value.host}`, performance.now()); });
      watchers.push(d);
      seenAt.push(seen);
    }
    const lat: number[] = [];
    const rtt: number[] = [];
    for (let m = 0; m < MOVES; m++) {
      const i = (m * 7919) % IFACES;
      const to = `h${(i + 1 + m) % HOSTS}`;
      const r0 = performance.now();
      await sim.get(`${prefix}segments/blue`).string();
      rtt.push(performance.now() - r0);
      const p0 = performance.now();
      await sim.put(`${prefix}interfaces/vm${i}`).value(JSON.stringify({ name: `vm${i}`, mac: '02:00:00:00:00:01', ips: [], segment: 'blue', host: to, vpid: 1 })).exec();
      const tag = `vm${i}@${to}`;
      for (let k = 0; k < 200 && seenAt.some((s) => !s.has(tag)); k++) await sleep(2);
      for (const s of seenAt) { const at = s.get(tag); if (at !== undefined) lat.push(Math.max(0, at - p0)); }
    }
    for (const d of watchers) await d.close();
    sim.close();
    emit({
      bench: 'directory', hosts: HOSTS, interfaces: IFACES, watchers: WATCHERS, moves: MOVES,
      writeSeconds: +(writeMs / 1000).toFixed(3), startupMs: +startupMs.toFixed(1), startupHeapBytes: heapBytes, read,
      propagationMs: { p50: +pct(lat, 50).toFixed(2), p99: +pct(lat, 99).toFixed(2), samples: lat.length },
      baseline: 'etcd round trip (a get)', baselineMs: { p50: +pct(rtt, 50).toFixed(2), p99: +pct(rtt, 99).toFixed(2) },
      ratio: +(pct(lat, 99) / Math.max(pct(rtt, 99), 0.001)).toFixed(2),
      goals: { startupMs: 2000, p99Ms: 100, met: startupMs < 2000 && pct(lat, 99) < 100 },
    });
  } finally {
    etcd?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (e) => { process.stderr.write(`bench directory: ${(e as Error).stack}\n`); process.exit(1); });
