import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { MIN_BYTES, adviseHugePages } from '../../datapath/huge-pages.js';
import { FlowTable } from '../../datapath/classifier/flow-table.js';

const THP = '/sys/kernel/mm/transparent_hugepage/enabled';
const hugeKb = () => Number(/AnonHugePages:\s+(\d+)/.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'))?.[1] ?? 0);

describe('huge pages for big tables', () => {
  it('a big array advised is backed by huge pages once touched (transparent huge pages in madvise mode); a small one is left alone', (ctx) => {
    if (!existsSync(THP) || !/\[(madvise|always)\]/.test(readFileSync(THP, 'utf8'))) {
      if (process.env.CI === 'true') throw new Error(`${THP}: transparent huge pages are off here`);
      ctx.skip(`${THP}: transparent huge pages are off`);
      return;
    }
    expect(adviseHugePages(new Uint32Array(1024))).toBe(false);
    expect(adviseHugePages(new Uint8Array(MIN_BYTES - 1))).toBe(false);
    const before = hugeKb();
    const a = new Uint32Array((32 << 20) / 4);
    expect(adviseHugePages(a)).toBe(true);
    for (let i = 0; i < a.length; i += 1024) a[i] = i;
    // Whole 2 MiB pages inside the array: at least 30 MiB of its 32.
    expect(hugeKb() - before).toBeGreaterThanOrEqual(28 << 10);
    expect(a[a.length - 1024]).toBe(a.length - 1024);
  });

  it('a flow table of 400 000 flows asks for them (its keys, counters, slots): a full table\'s memory in huge pages', (ctx) => {
    if (!existsSync(THP) || !/\[(madvise|always)\]/.test(readFileSync(THP, 'utf8'))) {
      if (process.env.CI === 'true') throw new Error(`${THP}: transparent huge pages are off here`);
      ctx.skip(`${THP}: transparent huge pages are off`);
      return;
    }
    const before = hugeKb();
    const t = new FlowTable(400_000);
    t.key.fill(1);
    t.stats.fill(1);
    // key 30 MB and stats 12.8 MB, less their partial 2 MiB pages at each end.
    expect(hugeKb() - before).toBeGreaterThanOrEqual(36 << 10);
  });
});
