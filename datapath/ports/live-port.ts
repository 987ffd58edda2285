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
import { XdpPort } from './xdp-port.js';

export interface LivePort {
  readonly name: string;
  readonly fd: number;
  readonly kind: 'tap' | 'afpacket' | 'pcap-live';
  /** How frames move: 'read-write' (a system call a frame), 'tpacket-v3' / 'tpacket-v2' (rings), '+vnet' with offloads, 'af-xdp-copy-native' / '-generic', 'libpcap'. */
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

/** Opens a topology's live port: a TAP fpo creates, or a socket on `device`: AF_PACKET (rings unless io is 'read') or AF_XDP (io 'xdp'). */
export function openLivePort(device: string, kind: 'tap' | 'afpacket', io: 'ring' | 'read' | 'xdp', batchCapacity: number, offload = false, version: 2 | 3 = 3, fanout?: number): LivePort {
  if (kind === 'afpacket' && io === 'ring') return new RingPort(device, { offload, version, fanout });
  if (kind === 'afpacket' && io === 'xdp') {
    if (fanout !== undefined) throw new FpoError('FPO_ERR_USAGE', `afpacket ${device}: io xdp takes one queue of the interface, so one worker; several workers need io ring (a fanout group)`);
    if (offload) throw new FpoError('FPO_ERR_USAGE', `afpacket ${device}: io xdp carries frames of one chunk, no virtio-net header: offloads need io ring`);
    return new XdpPort(device, batchCapacity);
  }
  if (fanout !== undefined && kind !== 'tap') throw new FpoError('FPO_ERR_USAGE', `afpacket ${device}: several workers need a ring port (io: ring), not io: read`);
  return new TapPort(device, batchCapacity, kind, offload, fanout !== undefined);
}
