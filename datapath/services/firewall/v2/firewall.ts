/**
 * Firewall v2: what v1 does, and two things v1's state has no room for:
 *
 *  - each connection's rule generation: the generation of its port's rules
 *    (Datapath.setFirewallRuleGeneration) when it was committed. A packet
 *    in the original direction of a connection committed under older rules
 *    is reported new, not established, so the port's rules decide it again
 *    (allowed: committed anew, under the current generation; refused:
 *    dropped) — a rule change applies to connections already open, which
 *    v1 cannot do (it lets an established connection live whatever the
 *    rules say now);
 *  - a timeout class: UDP (and other) connections seen both ways often
 *    enough are streams, with a longer timeout (ConnTrack's `streams`).
 *
 * State format 2: ConnTrack's columns with STREAM among the states, the
 * rule generations, and the stream timeout. Restores its own format and
 * v1's (format 1) through the transform in transform.ts.
 */
import type { PacketBatch } from '../../../batch.js';
import { CS_EST, CS_INV, CS_NEW, CS_RPL, ConnTrack, DEFAULT_TIMEOUTS, type Timeouts } from '../../../conntrack/conntrack.js';
import { FpoError } from '../../../errors.js';
import { type FirewallModule, type FwState, SaveArea, copyColumns } from '../module.js';
import { fromV1 } from './transform.js';

export class FirewallV2 implements FirewallModule {
  readonly version = 'v2';
  readonly stateFormat = 2;
  readonly tracker: ConnTrack;
  /** Per connection id: the rule generation it was committed under. */
  private readonly ruleGen: Uint32Array;
  private readonly area: SaveArea;
  private readonly restoreArea: SaveArea;
  private readonly saveGen: Uint32Array;
  private readonly restoreGen: Uint32Array;
  private readonly one = new Uint16Array(1);
  /** Reports: packets reported new because their connection's rule generation was old. */
  revalidated = 0;

  /**
   * @param ruleGeneration per zone, the generation of the port's rules now (the datapath's table, read per packet)
   * @param v1Timeouts the timeouts v1's states were counted with (for the transform)
   */
  constructor(capacity: number, private readonly ruleGeneration: Uint32Array, timeouts?: Partial<Timeouts>, private readonly v1Timeouts: Timeouts = DEFAULT_TIMEOUTS) {
    this.tracker = new ConnTrack({ capacity, timeouts, looseTcp: false, streams: true });
    this.ruleGen = new Uint32Array(capacity);
    this.area = new SaveArea(capacity);
    this.restoreArea = new SaveArea(capacity);
    this.saveGen = new Uint32Array(capacity);
    this.restoreGen = new Uint32Array(capacity);
  }

  /** Fast path: ct in the port's zone, a packet at a time (each one's connection gets or is checked against the rule generation). */
  process(batch: PacketBatch, sel: Uint16Array, n: number, zone: number, commit: boolean, now: number): void {
    const ct = this.tracker;
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
      if (commit) { this.ruleGen[id] = gen; continue; }
      const st = batch.ctState[i];
      if (this.ruleGen[id] !== gen && (st & (CS_EST | CS_INV | CS_RPL)) === CS_EST) {
        batch.ctState[i] = (st & ~CS_EST) | CS_NEW;
        this.revalidated++;
      }
    }
  }

  saveState(zone: number, now: number): FwState {
    const cols = this.tracker.exportZone(zone, now, this.area.get(), this.area.ids);
    const ids = this.area.ids;
    for (let r = 0; r < cols.n; r++) this.saveGen[r] = this.ruleGen[ids[r]];
    return { version: this.version, format: 2, zone, cols, ruleGen: this.saveGen, streamTimeout: this.tracker.timeouts.otherStream };
  }

  restoreState(zone: number, state: FwState, fromVersion: string, now: number): number {
    if (state.zone !== zone) throw new FpoError('FPO_ERR_FW_STATE', `v2: a state of zone ${state.zone} offered for zone ${zone}`);
    if (state.version !== fromVersion) throw new FpoError('FPO_ERR_FW_STATE', `v2: a state saved by ${state.version} offered as ${fromVersion}'s`);
    this.restoreArea.get(); // its columns and ids, made once
    let cols = state.cols;
    let gens: Uint32Array;
    if (state.format === 1) {
      gens = this.restoreGen;
      cols = fromV1(copyColumns(state.cols, this.restoreArea.get()), gens, this.ruleGeneration[zone], this.v1Timeouts, this.tracker.timeouts);
    } else if (state.format === 2) {
      if (state.ruleGen === null || state.ruleGen.length < cols.n) throw new FpoError('FPO_ERR_FW_STATE', 'v2: a format 2 state without its rule generations');
      gens = state.ruleGen;
    } else throw new FpoError('FPO_ERR_FW_STATE', `v2 restores state formats 1 and 2, not ${state.format}`);
    const ids = this.restoreArea.ids; // at capacity: importColumns refuses more
    const n = this.tracker.importColumns(cols, now, ids);
    for (let r = 0; r < n; r++) this.ruleGen[ids[r]] = gens[r];
    return n;
  }

  forget(zone: number): number {
    return this.tracker.flush(zone);
  }

  connections(zone: number, now: number): number {
    return this.tracker.countZone(zone, now);
  }

  /** Slow path: the rule generation of connection id (for list and tests). */
  ruleGenerationOf(id: number): number {
    return this.ruleGen[id];
  }
}
