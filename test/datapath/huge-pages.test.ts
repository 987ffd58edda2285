/**
 * Each case runs in a fresh Node process: a big array allocated where a
 * freed one was comes back already written (zeroed), its small pages in
 * place before the advice — this test's own earlier arrays had made the
 * count flaky in one process.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, type TestContext } from 'vitest';
import { ROOT } from '../helpers.js';

const THP = '/sys/kernel/mm/transparent_hugepage/enabled';

function needThp(ctx: TestContext): void {
  if (existsSync(THP) && /\[(madvise|always)\]/.test(readFileSync(THP, 'utf8'))) return;
  if (process.env.CI === 'true') throw new Error(`${THP}: transparent huge pages are off here`);
  ctx.skip(`${THP}: transparent huge pages are off`);
}

/** Runs `body` (an ES module's code; `dist` is the compiled tree's URL) in a fresh node; returns what it printed as JSON, and the KiB of huge pages it gained. */
function fresh(body: string): { out: Record<string, unknown>; hugeKb: number } {
  const code = `
    import { readFileSync } from 'node:fs';
    const dist = ${JSON.stringify(new URL(`file://${join(ROOT, 'dist')}/`).href)};
    const huge = () => Number(/AnonHugePages:\\s+(\\d+)/.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'))?.[1] ?? 0);
    const before = huge();
    const out = await (async () => { ${body} })();
    console.log(JSON.stringify({ out, hugeKb: huge() - before }));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

describe('huge pages for big tables', () => {
  it('a big array advised is backed by huge pages once touched (transparent huge pages in madvise mode); a small one is left alone, and one not advised gets none', (ctx) => {
    needThp(ctx);
    const advised = fresh(`
      const { adviseHugePages, MIN_BYTES } = await import(dist + 'datapath/huge-pages.js');
      const small = [adviseHugePages(new Uint32Array(1024)), adviseHugePages(new Uint8Array(MIN_BYTES - 1))];
      const a = new Uint32Array((32 << 20) / 4);
      const ok = adviseHugePages(a);
      for (let i = 0; i < a.length; i += 1024) a[i] = i;
      return { small, ok, last: a[a.length - 1024] };`);
    expect(advised.out).toEqual({ small: [false, false], ok: true, last: (32 << 20) / 4 - 1024 });
    // Whole 2 MiB pages inside the array: at least 28 MiB of its 32.
    expect(advised.hugeKb).toBeGreaterThanOrEqual(28 << 10);
    const plain = fresh(`
      const a = new Uint32Array((32 << 20) / 4);
      for (let i = 0; i < a.length; i += 1024) a[i] = i;
      return {};`);
    expect(plain.hugeKb).toBeLessThan(8 << 10);
  });

  it("a flow table of 400 000 flows asks for them (its keys, counters, slots): a full table's memory in huge pages", (ctx) => {
    needThp(ctx);
    const t = fresh(`
      const { FlowTable } = await import(dist + 'datapath/classifier/flow-table.js');
      const t = new FlowTable(400000);
      t.key.fill(1);
      t.stats.fill(1);
      return { capacity: t.capacity };`);
    expect(t.out).toEqual({ capacity: 400_000 });
    // key 30 MB and stats 12.8 MB, less their partial 2 MiB pages at each end.
    expect(t.hugeKb).toBeGreaterThanOrEqual(36 << 10);
  });
});
