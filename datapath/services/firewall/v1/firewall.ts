/**
 * Firewall v1: the per-port firewall's first version. Its state is each
 * port's connections in the port's own table (PortTables: a ConnTrack that
 * admits a TCP connection only by its SYN — a stream whose state was lost
 * is invalid, not new, which is what makes a restart without the state
 * visible), zone = the port's interface VPID. State format 1: the table
 * (or its columns), nothing else. Restores its own format, and v2's
 * (format 2) by the downgrade in v2/transform.ts.
 */
import type { PacketBatch } from '../../../batch.js';
import { type Timeouts, DEFAULT_TIMEOUTS, allocColumns } from '../../../conntrack/conntrack.js';
import { FpoError } from '../../../errors.js';
import { type FirewallModule, type FwState, copyColumns } from '../module.js';
import { PortTables } from '../port-tables.js';
import { tableDown, toV1 } from '../v2/transform.js';

export class FirewallV1 extends PortTables implements FirewallModule {
  readonly version = 'v1';
  readonly stateFormat = 1;

  constructor(capacity: number, timeouts?: Partial<Timeouts>) {
    super(capacity, timeouts, false);
  }

  process(batch: PacketBatch, sel: Uint16Array, n: number, zone: number, commit: boolean, now: number): void {
    this.own(zone).process(batch, sel, n, zone, commit, now, null);
  }

  saveState(zone: number, _now: number): FwState {
    return { version: this.version, format: 1, zone, table: this.own(zone), cols: null, streamTimeout: 0 };
  }

  restoreState(zone: number, state: FwState, fromVersion: string, now: number): number {
    if (state.zone !== zone) throw new FpoError('FPO_ERR_FW_STATE', `v1: a state of zone ${state.zone} offered for zone ${zone}`);
    if (state.version !== fromVersion) throw new FpoError('FPO_ERR_FW_STATE', `v1: a state saved by ${state.version} offered as ${fromVersion}'s`);
    if (state.format !== 1 && state.format !== 2) throw new FpoError('FPO_ERR_FW_STATE', `v1 restores state formats 1 and 2, not ${state.format}`);
    const mine = this.table(zone);
    if (state.table !== null) {
      // The port's table, taken over (or taken back, after a rollback: the same table), v2's marks and streams undone in place.
      if (state.table === mine && state.format === 1) return mine.count;
      if (mine !== undefined && mine !== state.table && mine.count > 0) throw new FpoError('FPO_ERR_FW_STATE', `v1: zone ${zone} has ${mine.count} connections here already`);
      if (state.table.capacity !== this.capacity) throw new FpoError('FPO_ERR_FW_STATE', `v1: a table of ${state.table.capacity} connections offered, this version's hold ${this.capacity}`);
      const t = state.table;
      const n = state.format === 2 ? tableDown(t, now, state.streamTimeout, { ...DEFAULT_TIMEOUTS, ...this.timeouts }) : t.count;
      t.streams = false;
      this.adopt(zone, t);
      return n;
    }
    // Columns (a state from a file): into the port's table, transformed on a copy first.
    const cols = state.cols!;
    const c = state.format === 1 ? cols : toV1(copyColumns(cols, allocColumns(cols.n)), state.streamTimeout, { ...DEFAULT_TIMEOUTS, ...this.timeouts });
    return this.own(zone).importColumns(c, now);
  }
}
