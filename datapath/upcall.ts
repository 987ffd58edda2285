/**
 * The messages between the datapath and the FPAG. The datapath never calls
 * control/: on a miss it hands an Upcall to its sink, and the control plane
 * answers with messages (flow installs, mapping changes) through
 * Datapath.apply. In a replay the sink answers before it returns; the types
 * are plain data so that the FPAG can as well live in another thread.
 */
import type { Action } from './actions/action-sets.js';
import type { FlagFormat } from './classifier/flag-check.js';
import type { TunnelDef } from './actions/encap.js';
import { KEY_WORDS } from './classifier/flow-key.js';

/** A packet that matched no flow. Valid during the sink's call only: the datapath reuses it. */
export interface Upcall {
  type: 'upcall';
  /** PPID the packet arrived on. */
  inPpid: number;
  /** The packet's flow key (KEY_WORDS words; flow-key.ts). */
  key: Uint32Array;
}

/**
 * The misses of one batch, handed to the FPAG together (Datapath.upcallBatchSink):
 * `count` keys, KEY_WORDS words each in `keys`, and the PPID each arrived on.
 * Valid during the sink's call only: the datapath reuses it. The sink answers
 * with one FlowInstalls (or any messages) through Datapath.apply before it
 * returns; a key it leaves uncovered is dropped (upcallFailed).
 */
export interface UpcallBatch {
  type: 'upcalls';
  count: number;
  inPpid: Uint16Array;
  keys: Uint32Array;
  /**
   * Set by the sink: how many of the keys a flow it decided for an earlier
   * key of the batch covered (no decision of their own). The datapath counts
   * the others as upcalls, as it counts the packets it upcalls one at a time
   * (one whose flow an earlier miss of its batch installed is not one).
   */
  covered: number;
  /**
   * The keys go on from the previous UpcallBatch's, of the same datapath
   * batch (a batch sent in parts, control/fpag-thread.ts): flows decided
   * for those cover these too. The datapath's own are never continuations.
   */
  continues: boolean;
  /**
   * Set by the sink when it fills `entry`: for key j, the index in the
   * batch's answer (its FlowInstalls, their flows counted from the datapath
   * batch's first part: FlowInstalls.first) of the flow that covers it, or
   * -1. The datapath then takes that flow for the packet instead of looking
   * it up again (it checks that the flow matches).
   */
  entries: boolean;
  entry: Int32Array;
  /**
   * Set by the datapath: the sink may return once key 0 is answered, the
   * rest still being decided (an FPAG on its own thread: the datapath
   * switches the packets answered meanwhile); it then answers more through
   * Datapath.upcallMoreSink, asked before anything else reaches the sinks.
   */
  partial: boolean;
  /** Set by the sink: keys [0, answered) are answered (their flows installed, their entries set). */
  answered: number;
  /**
   * Set by the datapath: this call is the whole batch (no part before or
   * after it), and `keys` stay as they are till the sink returns — so an
   * answer given within the call may name its keys where they are (the
   * FPAG's BatchFlows keeps no copy of them).
   */
  whole: boolean;
}

/** Datapath.upcallMany's got[j] for a key of a partial batch not answered yet. */
export const UPCALL_PENDING = -2;

/** An empty UpcallBatch with room for `cap` keys (slow path: made once, grown rarely); `keys`: the keys' array to use, when given. */
export function newUpcallBatch(cap: number, keys: Uint32Array = new Uint32Array(cap * KEY_WORDS)): UpcallBatch {
  return { type: 'upcalls', count: 0, inPpid: new Uint16Array(cap), keys, covered: 0, continues: false, entries: false, entry: new Int32Array(cap), partial: false, answered: 0, whole: false };
}

/**
 * Megaflows for a batch of misses, in one message: flow j is the key at
 * keys[kj * KEY_WORDS..] under the mask at masks[mj * KEY_WORDS..] →
 * actions[j], where kj = keyAt[j] and mj = maskAt[j] (j when absent).
 * The key may be any key the flow covers (a packet's: the install masks
 * it), so an answer can name the keys of the misses it answers instead of
 * carrying them, and a batch's few masks go once. Installed in order, as
 * that many FlowInstalls.
 */
export interface FlowInstalls {
  type: 'flow-installs';
  count: number;
  keys: Uint32Array;
  masks: Uint32Array;
  /** Flow j's actions, j < count (a message reused batch after batch may hold more past count). */
  actions: Action[][];
  /** The index of this message's first flow in its batch's answer (a batch answered in parts); 0 when absent. */
  first?: number;
  /** Per flow, where its key is in `keys` (in keys, not words); absent: flow j's at j. */
  keyAt?: Int32Array;
  /**
   * Per flow, where its mask is in `masks` (in masks); absent: flow j's at
   * j. Flows j and j - 1 with the same maskAt have the same mask: the
   * datapath installs j into j - 1's subtable without comparing masks.
   */
  maskAt?: Int32Array;
  /**
   * Per flow, the index in the UpcallBatch it answers of the key it was
   * decided for (an answer that crosses threads names the keys by it: the
   * datapath has them).
   */
  keyOf?: Int32Array;
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

/** Remove the flow with exactly this key and mask (revalidation found it stale). */
export interface FlowDelete {
  type: 'flow-delete';
  key: Uint32Array;
  mask: Uint32Array;
}

/**
 * This host's tunnel termination: its endpoint (IPv4, dotted; null: none),
 * the flag format, and the port flagged packets go to (-1: to the FPAG).
 */
export interface TunnelConfig {
  type: 'tunnel-config';
  vtep: string | null;
  /** An IPv6 endpoint as well (or instead: vtep null). */
  vtep6?: string | null;
  flag?: Partial<FlagFormat>;
  specialPpid: number;
  /** Sender policy: flag the first this-many encapsulated packets of every flow (default 0). */
  flagFirstPackets?: number;
}

/** A tunnel this host sends into (its id is its order of addition, from 0). */
export interface TunnelAdd {
  type: 'tunnel-add';
  tunnel: TunnelDef;
}

/** A tunnel given new ends (its remote host moved: a new VTEP or underlay MAC, or another kind). */
export interface TunnelSet {
  type: 'tunnel-set';
  id: number;
  tunnel: TunnelDef;
}

/** A packet the sender flagged for special processing, handed to the FPAG (a copy of its bytes). */
export interface SpecialPacket {
  type: 'special';
  inPpid: number;
  bytes: Uint8Array;
}

/** Remove every installed flow. */
export interface FlowFlush {
  type: 'flow-flush';
}

/** A port's role: `vm` (an access port: only untagged and VID-0 frames are taken from it) or not. */
export interface PortRole {
  type: 'port-role';
  ppid: number;
  vm: boolean;
}

export type ControlMessage = FlowInstall | FlowInstalls | FlowDelete | MappingSet | FlowFlush | TunnelConfig | TunnelAdd | TunnelSet | PortRole;
