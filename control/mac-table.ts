/**
 * MacTable: a segment's MAC addresses → what answers to them (the FPAG's
 * L2 table), found by the two words a flow key holds a MAC in (32 bits, 16
 * bits) with no allocation. A Map keyed by the 48-bit MAC as one number
 * boxed that number at every lookup and hashed a double: ~45 ns of a flow
 * set-up's decision (measured with bench/control/upcall's profile).
 *
 * Open addressing in typed arrays (linear probing, at most half full,
 * doubled as it fills); a removal builds the table again (slow path: an
 * interface leaving).
 */
export class MacTable<V> {
  private hi = new Uint32Array(16);
  /** lo + 1 (0: empty). */
  private lo = new Int32Array(16);
  private at = new Int32Array(16);
  private values: V[] = [];
  private macs: number[] = [];
  /** Slow path: a MAC's index in values/macs. */
  private readonly index = new Map<number, number>();
  get size(): number { return this.values.length; }

  private static hash(hi: number, lo: number): number {
    let h = Math.imul(hi ^ (lo << 16) ^ lo, 0x9e3779b1);
    h ^= h >>> 15;
    return h >>> 0;
  }

  /** The value of the MAC whose first four bytes are `hi` and last two `lo`, or undefined. */
  get(hi: number, lo: number): V | undefined {
    const mask = this.lo.length - 1;
    for (let p = MacTable.hash(hi, lo) & mask; ; p = (p + 1) & mask) {
      const l = this.lo[p];
      if (l === 0) return undefined;
      if (l === lo + 1 && this.hi[p] === hi) return this.values[this.at[p]];
    }
  }

  /** The value of `mac` (a 48-bit number: flow-key.ts macNumber), or undefined. */
  getMac(mac: number): V | undefined {
    return this.get(Math.floor(mac / 65536) >>> 0, mac % 65536);
  }

  setMac(mac: number, v: V): void {
    const k = this.index.get(mac);
    if (k !== undefined) { this.values[k] = v; return; }
    this.index.set(mac, this.values.length);
    this.values.push(v);
    this.macs.push(mac);
    if (2 * this.values.length > this.lo.length) this.rebuild(2 * this.lo.length);
    else this.place(mac, this.values.length - 1);
  }

  deleteMac(mac: number): boolean {
    const k = this.index.get(mac);
    if (k === undefined) return false;
    // The last entry takes the removed one's place.
    const last = this.values.length - 1;
    this.values[k] = this.values[last];
    this.macs[k] = this.macs[last];
    this.index.set(this.macs[k], k);
    this.values.pop();
    this.macs.pop();
    this.index.delete(mac);
    this.rebuild(this.lo.length);
    return true;
  }

  private place(mac: number, k: number): void {
    const hi = Math.floor(mac / 65536) >>> 0;
    const lo = mac % 65536;
    const mask = this.lo.length - 1;
    let p = MacTable.hash(hi, lo) & mask;
    while (this.lo[p] !== 0) p = (p + 1) & mask;
    this.hi[p] = hi;
    this.lo[p] = lo + 1;
    this.at[p] = k;
  }

  private rebuild(slots: number): void {
    this.hi = new Uint32Array(slots);
    this.lo = new Int32Array(slots);
    this.at = new Int32Array(slots);
    for (let k = 0; k < this.macs.length; k++) this.place(this.macs[k], k);
  }
}
