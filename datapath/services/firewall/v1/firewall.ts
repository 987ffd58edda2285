/**
 * Firewall v1: the per-port firewall's first version. Its state is each
 * port's connections in a table of its own (a ConnTrack that admits a TCP
 * connection only by its SYN: a stream whose state was lost is invalid, not
 * new — what makes a restart without the state visible), zone = the port's
 * interface VPID. State format 1: ConnTrack's columns, nothing else.
 * Restores its own format, and v2's (format 2) by the downgrade in
 * v2/transform.ts.
 */
import type { PacketBatch } from '../../../batch.js';
import { ConnTrack, type Timeouts } from '../../../conntrack/conntrack.js';
import { FpoError } from '../../../errors.js';
import { type FirewallModule, type FwState, SaveArea, copyColumns } from '../module.js';
import { toV1 } from '../v2/transform.js';

export class FirewallV1 implements FirewallModule {
  readonly version = 'v1';
  readonly stateFormat = 1;
  readonly tracker: ConnTrack;
  private readonly area: SaveArea;
  private readonly restoreArea: SaveArea;

  constructor(capacity: number, timeouts?: Partial<Timeouts>) {
    this.tracker = new ConnTrack({ capacity, timeouts, looseTcp: false });
    this.area = new SaveArea(capacity);
    this.restoreArea = new SaveArea(capacity);
  }

  /** Fast path: ct in the port's zone (the firewall's flows say commit when a rule allows a new connection). */
  process(batch: PacketBatch, sel: Uint16Array, n: number, zone: number, commit: boolean, now: number): void {
    this.tracker.process(batch, sel, n, zone, commit, now, null);
  }

  saveState(zone: number, now: number): FwState {
    const cols = this.tracker.exportZone(zone, now, this.area.get());
    return { version: this.version, format: 1, zone, cols, ruleGen: null, streamTimeout: 0 };
  }

  restoreState(zone: number, state: FwState, fromVersion: string, now: number): number {
    if (state.zone !== zone) throw new FpoError('FPO_ERR_FW_STATE', `v1: a state of zone ${state.zone} offered for zone ${zone}`);
    if (state.version !== fromVersion) throw new FpoError('FPO_ERR_FW_STATE', `v1: a state saved by ${state.version} offered as ${fromVersion}'s`);
    let cols;
    if (state.format === 1) cols = state.cols;
    else if (state.format === 2) cols = toV1(state, copyColumns(state.cols, this.restoreArea.get()), this.tracker.timeouts);
    else throw new FpoError('FPO_ERR_FW_STATE', `v1 restores state formats 1 and 2, not ${state.format}`);
    return this.tracker.importColumns(cols, now);
  }

  forget(zone: number): number {
    return this.tracker.flush(zone);
  }

  connections(zone: number, now: number): number {
    return this.tracker.countZone(zone, now);
  }
}
