/**
 * A one-member etcd on loopback for the directory tests (Debian's
 * etcd-server): started on free ports with its data in a temp folder, and
 * killed (SIGKILL) and started again on that data, as an outage would.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { tempDir } from '../../helpers.js';

const children: ChildProcess[] = [];
/** Kills every member started here (afterAll). */
export function killMembers(): void {
  for (const c of children) c.kill('SIGKILL');
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const freePort = () => new Promise<number>((resolve) => { const s = createServer(); s.listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)); }); });

export async function etcdMember(): Promise<string> {
  return (await restartableMember()).url;
}

/** A one-member etcd on loopback that can be killed and started again on its data (the same ports). */
export async function restartableMember(): Promise<{ url: string; kill: () => void; start: () => Promise<void> }> {
  const dir = tempDir('etcd');
  const [client, peer] = [await freePort(), await freePort()];
  const url = `http://127.0.0.1:${client}`;
  let p: ChildProcess | null = null;
  const start = async () => {
    p = spawn('etcd', ['--name', 'm1', '--data-dir', join(dir, 'data'), '--listen-client-urls', url, '--advertise-client-urls', url,
      '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`, '--initial-cluster', `m1=http://127.0.0.1:${peer}`], { stdio: 'ignore' });
    children.push(p);
    const c = new Etcd3({ hosts: url, dialTimeout: 500 });
    for (let i = 0; i < 100; i++) {
      try { await c.get('ping'); break; } catch { await sleep(100); }
    }
    c.close();
  };
  await start();
  return { url, kill: () => p?.kill('SIGKILL'), start };
}

/**
 * A TCP proxy to the member at `target` that can hold: while held it
 * answers nothing — it takes connections and keeps them silent, and the
 * ones open go silent too (as a member that takes connections but does not
 * serve, or a link that went quiet); when it serves again the silent ones
 * are closed (their member may have gone meanwhile) and the held ones go
 * through, late.
 */
export async function holdingProxy(target: string): Promise<{ url: string; hold: () => void; serve: () => void; close: () => void }> {
  const { hostname, port } = new URL(target);
  let holding = false;
  const held: Socket[] = [];
  const piped = new Map<Socket, Socket>();
  const through = (c: Socket) => {
    const u = connect(Number(port), hostname);
    piped.set(c, u);
    // The member gone: the client's connection closed too, unless held (then it stays, silent).
    u.on('close', () => { if (!holding) c.destroy(); });
    c.on('close', () => { piped.delete(c); u.destroy(); });
    u.on('error', () => undefined);
    c.on('error', () => undefined);
    c.pipe(u);
    u.pipe(c);
    c.resume();
  };
  const server = createServer({ pauseOnConnect: true }, (c) => {
    if (holding) held.push(c);
    else through(c);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hold: () => {
      holding = true;
      for (const [c, u] of piped) { c.unpipe(u); u.unpipe(c); c.pause(); u.pause(); }
    },
    serve: () => {
      holding = false;
      for (const c of piped.keys()) c.destroy();
      for (const c of held.splice(0)) if (!c.destroyed) through(c);
    },
    close: () => {
      server.close();
      for (const c of [...piped.keys(), ...held]) c.destroy();
    },
  };
}

/**
 * A TCP proxy to the member at `target` whose answers can come late: armed
 * with strings, the first request carrying them all starts a window in
 * which the answers on its connection (scope 'conn') or on every one
 * ('all') are held delayMs, in order. (A member answering a transaction it
 * has applied only after a while.)
 */
export async function lateProxy(target: string) {
  const { hostname, port } = new URL(target);
  let arm: string[] | null = null;
  let delayMs = 0;
  let windowMs = 0;
  let scope: 'all' | 'conn' = 'all';
  let until = 0;
  let armedConn: Socket | null = null;
  let armedAt = 0;
  const socks = new Set<Socket>();
  const server = createServer((c) => {
    const u = connect(Number(port), hostname);
    socks.add(c); socks.add(u);
    let last = 0;
    c.on('data', (d) => {
      if (arm !== null && arm.every((s) => d.includes(s))) { arm = null; until = Date.now() + windowMs; armedConn = c; armedAt = Date.now(); }
      u.write(d);
    });
    u.on('data', (d) => {
      const late = Date.now() < until && (scope === 'all' || armedConn === c);
      if (!late && last <= Date.now()) { c.write(d); return; }
      const at = Math.max(last, Date.now() + (late ? delayMs : 0));
      last = at;
      setTimeout(() => { if (!c.destroyed) c.write(d); }, at - Date.now());
    });
    const end = () => { c.destroy(); u.destroy(); };
    c.on('close', end); u.on('close', end);
    c.on('error', () => undefined); u.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    armOn: (strings: string[], o: { delayMs: number; windowMs: number; scope: 'all' | 'conn' }) => { arm = strings; delayMs = o.delayMs; windowMs = o.windowMs; scope = o.scope; },
    armedAt: () => armedAt,
    close: () => { server.close(); for (const s of socks) s.destroy(); },
  };
}
