/**
 * fpo run's control side (service.ts: the socket server, shutdown and
 * inject), against a real service. In its own file beside service.test.ts,
 * which covers the requests themselves.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eth, ipv4, udp, writePcap } from '../../fixtures/packets.js';
import { CLI, FIXTURES, cleanTemp, runCli, tempDir } from '../helpers.js';
import { killAll, rawClient, startService, type Svc } from './run-service.js';

afterAll(() => {
  killAll();
  cleanTemp();
});

/** Sends the signal and resolves with the exit and how long it took (ms); a service still there after 10 s is killed (ms: Infinity). */
async function timedStop(s: Svc, signal: NodeJS.Signals): Promise<{ code: number | null; stdout: string; ms: number }> {
  const t0 = performance.now();
  let killed = false;
  const guard = setTimeout(() => { killed = true; s.proc.kill('SIGKILL'); }, 10_000);
  const r = await s.stop(signal);
  clearTimeout(guard);
  return { code: r.code, stdout: r.stdout, ms: killed ? Infinity : performance.now() - t0 };
}

describe('fpo run stops on SIGTERM and SIGINT whatever its clients do', () => {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`${signal} with an idle client, a client that reads nothing and a client half-way through an inject: every connection closed, exit 0 within a second, final counters printed`, async () => {
      const dir = tempDir('stop');
      const s = await startService({ out: join(dir, 'out') });
      const idle = await rawClient(s.socket);
      const deaf = await rawClient(s.socket, { read: false });
      let many = '';
      for (let i = 0; i < 5000; i++) many += `{"id":${i},"cmd":"show"}\n`;
      deaf.send(many);
      // An inject that declares 1 MB and sends a pcap header and one record of it, then stalls.
      const half = await rawClient(s.socket);
      const frame = eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(1, 9, new Uint8Array(18))));
      const cap = join(dir, 'one.pcap');
      writePcap(cap, [{ sec: 1000, usec: 1, data: frame }]);
      half.send(`{"id":1,"cmd":"inject","args":{"bytes":1000000}}\n`);
      half.send(readFileSync(cap));
      // The service has taken all three (the record counted) before the signal.
      let st: any;
      for (let i = 0; i < 100; i++) {
        st = JSON.parse(s.ctl('--json', 'stats').stdout);
        if (st.packets.in === 1 && st.control.clients === 4) break; // the three and this ctl
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(st.packets.in).toBe(1);
      expect(st.control.clients).toBe(4);
      const r = await timedStop(s, signal);
      console.log(`${signal}: exit in ${r.ms.toFixed(0)} ms`);
      expect(r.code).toBe(0);
      expect(r.ms).toBeLessThan(1000);
      const final = JSON.parse(r.stdout);
      expect(final.packets.in).toBe(1);
      // Each client sees its connection closed (the one that did not read, once it reads).
      deaf.sock.resume();
      await Promise.all([idle.closed, deaf.closed, half.closed]);
      expect(idle.lines).toEqual([]);
    }, 60_000);
  }
});
