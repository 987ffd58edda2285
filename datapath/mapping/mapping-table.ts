/**
 * MappingTable: VPID → PPID, and back. Held by the NIC, written only by the
 * control plane (through the datapath API). Flows output to VPIDs; the PPID
 * is looked up here when a packet is emitted, so moving an interface to
 * another port is one `set` and no flow changes.
 *
 * One VPID maps to at most one PPID and one PPID carries at most one VPID;
 * `set` moves a VPID off its old port and takes the new port from whatever
 * VPID had it. The reverse direction gives each receiving port its in_port
 * key value (the VPID of the interface behind it).
 */
import { PORT_PPID_BIT } from '../classifier/flow-key.js';

export const NO_PPID = -1;
export const MAX_VPID = 0xffffff;

export class MappingTable {
  readonly maxVpid: number;
  readonly maxPpid: number;
  /** PPID of each VPID, or NO_PPID. */
  readonly toPpid: Int32Array;
  /** VPID of each PPID, or -1. */
  readonly toVpid: Int32Array;
  /** in_port key value of each PPID: its VPID, or PORT_PPID_BIT|PPID when none. Parse reads it. */
  readonly inPortKey: Uint32Array;
  /**
   * 1 for a PPID whose port faces a VM (an access port): parse drops any
   * VLAN tag but a lone priority tag (VID 0) arriving on it (vlanFromVm).
   * Written by the control plane ('port-role'); a role is the port's, so it
   * stays when an interface moves.
   */
  readonly vmPort: Uint8Array;
  /** Mapping changes so far (set or clear). */
  changes = 0;

  constructor(maxVpid: number, maxPpid: number) {
    this.maxVpid = maxVpid;
    this.maxPpid = maxPpid;
    this.toPpid = new Int32Array(maxVpid + 1).fill(NO_PPID);
    this.toVpid = new Int32Array(maxPpid + 1).fill(-1);
    this.inPortKey = new Uint32Array(maxPpid + 1);
    this.vmPort = new Uint8Array(maxPpid + 1);
    for (let p = 0; p <= maxPpid; p++) this.inPortKey[p] = (PORT_PPID_BIT | p) >>> 0;
  }

  /** Maps vpid to ppid. Range checks are the caller's (control validates). */
  set(vpid: number, ppid: number): void {
    const oldPpid = this.toPpid[vpid];
    if (oldPpid === ppid) return;
    if (oldPpid !== NO_PPID) this.unlinkPort(oldPpid);
    const oldVpid = this.toVpid[ppid];
    if (oldVpid >= 0) this.toPpid[oldVpid] = NO_PPID;
    this.toPpid[vpid] = ppid;
    this.toVpid[ppid] = vpid;
    this.inPortKey[ppid] = vpid;
    this.changes++;
  }

  /** Removes vpid's mapping; packets to it are then dropped as vpidUnmapped. */
  clear(vpid: number): void {
    const ppid = this.toPpid[vpid];
    if (ppid === NO_PPID) return;
    this.toPpid[vpid] = NO_PPID;
    this.unlinkPort(ppid);
    this.changes++;
  }

  private unlinkPort(ppid: number): void {
    this.toVpid[ppid] = -1;
    this.inPortKey[ppid] = (PORT_PPID_BIT | ppid) >>> 0;
  }
}
