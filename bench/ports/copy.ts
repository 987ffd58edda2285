/**
 * Copying records from the rx chunk into per-port tx buffers, as execute's
 * direct copies do: arenaCopy (unrolled 32-bit words for short aligned runs)
 * against the baseline copyWithin, for 80-byte records (a 64-byte frame and
 * its pcap header) and 1516-byte records, each to one of 64 ports' buffers
 * in a pseudo-random order. Prints one JSON line per record size; ratio = baseline time /
 * arenaCopy time (above 1: arenaCopy is faster).
 *
 *   node dist/bench/ports/copy.js            (FPO_BENCH_SHORT=1: small N)
 */
import { Arena, arenaCopy } from '../../datapath/arena.js';
import { SHORT, best, emit } from '../harness.js';

const PORTS = 64;
const PORT_BYTES = 32 * 1024;
const CHUNK = 1 << 20;
/** Destination ports as a flow hash spreads them: a fixed pseudo-random sequence (xorshift). */
const PORT_SEQ = new Uint8Array(65536);
for (let i = 0, x = 2463534242; i < PORT_SEQ.length; i++) {
  x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
  PORT_SEQ[i] = (x >>> 0) % PORTS;
}

// Two loops rather than one with a flag, so each call site is monomorphic and
// V8 inlines the copy as it does in execute.
function copyWords(arena: Arena, used: Int32Array, record: number, copies: number): void {
  const { bytes, words } = arena;
  const limit = Math.floor(CHUNK / record) * record;
  used.fill(0);
  let from = 0;
  for (let i = 0; i < copies; i++) {
    const port = PORT_SEQ[i & 65535];
    let u = used[port];
    if (u + record > PORT_BYTES) u = 0;
    arenaCopy(bytes, words, from, record, CHUNK + port * PORT_BYTES + u);
    used[port] = u + record;
    from += record;
    if (from >= limit) from = 0;
  }
}

function copyWithin(arena: Arena, used: Int32Array, record: number, copies: number): void {
  const { bytes } = arena;
  const limit = Math.floor(CHUNK / record) * record;
  used.fill(0);
  let from = 0;
  for (let i = 0; i < copies; i++) {
    const port = PORT_SEQ[i & 65535];
    let u = used[port];
    if (u + record > PORT_BYTES) u = 0;
    const to = CHUNK + port * PORT_BYTES + u;
    bytes.copyWithin(to, from, from + record);
    used[port] = u + record;
    from += record;
    if (from >= limit) from = 0;
  }
}

function run(record: number, copies: number): Record<string, unknown> {
  const arena = new Arena(CHUNK + PORTS * PORT_BYTES);
  const used = new Int32Array(PORTS);
  const base = best(() => copyWithin(arena, used, record, copies));
  const t = best(() => copyWords(arena, used, record, copies));
  const nsPerCopy = Number(((t * 1e9) / copies).toFixed(1));
  const baselineNsPerCopy = Number(((base * 1e9) / copies).toFixed(1));
  // The ratio of the figures as printed, so that the line checks itself.
  return { bench: 'ports/copy', recordBytes: record, copies, ports: PORTS, nsPerCopy, baseline: 'copyWithin', baselineNsPerCopy, ratio: Number((baselineNsPerCopy / nsPerCopy).toFixed(3)) };
}

const n = SHORT ? 20_000 : 2_000_000;
emit(run(80, n));
emit(run(1516, n / 4));
