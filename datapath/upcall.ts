/**
 * The messages between the datapath and the FPAG. The datapath never calls
 * control/: on a miss it hands an Upcall to its sink, and the control plane
 * answers with messages (flow installs, mapping changes) through
 * Datapath.apply. In a replay the sink answers before it returns; the types
 * are plain data so that the FPAG can as well live in another thread.
 */
import type { Action } from './actions/action-sets.js';

/** A packet that matched no flow. */
export interface Upcall {
  type: 'upcall';
  /** PPID the packet arrived on. */
  inPpid: number;
  /** The packet's flow key (KEY_WORDS words; flow-key.ts). */
  key: Uint32Array;
  /** The packet's first bytes (up to 128), for the FPAG's logs and traces. */
  head: Uint8Array;
}

/** Install a megaflow: packets whose key & mask equals key & mask get `actions`. */
export interface FlowInstall {
  type: 'flow-install';
  key: Uint32Array;
  mask: Uint32Array;
  actions: Action[];
}

/** Point a VPID at a PPID (ppid -1: remove its mapping). */
export interface MappingSet {
  type: 'mapping-set';
  vpid: number;
  ppid: number;
}

/** Remove every installed flow (after a rule change). */
export interface FlowFlush {
  type: 'flow-flush';
}

export type ControlMessage = FlowInstall | MappingSet | FlowFlush;
