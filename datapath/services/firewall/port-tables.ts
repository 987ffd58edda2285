/**
 * What every version of the firewall keeps the same way: a table per port
 * (zone), made when the port is first seen (or prepared ahead), handed over
 * whole when the port moves to another version. A version is this and its
 * own process, save and restore.
 */
import { ConnTrack, type Timeouts } from '../../conntrack/conntrack.js';

export class PortTables {
  protected readonly byZone = new Map<number, ConnTrack>();

  constructor(
    /** Connections a port's table holds. */
    readonly capacity: number,
    protected readonly timeouts: Partial<Timeouts> | undefined,
    /** This version's tables' streams setting (ConnTrackOptions.streams). */
    private readonly streams: boolean,
  ) {}

  /** The port's table, made at its first use (strict TCP: a stream met mid-way is invalid, not new). */
  protected own(zone: number): ConnTrack {
    let t = this.byZone.get(zone);
    if (t === undefined) {
      t = new ConnTrack({ capacity: this.capacity, timeouts: this.timeouts, looseTcp: false, streams: this.streams });
      this.byZone.set(zone, t);
    }
    return t;
  }

  table(zone: number): ConnTrack | undefined {
    return this.byZone.get(zone);
  }

  tables(): IterableIterator<[number, ConnTrack]> {
    return this.byZone.entries();
  }

  release(zone: number): void {
    this.byZone.delete(zone);
  }

  forget(zone: number): number {
    return this.byZone.get(zone)?.flush() ?? 0;
  }

  connections(zone: number, now: number): number {
    return this.byZone.get(zone)?.countZone(zone, now) ?? 0;
  }

  prepare(zones: number[]): void {
    for (const z of zones) this.own(z);
  }

  /** A table taken over from another version becomes this port's (the port must have none with connections). */
  protected adopt(zone: number, t: ConnTrack): void {
    this.byZone.set(zone, t);
  }
}
