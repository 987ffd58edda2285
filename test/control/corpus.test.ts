import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { replay } from '../../control/replay.js';
import { FpoError } from '../../datapath/errors.js';
import { CORPUS, FIXTURES, cleanTemp, runCli, tempDir } from '../helpers.js';

afterAll(cleanTemp);

describe('the tcpdump capture corpus', () => {
  const files = readdirSync(CORPUS).sort();

  it('every file replays (or is refused with a clear error): no crash, no hang, in = out + dropped', () => {
    expect(files.length).toBeGreaterThan(800);
    const topo = join(FIXTURES, 'topology.json');
    let replayed = 0;
    let refused = 0;
    let faulted = 0;
    let packets = 0;
    let dropped = 0;
    for (const f of files) {
      const path = join(CORPUS, f);
      const out = tempDir('corpus');
      try {
        const { report } = replay({ capture: path, topology: topo, outDir: out });
        expect(report.packets.in, f).toBe(report.packets.out + report.packets.dropped);
        const byReason = Object.values(report.drops).reduce((a, b) => a + (b ?? 0), 0);
        expect(byReason, f).toBe(report.packets.dropped);
        if (report.error) {
          faulted++;
          expect(report.error.message, f).toContain(path);
          expect(report.error.message, f).toMatch(/offset \d+/);
        }
        replayed++;
        packets += report.packets.in;
        dropped += report.packets.dropped;
      } catch (e) {
        // Only fpo's own errors may end a replay: a file that is not an Ethernet capture.
        expect(e, f).toBeInstanceOf(FpoError);
        expect((e as FpoError).message, f).toContain(path);
        refused++;
      }
      rmSync(out, { recursive: true, force: true });
    }
    console.log(`corpus: ${replayed} replayed (${faulted} stopped at a fault), ${refused} refused; ${packets} packets, ${dropped} dropped`);
    expect(replayed + refused).toBe(files.length);
    expect(replayed).toBeGreaterThan(400);
    expect(packets).toBeGreaterThan(5000);
  }, 300_000);

  it('the CLI on a sample of the corpus never prints a stack trace', () => {
    const topo = join(FIXTURES, 'topology.json');
    const sample = files.filter((_, i) => i % 40 === 0);
    for (const f of sample) {
      const r = runCli(['replay', join(CORPUS, f), '-t', topo, '-o', tempDir('cli'), '--json'], { timeout: 20_000 });
      expect([0, 1], `${f}: ${r.stderr}`).toContain(r.status);
      expect(r.stderr, f).not.toMatch(/\n\s+at /);
      if (r.status === 0 || r.stdout) {
        const rep = JSON.parse(r.stdout);
        expect(rep.packets.in, f).toBe(rep.packets.out + rep.packets.dropped);
      } else {
        expect(r.stderr.trim().split('\n'), f).toHaveLength(1);
      }
    }
  }, 300_000);
});
