/**
 * bench/ports/pcap-live.ts in short mode (its own file beside bench.test.ts,
 * so the live benches' suites merge apart): the pcap-live port's rate and
 * the afpacket port's on the same veths, each line's ratio its own fields'.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT, needRoot, needTool } from '../helpers.js';

describe('bench', () => {
  it('ports/pcap-live prints the pcap-live and afpacket ports\' forwarding rates on the same veths (root)', (ctx) => {
    needRoot(ctx, 'ports/pcap-live makes namespaces');
    needTool(ctx, 'cc', 'builds the sender');
    const r = spawnSync(process.execPath, [join(ROOT, 'dist', 'bench', 'ports', 'pcap-live.js')], { encoding: 'utf8', env: { ...process.env, FPO_BENCH_SHORT: '1' }, timeout: 240_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
    expect(lines.map((l) => l.kind)).toEqual(['afpacket', 'afpacket-read', 'pcap-live']);
    for (const l of lines) {
      expect(l.bench).toBe('ports/pcap-live');
      expect(l.pps).toBeGreaterThan(0);
      expect(l.ratio).toBe(Number((l.pps * l.seconds / (lines[0].pps * lines[0].seconds)).toFixed(3)));
    }
  }, 300_000);
});
