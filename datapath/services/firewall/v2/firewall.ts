/**
 * Firewall v2: what v1 does, and two things v1's state has no room for:
 *
 *  - each connection's rule generation (kept in its mark): the generation of
 *    its port's rules (Datapath.firewallRuleGen) when it was committed. A
 *    packet in the original direction of a connection committed under older
 *    rules is reported new, not established, so the port's rules decide it
 *    again (allowed: committed anew, under the current generation; refused:
 *    dropped) — a rule change applies to connections already open, which v1
 *    cannot do (it lets an established connection live whatever the rules
 *    say now);
 *  - a timeout class: UDP (and other) connections seen both ways often
 *    enough are streams, with a longer timeout (ConnTrack's `streams`).
 *
 * State format 2: the table (or columns) with STREAM among the states, the
 * rule generations in the marks, and the stream timeout. Restores its own
 * format and v1's (format 1) through the transform in transform.ts.
 */
import type { PacketBatch } from '../../../batch.js';
import { CS_EST, CS_INV, CS_NEW, CS_RPL, DEFAULT_TIMEOUTS, type Timeouts, allocColumns } from '../../../conntrack/conntrack.js';
import { FpoError } from '../../../errors.js';
import { type FirewallModule, type FwState, copyColumns } from '../module.js';
import { PortTables } from '../port-tables.js';
import { fromV1, tableUp } from './transform.js';

export class FirewallV2 extends PortTables implements FirewallModule {
  readonly version = 'v2';
  readonly stateFormat = 2;
  private readonly one = new Uint16Array(1);
  private readonly all: Timeouts;
  /** Reports: packets reported new because their connection's rule generation was old. */
  revalidated = 0;

  /**
   * @param ruleGeneration per zone, the generation of the port's rules now (the datapath's table, read per packet)
   * @param v1Timeouts the timeouts v1's states were counted with (for the transform)
   */
  constructor(capacity: number, private readonly ruleGeneration: Uint32Array, timeouts?: Partial<Timeouts>, private readonly v1Timeouts: Timeouts = DEFAULT_TIMEOUTS) {
    super(capacity, timeouts, true);
    this.all = { ...DEFAULT_TIMEOUTS, ...timeouts };
  }

  /** Fast path: ct in the port's zone, a packet at a time (each one's connection gets or is checked against the rule generation). */
  process(batch: PacketBatch, sel: Uint16Array, n: number, zone: number, commit: boolean, now: number): void {
    const ct = this.own(zone);
    const mark = ct.mark;
    const one = this.one;
    const gen = this.ruleGeneration[zone];
    for (let j = 0; j < n; j++) {
      const i = sel[j];
      if (batch.drop[i] !== 0) continue;
      one[0] = i;
      ct.process(batch, one, 1, zone, commit, now, null);
      const e = ct.lastEntry();
      if (e < 0) continue;
      const id = e >> 1;
      if (commit) { mark[id] = gen; continue; }
      const st = batch.ctState[i];
      if (mark[id] !== gen && (st & (CS_EST | CS_INV | CS_RPL)) === CS_EST) {
        batch.ctState[i] = (st & ~CS_EST) | CS_NEW;
        this.revalidated++;
      }
    }
  }

  saveState(zone: number, _now: number): FwState {
    return { version: this.version, format: 2, zone, table: this.own(zone), cols: null, streamTimeout: this.all.otherStream };
  }

  restoreState(zone: number, state: FwState, fromVersion: string, now: number): number {
    if (state.zone !== zone) throw new FpoError('FPO_ERR_FW_STATE', `v2: a state of zone ${state.zone} offered for zone ${zone}`);
    if (state.version !== fromVersion) throw new FpoError('FPO_ERR_FW_STATE', `v2: a state saved by ${state.version} offered as ${fromVersion}'s`);
    if (state.format !== 1 && state.format !== 2) throw new FpoError('FPO_ERR_FW_STATE', `v2 restores state formats 1 and 2, not ${state.format}`);
    const gen = this.ruleGeneration[zone];
    const mine = this.table(zone);
    if (state.table !== null) {
      // The port's table, taken over (or taken back, after a rollback: the same table), v1's made v2's in place.
      if (state.table === mine && state.format === 2) return mine.count;
      if (mine !== undefined && mine !== state.table && mine.count > 0) throw new FpoError('FPO_ERR_FW_STATE', `v2: zone ${zone} has ${mine.count} connections here already`);
      if (state.table.capacity !== this.capacity) throw new FpoError('FPO_ERR_FW_STATE', `v2: a table of ${state.table.capacity} connections offered, this version's hold ${this.capacity}`);
      const t = state.table;
      const n = state.format === 1 ? tableUp(t, now, gen, this.v1Timeouts, this.all) : t.count;
      t.streams = true;
      this.adopt(zone, t);
      return n;
    }
    const cols = state.cols!;
    const c = state.format === 2 ? cols : fromV1(copyColumns(cols, allocColumns(cols.n)), gen, this.v1Timeouts, this.all);
    return this.own(zone).importColumns(c, now);
  }

  /** Slow path: the rule generation of connection id of zone's port (for list and tests). */
  ruleGenerationOf(zone: number, id: number): number {
    return this.table(zone)?.mark[id] ?? 0;
  }
}
