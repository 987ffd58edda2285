/**
 * bench/control/bfd-socket.ts in short mode: the BFD endpoint's way of
 * reading TTL-checked packets (a raw socket through koffi, filtered in the
 * kernel) takes every BFD packet sent and reads none of the traffic beside
 * it. (raw-socket, the alternative it is measured against, is not a
 * dependency: its lines appear only where it is installed.)
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT, needRoot } from '../helpers.js';

describe('bench', () => {
  it('control/bfd-socket: the koffi raw reader accepts every BFD packet and reads no foreign one (root)', (ctx) => {
    needRoot(ctx, 'raw sockets');
    const r = spawnSync(process.execPath, [join(ROOT, 'dist', 'bench', 'control', 'bfd-socket.js')], { encoding: 'utf8', env: { ...process.env, FPO_BENCH_SHORT: '1' }, timeout: 240_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>).filter((l) => l.reader === 'koffi');
    expect(lines.map((l) => l.foreignPerBfd)).toEqual([0, 4]);
    for (const l of lines) {
      expect(l.accepted).toEqual([l.sent]);
      expect(l.foreignRead).toEqual([0]);
      expect(l.cpuUsPerBfdPacket).toBeGreaterThan(0);
    }
  }, 300_000);
});
