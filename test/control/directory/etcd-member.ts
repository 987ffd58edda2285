/**
 * A one-member etcd on loopback for the directory tests (Debian's
 * etcd-server): started on free ports with its data in a temp folder, and
 * killed (SIGKILL) and started again on that data, as an outage would.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
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
