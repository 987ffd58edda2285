/**
 * The per-port stateful firewall as a versioned module (issue 20; the
 * seed's "upgrading firewall module on port-by-port basis").
 *
 * The firewall's filter — each interface's rules — is compiled by the FPAG
 * into flows in tables 254/255 (control/fpag.ts), whose ct actions carry
 * `fw`: those packets are tracked by the firewall module serving their port
 * (zone = the interface's VPID), not by the datapath's own conntrack. What
 * a version owns is its runtime state — the connections of every port it
 * serves — and how it tracks them. Two versions can be loaded side by side
 * in one datapath, with a port → version table (Datapath.firewallVersion)
 * that the datapath reads for each group of packets it tracks; a port is
 * moved from one to the other by saving its state in the old one, restoring
 * it (transformed) in the new one, and switching its entry
 * (control/firewall-upgrade.ts).
 *
 *   process(batch, sel, n, zone, commit, now)   ct for the port's packets
 *   saveState(zone, now)                         the port's connections, in
 *                                                this version's state format
 *   restoreState(zone, state, fromVersion, now)  takes a state saved by
 *                                                this version or another
 *                                                one it knows (transformed
 *                                                here); all or nothing
 *   forget(zone)                                 drops the port's state (the
 *                                                old version, once the port
 *                                                has moved)
 *
 * A saved state is in memory (FwState: ConnTrack's columns and the
 * version's own) and, for files and tests, a binary form (encodeState,
 * decodeState) that is checked field by field on the way in.
 */
import type { PacketBatch } from '../../batch.js';
import { type ConnColumns, type ConnTrack, allocColumns, columnsCapacity } from '../../conntrack/conntrack.js';
import { FpoError } from '../../errors.js';

/** One port's saved firewall state. */
export interface FwState {
  /** The version that saved it, and its state format. */
  version: string;
  format: number;
  /** The port's zone (its interface's VPID). */
  zone: number;
  /** Its connections. */
  cols: ConnColumns;
  /** Format 2 (v2): per connection, the generation of the port's rules that committed it. */
  ruleGen: Uint32Array | null;
  /** Format 2: the stream timeout (ms) its connections' times left were counted with; 0 in format 1. */
  streamTimeout: number;
}

export interface FirewallModule {
  readonly version: string;
  readonly stateFormat: number;
  /** The connections of the ports this version serves. */
  readonly tracker: ConnTrack;
  process(batch: PacketBatch, sel: Uint16Array, n: number, zone: number, commit: boolean, now: number): void;
  saveState(zone: number, now: number): FwState;
  restoreState(zone: number, state: FwState, fromVersion: string, now: number): number;
  forget(zone: number): number;
  /** Connections of the port now. */
  connections(zone: number, now: number): number;
}

/** The versions this build has, oldest first. */
export const FIREWALL_VERSIONS = ['v1', 'v2'] as const;
export type FirewallVersion = (typeof FIREWALL_VERSIONS)[number];

/** Columns for a module's saves, made once (at the tracker's capacity) and reused: a save never allocates. */
export class SaveArea {
  private cols: ConnColumns | null = null;
  ids: Int32Array = new Int32Array(0);
  constructor(private readonly capacity: number) {}
  get(): ConnColumns {
    if (this.cols === null) {
      this.cols = allocColumns(this.capacity);
      this.ids = new Int32Array(this.capacity);
    }
    return this.cols;
  }
}

// --- the binary form ---

const MAGIC = [0x46, 0x50, 0x4f, 0x46, 0x57, 0x53, 0x54, 0x01]; // "FPOFWST\x01"
const TW2 = 20; // both tuples' words

/** The state as bytes: a header (magic, format, version, zone, count) and the columns, little-endian. */
export function encodeState(s: FwState): Uint8Array {
  const n = s.cols.n;
  const v = new TextEncoder().encode(s.version);
  const per = TW2 * 4 + 1 + 1 + 1 + 1 + 8 + 2 * (1 + 4 + 4 + 4 + 1 + 8 + 8) + (s.format === 2 ? 4 : 0);
  const out = new Uint8Array(8 + 2 + 1 + v.length + 2 + 4 + (s.format === 2 ? 4 : 0) + n * per);
  const d = new DataView(out.buffer);
  out.set(MAGIC, 0);
  let o = 8;
  d.setUint16(o, s.format, true); o += 2;
  out[o++] = v.length;
  out.set(v, o); o += v.length;
  d.setUint16(o, s.zone, true); o += 2;
  d.setUint32(o, n, true); o += 4;
  if (s.format === 2) { d.setUint32(o, s.streamTimeout, true); o += 4; }
  const c = s.cols;
  for (let k = 0; k < n * TW2; k++, o += 4) d.setUint32(o, c.tup[k], true);
  for (const col of [c.proto, c.pstate, c.natKind, c.replied]) { out.set(col.subarray(0, n), o); o += n; }
  for (let k = 0; k < n; k++, o += 8) d.setFloat64(o, c.expiresIn[k], true);
  out.set(c.tcpState.subarray(0, 2 * n), o); o += 2 * n;
  for (const col of [c.seqlo, c.seqhi, c.maxwin]) for (let k = 0; k < 2 * n; k++, o += 4) d.setUint32(o, col[k], true);
  out.set(c.wscale.subarray(0, 2 * n), o); o += 2 * n;
  for (const col of [c.packets, c.bytes]) for (let k = 0; k < 2 * n; k++, o += 8) d.setFloat64(o, col[k], true);
  if (s.format === 2) for (let k = 0; k < n; k++, o += 4) d.setUint32(o, s.ruleGen![k], true);
  return out;
}

/**
 * The state in bytes, checked: refused (FPO_ERR_FW_STATE, the byte offset
 * and what was expected) when the magic, the format, the lengths or a
 * record's fields are wrong. `where` names the source in the message.
 */
export function decodeState(b: Uint8Array, where = 'saved firewall state'): FwState {
  const fail = (offset: number, what: string): never => { throw new FpoError('FPO_ERR_FW_STATE', `${where}: offset ${offset}: ${what}`, { offset }); };
  if (b.length < 17) fail(0, `${b.length} bytes: too short for the header (17 at least)`);
  for (let k = 0; k < 8; k++) if (b[k] !== MAGIC[k]) fail(k, 'not an fpo firewall state (magic FPOFWST\\x01 expected)');
  const d = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let o = 8;
  const format = d.getUint16(o, true); o += 2;
  if (format !== 1 && format !== 2) fail(8, `format ${format} (this build reads 1 and 2)`);
  const vl = b[o++];
  if (o + vl + 6 > b.length) fail(o, 'header cut short');
  const version = new TextDecoder().decode(b.subarray(o, o + vl)); o += vl;
  if (!/^v[0-9]+$/.test(version)) fail(o - vl, `version ${JSON.stringify(version)} (expected v<number>)`);
  const zone = d.getUint16(o, true); o += 2;
  const n = d.getUint32(o, true); o += 4;
  let streamTimeout = 0;
  if (format === 2) {
    if (o + 4 > b.length) fail(o, 'header cut short');
    streamTimeout = d.getUint32(o, true);
    if (streamTimeout < 1000 || streamTimeout > 86_400_000) fail(o, `stream timeout ${streamTimeout} ms (expected 1000..86400000)`);
    o += 4;
  }
  const tupAt = o;
  const per = TW2 * 4 + 1 + 1 + 1 + 1 + 8 + 2 * (1 + 4 + 4 + 4 + 1 + 8 + 8) + (format === 2 ? 4 : 0);
  if (b.length !== o + n * per) fail(o - 4, `${n} records need ${o + n * per} bytes, the state has ${b.length}`);
  const c = allocColumns(n);
  c.n = n;
  for (let k = 0; k < n * TW2; k++, o += 4) c.tup[k] = d.getUint32(o, true);
  for (const col of [c.proto, c.pstate, c.natKind, c.replied]) { col.set(b.subarray(o, o + n)); o += n; }
  for (let k = 0; k < n; k++, o += 8) c.expiresIn[k] = d.getFloat64(o, true);
  c.tcpState.set(b.subarray(o, o + 2 * n)); o += 2 * n;
  for (const col of [c.seqlo, c.seqhi, c.maxwin]) for (let k = 0; k < 2 * n; k++, o += 4) col[k] = d.getUint32(o, true);
  c.wscale.set(b.subarray(o, o + 2 * n)); o += 2 * n;
  for (const col of [c.packets, c.bytes]) for (let k = 0; k < 2 * n; k++, o += 8) col[k] = d.getFloat64(o, true);
  let ruleGen: Uint32Array | null = null;
  if (format === 2) {
    ruleGen = new Uint32Array(n);
    for (let k = 0; k < n; k++, o += 4) ruleGen[k] = d.getUint32(o, true);
  }
  for (let r = 0; r < n; r++) if (c.tup[r * TW2] >>> 16 !== zone) fail(tupAt + r * TW2 * 4, `record ${r}: zone ${c.tup[r * TW2] >>> 16}, the state's is ${zone}`);
  return { version, format, zone, cols: c, ruleGen, streamTimeout };
}

/** A state's records moved to a fresh copy of `n` (for transforms that must not change their input). */
export function copyColumns(from: ConnColumns, into: ConnColumns): ConnColumns {
  const n = from.n;
  if (columnsCapacity(into) < n) throw new FpoError('FPO_ERR_FW_STATE', `${n} connections do not fit a state of ${columnsCapacity(into)}`);
  into.n = n;
  into.tup.set(from.tup.subarray(0, n * TW2));
  for (const k of ['proto', 'pstate', 'natKind', 'replied', 'expiresIn'] as const) (into[k] as Uint8Array).set((from[k] as Uint8Array).subarray(0, n));
  for (const k of ['tcpState', 'seqlo', 'seqhi', 'maxwin', 'wscale', 'packets', 'bytes'] as const) (into[k] as Uint8Array).set((from[k] as Uint8Array).subarray(0, 2 * n));
  return into;
}
