/**
 * Connection tracking (datapath/conntrack/conntrack.ts), in process:
 *   - setup: N new UDP connections committed (distinct tuples, 256 a batch),
 *     connection set-ups per second;
 *   - established: a reply packet of each of those N connections (est+rpl),
 *     packets per second through ct;
 *   - nat: N connections committed with source NAT (64 addresses, ports
 *     1024–65535), then a second packet of each, found and rewritten
 *     (addresses, ports, IP and UDP checksums), packets per second;
 * both with the parse stage before them, as in the datapath, and against
 * the parse stage alone over the same batches (the baseline, measured in
 * the same run): ratio = rate with ct / rate of parse alone. N = 1 M (SHORT:
 * 64 K), tables sized for N; the tables' bytes in the line, and the
 * process's RSS before the first table and with one table of N connections
 * full (rssBytes, rssGrowthBytes: what 1 M tracked connections cost a
 * process; issue 19's goal < 512 MiB).
 *
 *   node dist/bench/conntrack/conntrack.js
 */
import { PacketBatch } from '../../datapath/batch.js';
import { ConnTrack } from '../../datapath/conntrack/conntrack.js';
import { NatRange } from '../../datapath/conntrack/nat.js';
import { MappingTable } from '../../datapath/mapping/mapping-table.js';
import { Parse } from '../../datapath/parse/parse.js';
import { SHORT, emit } from '../harness.js';

const N = SHORT ? 1 << 16 : 1 << 20;
const BATCH = 256;
const FRAME = 60;

/** N UDP frames (a → b: 10.0.x.y:port → 10.1.0.1:53, one tuple each), or their replies, in one buffer. */
function frames(reply: boolean): Uint8Array {
  const buf = new Uint8Array(N * FRAME);
  const dv = new DataView(buf.buffer);
  for (let k = 0; k < N; k++) {
    const o = k * FRAME;
    dv.setUint32(o, 0x02000000); dv.setUint16(o + 4, 2); // dst MAC
    dv.setUint32(o + 6, 0x02000000); dv.setUint16(o + 10, 1); // src MAC
    dv.setUint16(o + 12, 0x0800);
    buf[o + 14] = 0x45;
    dv.setUint16(o + 16, 20 + 8 + 18);
    buf[o + 22] = 64;
    buf[o + 23] = 17;
    const client = 0x0a000000 | (k >>> 6); // 10.0.x.y, 64 ports each
    const port = 10_000 + (k & 63);
    const server = 0x0a010001;
    dv.setUint32(o + 26, reply ? server : client);
    dv.setUint32(o + 30, reply ? client : server);
    dv.setUint16(o + 34, reply ? 53 : port);
    dv.setUint16(o + 36, reply ? port : 53);
    dv.setUint16(o + 38, 8 + 18);
  }
  return buf;
}

function run(buf: Uint8Array, parse: Parse, ct: ConnTrack | null, batch: PacketBatch, sel: Uint16Array, now: number, nat: NatRange | null = null): number {
  batch.batchSetBuffer(buf);
  const t0 = performance.now();
  for (let k = 0; k < N; k += BATCH) {
    const n = Math.min(BATCH, N - k);
    for (let i = 0; i < n; i++) {
      batch.off[i] = (k + i) * FRAME;
      batch.caplen[i] = FRAME;
      batch.wirelen[i] = FRAME;
      batch.inPpid[i] = 1;
      batch.drop[i] = 0;
    }
    batch.count = n;
    parse.process(batch);
    if (ct !== null) ct.process(batch, sel, n, 0, true, now, nat);
  }
  return (performance.now() - t0) / 1000;
}

function main(): void {
  const rss0 = process.memoryUsage().rss;
  let rssFull = 0;
  const mapping = new MappingTable(100, 100);
  const parse = new Parse(mapping.inPortKey);
  const batch = new PacketBatch(BATCH);
  const sel = Uint16Array.from({ length: BATCH }, (_, i) => i);
  const orig = frames(false);
  const reply = frames(true);
  // Baseline first (also warms the parser), best of three.
  let parseOnly = Infinity;
  for (let r = 0; r < 3; r++) parseOnly = Math.min(parseOnly, run(orig, parse, null, batch, sel, 0));
  let setup = Infinity;
  let est = Infinity;
  let created = 0;
  let estOk = 0;
  for (let r = 0; r < 3; r++) {
    const ct = new ConnTrack({ capacity: N });
    setup = Math.min(setup, run(orig, parse, ct, batch, sel, 1000));
    created = ct.stats.created;
    est = Math.min(est, run(reply, parse, ct, batch, sel, 2000));
    estOk = ct.stats.found;
    if (r === 0) rssFull = process.memoryUsage().rss; // one table, N connections in it (the frames' buffers too)
  }
  // Source NAT: the frames are rewritten in place, so each pass gets fresh ones (made before its timing).
  const snat = new NatRange('src', '192.0.2.1', '192.0.2.64', 1024, 65535);
  let natSecs = Infinity;
  let natOk = 0;
  for (let r = 0; r < 3; r++) {
    const ct = new ConnTrack({ capacity: N });
    run(frames(false), parse, ct, batch, sel, 1000, snat);
    const again = frames(false);
    const found0 = ct.stats.found;
    natSecs = Math.min(natSecs, run(again, parse, ct, batch, sel, 2000, snat));
    natOk = ct.stats.found - found0;
  }
  const basePps = Math.round(N / parseOnly);
  for (const [name, secs, check] of [['setup', setup, created], ['established', est, estOk], ['nat', natSecs, natOk]] as const) {
    const seconds = Number(secs.toFixed(6));
    const pps = Math.round(N / seconds);
    emit({
      bench: 'conntrack', case: name, connections: N, packets: N, ok: check, seconds,
      pps, perSecond: name === 'setup' ? pps : undefined,
      nsPerPacketCt: Number(((secs - parseOnly) / N * 1e9).toFixed(1)),
      baseline: 'parse alone', baselinePps: basePps, ratio: Number((pps / basePps).toFixed(3)),
      tableBytes: ConnTrack.bytesFor(N),
      rssBytes: rssFull, rssGrowthBytes: rssFull - rss0, framesBytes: 2 * N * FRAME,
    });
  }
}

main();
