/**
 * What a live port is to the live loop and the service: a file descriptor
 * to sleep on, rx into a batch, tx of a batch's list, counters, close. Two
 * kinds: TapPort (a frame per read/write: TAP devices, and AF_PACKET with
 * `io: read`) and RingPort (AF_PACKET with memory-mapped rings).
 */
import type { PacketBatch } from '../batch.js';
import type { Encap } from '../actions/encap.js';
import { FpoError } from '../errors.js';
import { RingPort } from './ring-port.js';
import { TapPort } from './tap-port.js';

export interface LivePort {
  readonly name: string;
  readonly fd: number;
  readonly kind: 'tap' | 'afpacket' | 'pcap-live';
  /** How frames move: 'read-write' (a system call a frame), 'tpacket-v3' / 'tpacket-v2' (rings), '+vnet' with offloads, 'libpcap'. */
  readonly mode: string;
  rxPackets: number;
  txPackets: number;
  /** Frames the port could not send (a full kernel queue, a frame too big for its tx slot). */
  txErrors: number;
  /** Frames dropped because the tx ring was full (ring ports; 0 for others). */
  readonly txRingFull: number;
  /** Frames the kernel dropped before fpo read them (a full rx ring; 0 where the kernel does not say). */
  readonly rxMissed: number;
  fill(batch: PacketBatch, ppid: number, nowUs: number): number;
  writeBatch(batch: PacketBatch, idx: Uint16Array, from: number, n: number, enc?: Int32Array, encap?: Encap): void;
  close(): void;
  /** A ring port's mapping of its socket (address, bytes); absent for the others. */
  mapping?(): { addr: bigint; len: number };
}

/** Opens a topology's live port: a TAP fpo creates, or an AF_PACKET socket on `device` (rings unless io is 'read'). */
export function openLivePort(device: string, kind: 'tap' | 'afpacket', io: 'ring' | 'read', batchCapacity: number, offload = false, version: 2 | 3 = 3, fanout?: number): LivePort {
  if (kind === 'afpacket' && io === 'ring') return new RingPort(device, { offload, version, fanout });
  if (fanout !== undefined && kind !== 'tap') throw new FpoError('FPO_ERR_USAGE', `afpacket ${device}: several workers need a ring port (io: ring), not io: read`);
  return new TapPort(device, batchCapacity, kind, offload, fanout !== undefined);
}
