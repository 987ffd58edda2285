/**
 * fpo agent: the guest side of the liveness channel. Runs inside the VM (its
 * network namespace here) and listens on a Unix socket — the stand-in for a
 * virtio-vsock or virtio-serial channel between a guest and its host, which
 * a network namespace shares with the host as a file path. The tunnel
 * monitor probes it again and again ({"type":"probe","seq":N} → {"type":
 * "alive","seq":N}); when the VM's tunnel goes down or comes back, the
 * monitor tells it ({"type":"tunnel","state":"down"|"up","peer","why"}),
 * and the agent prints that as a JSON line for the guest to act on.
 */
import { existsSync, unlinkSync } from 'node:fs';
import { createServer } from 'node:net';

export async function runAgent(socketPath: string, name: string): Promise<void> {
  if (existsSync(socketPath)) unlinkSync(socketPath);
  const server = createServer((c) => {
    let buf = '';
    c.setEncoding('utf8');
    c.on('error', () => undefined);
    c.on('data', (d: string) => {
      buf += d;
      if (buf.length > 65536) { c.destroy(); return; }
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let m: { type?: string; seq?: number; state?: string; peer?: string; why?: string };
        try { m = JSON.parse(line); } catch { continue; }
        if (m.type === 'probe') c.write(JSON.stringify({ type: 'alive', seq: m.seq, agent: name }) + '\n');
        else if (m.type === 'tunnel') {
          process.stdout.write(JSON.stringify({ time: Date.now(), agent: name, tunnel: m.state, peer: m.peer, why: m.why }) + '\n');
          c.write(JSON.stringify({ type: 'ack' }) + '\n');
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  process.stdout.write(JSON.stringify({ time: Date.now(), agent: name, listening: socketPath }) + '\n');
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  server.close();
  if (existsSync(socketPath)) unlinkSync(socketPath);
}
