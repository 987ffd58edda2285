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

/**
 * One port's saved firewall state: in one process, the port's table itself
 * (`table`: it changes hands, no copy — a save is a reference, a restore
 * takes the table over and transforms it in place); from a file, its
 * connections as columns (`cols`: decodeState), restored into a table.
 */
export interface FwState {
  /** The version that saved it, and its state format (1: v1's; 2: v2's, with each connection's rule generation in its mark). */
  version: string;
  format: number;
  /** The port's zone (its interface's VPID). */
  zone: number;
  table: ConnTrack | null;
  cols: ConnColumns | null;
  /** Format 2: the stream timeout (ms) its connections' times left were counted with; 0 in format 1. */
  streamTimeout: number;
}

/**
 * A version of the per-port firewall. Each port it serves has a table of
 * its own (a ConnTrack of `capacity` connections, made when the port is
 * first seen or taken over), so a port's state moves between versions
 * whole, whatever else either holds.
 */
export interface FirewallModule {
  readonly version: string;
  readonly stateFormat: number;
  /** Fast path: ct for packets sel[0..n) of zone's port (commit: the rules allowed a new connection). */
  process(batch: PacketBatch, sel: Uint16Array, n: number, zone: number, commit: boolean, now: number): void;
  /** The port's state, as this version's format: its table (this version keeps serving from it until release). */
  saveState(zone: number, now: number): FwState;
  /** Takes a state saved by this version or another (transformed here), all or nothing; returns its connections. */
  restoreState(zone: number, state: FwState, fromVersion: string, now: number): number;
  /** The port's table went to another version (after the switch): dropped here, untouched. */
  release(zone: number): void;
  /** The port's connections dropped (its table emptied, kept). */
  forget(zone: number): number;
  /** Connections of the port now. */
  connections(zone: number, now: number): number;
  /** The port's table, if this version has one. */
  table(zone: number): ConnTrack | undefined;
  /** Every port's tables (list, stats, expiry). */
  tables(): IterableIterator<[number, ConnTrack]>;
  /** Slow path: makes (and touches) the tables of these ports if missing, so that no packet or pause pays for fresh memory. */
  prepare(zones: number[]): void;
}

/** The versions this build has, oldest first. */
export const FIREWALL_VERSIONS = ['v1', 'v2'] as const;
export type FirewallVersion = (typeof FIREWALL_VERSIONS)[number];

/** A state's connections as columns (for encodeState: a table's exported, at most its count). */
export function stateColumns(s: FwState, now: number): ConnColumns {
  if (s.cols !== null) return s.cols;
  if (s.table === null) throw new FpoError('FPO_ERR_FW_STATE', 'a firewall state with neither a table nor columns');
  return s.table.exportZone(s.zone, now, allocColumns(Math.max(1, s.table.count)));
}

// --- the binary form ---

const MAGIC = [0x46, 0x50, 0x4f, 0x46, 0x57, 0x53, 0x54, 0x01]; // "FPOFWST\x01"
const TW2 = 20; // both tuples' words

/** The state as bytes: a header (magic, format, version, zone, count) and the columns, little-endian; format 2 with each connection's mark (its rule generation). */
export function encodeState(s: FwState, now = 0): Uint8Array {
  const c = stateColumns(s, now);
  const n = c.n;
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
  for (let k = 0; k < n * TW2; k++, o += 4) d.setUint32(o, c.tup[k], true);
  for (const col of [c.proto, c.pstate, c.natKind, c.replied]) { out.set(col.subarray(0, n), o); o += n; }
  for (let k = 0; k < n; k++, o += 8) d.setFloat64(o, c.expiresIn[k], true);
  out.set(c.tcpState.subarray(0, 2 * n), o); o += 2 * n;
  for (const col of [c.seqlo, c.seqhi, c.maxwin]) for (let k = 0; k < 2 * n; k++, o += 4) d.setUint32(o, col[k], true);
  out.set(c.wscale.subarray(0, 2 * n), o); o += 2 * n;
  for (const col of [c.packets, c.bytes]) for (let k = 0; k < 2 * n; k++, o += 8) d.setFloat64(o, col[k], true);
  if (s.format === 2) for (let k = 0; k < n; k++, o += 4) d.setUint32(o, c.mark[k], true);
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
  if (format === 2) for (let k = 0; k < n; k++, o += 4) c.mark[k] = d.getUint32(o, true);
  for (let r = 0; r < n; r++) if (c.tup[r * TW2] >>> 16 !== zone) fail(tupAt + r * TW2 * 4, `record ${r}: zone ${c.tup[r * TW2] >>> 16}, the state's is ${zone}`);
  return { version, format, zone, table: null, cols: c, streamTimeout };
}

/** A state's records moved to a fresh copy of `n` (for transforms that must not change their input). */
export function copyColumns(from: ConnColumns, into: ConnColumns): ConnColumns {
  const n = from.n;
  if (columnsCapacity(into) < n) throw new FpoError('FPO_ERR_FW_STATE', `${n} connections do not fit a state of ${columnsCapacity(into)}`);
  into.n = n;
  into.tup.set(from.tup.subarray(0, n * TW2));
  for (const k of ['proto', 'pstate', 'natKind', 'replied', 'expiresIn', 'mark'] as const) (into[k] as Uint8Array).set((from[k] as Uint8Array).subarray(0, n));
  for (const k of ['tcpState', 'seqlo', 'seqhi', 'maxwin', 'wscale', 'packets', 'bytes'] as const) (into[k] as Uint8Array).set((from[k] as Uint8Array).subarray(0, 2 * n));
  return into;
}
