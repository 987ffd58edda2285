/**
 * RingPort: an AF_PACKET socket on an existing interface (a veth end, an
 * uplink) with memory-mapped rings, as the kernel's packet_mmap.rst
 * describes and Open vSwitch's netdev-linux and DPDK's af_packet PMD use:
 *
 *   rx: a TPACKET_V3 ring of blocks. The kernel fills a block with frames
 *       and hands it over (block status TP_STATUS_USER) when it is full or
 *       RETIRE_MS passed; `fill` walks the frames in place — batch.buf is
 *       port memory (port-memory.ts) and off[i] points into the block, so rx
 *       copies nothing — and gives a block back (status 0) at the next
 *       fill, when the batch that used its frames has been processed. No
 *       system call per frame, none at all while blocks are ready.
 *   tx: a ring of frame slots. writeBatch copies each frame once (rx block
 *       → tx slot, copyWithin inside port memory, with the encap or VLAN
 *       change of its copy: frame-out.ts), marks it TP_STATUS_SEND_REQUEST,
 *       and sends the lot with one send() per batch. A slot the kernel still
 *       holds is a full ring: that frame is dropped and counted
 *       (txRingFull), never lost silently.
 *   overload: when fpo falls behind, the kernel finds no free block and
 *       drops at the ring, counting it (PACKET_STATISTICS tp_drops): the
 *       NIC's rx_missed, reported as rxMissed. fpo keeps forwarding at its
 *       own rate instead of spending it on frames it would lose later.
 *
 * VLAN: the kernel takes an 802.1Q/802.1ad tag out of the frame before any
 * packet socket sees it (hardware or software rx VLAN offload) and reports
 * it beside the frame (TP_STATUS_VLAN_VALID, tp_vlan_tci, tp_vlan_tpid). A
 * switch must see the frame as it was on the wire, so fill puts the tag back
 * in place: the 12 MAC bytes move 4 back into the header room before the
 * frame (14 bytes there: tp_mac is 82 for a 68-byte V3 header) and the tag
 * goes between — 12 bytes moved, no copy of the frame.
 */
import { readFileSync } from 'node:fs';
import type { PacketBatch } from '../batch.js';
import { D } from '../drops.js';
import { FpoError } from '../errors.js';
import type { Encap } from '../actions/encap.js';
import { TX_PLAIN } from '../actions/vlan.js';
import { writeBytes, writeFrame } from './frame-out.js';
import { SoftOffload, VNET_HDR_LEN, VNET_NEEDS_CSUM, needsSoftware, vnetValid, writeVnetHeader } from './offload.js';
import { MSG_DONTWAIT, libc } from './libc.js';
import { PortMemory } from './port-memory.js';

const AF_PACKET = 17;
const SOCK_RAW = 3;
const SOCK_NONBLOCK = 0x800;
const ETH_P_ALL_BE = 0x0300; // htons(ETH_P_ALL)
const SOL_PACKET = 263;
const PACKET_RX_RING = 5;
const PACKET_STATISTICS = 6;
const PACKET_VERSION = 10;
const PACKET_TX_RING = 13;
const PACKET_LOSS = 14;
const PACKET_VNET_HDR = 15;
const PACKET_FANOUT = 18;
const PACKET_FANOUT_HASH = 0;
const PACKET_FANOUT_FLAG_DEFRAG = 0x8000;
const PACKET_IGNORE_OUTGOING = 23;
const TPACKET_V2 = 1;
const TPACKET_V3 = 2;

const TP_STATUS_USER = 1;
const TP_STATUS_VLAN_VALID = 0x10;
const TP_STATUS_VLAN_TPID_VALID = 0x40;
const TP_STATUS_AVAILABLE = 0;
const TP_STATUS_SEND_REQUEST = 1;
const TP_STATUS_WRONG_FORMAT = 4;

// struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1.
const BLK_STATUS = 8;
const BLK_NUM_PKTS = 12;
const BLK_FIRST = 16;
// struct tpacket3_hdr.
const H_NEXT = 0;
const H_SEC = 4;
const H_SNAPLEN = 12;
const H_LEN = 16;
const H_STATUS = 20;
const H_MAC = 24;
const H_VLAN_TCI = 32;
const H_VLAN_TPID = 36;
/** tx: a V3 frame's data starts after the header (TPACKET3_HDRLEN - sizeof(sockaddr_ll)). */
const TX_DATA_V3 = 48;
/** Smallest tp_mac with room for a tag put back (the 68-byte header plus 4). */
const VLAN_ROOM_V3 = 72;
// struct tpacket2_hdr.
const H2_STATUS = 0;
const H2_LEN = 4;
const H2_SNAPLEN = 8;
const H2_MAC = 12;
const H2_SEC = 16;
const H2_VLAN_TCI = 24;
const H2_VLAN_TPID = 26;
const TX_DATA_V2 = 32;
const VLAN_ROOM_V2 = 56;

export interface RingOptions {
  /** rx: bytes per block (a page multiple; the largest frame must fit) and blocks. */
  rxBlockBytes?: number;
  rxBlocks?: number;
  /** A block is handed over at most this long after its first frame (ms). */
  retireMs?: number;
  /** tx: bytes per frame slot (header + data, a multiple of 16) and slots. */
  txFrameBytes?: number;
  txFrames?: number;
  /**
   * Offloads (offload.ts): PACKET_VNET_HDR — frames come and go with their
   * virtio-net header, so a 64 KiB GSO segment or a partial checksum crosses
   * whole (the kernel at the far end finishes it). Off: the kernel hands
   * over such a packet as one long frame with its checksum unfinished, so
   * the VM side must have tx checksum offload off.
   */
  offload?: boolean;
  /**
   * 3 (default): TPACKET_V3, frames packed in blocks, a block handed over
   * when full or RETIRE_MS after its first frame — fewest wake-ups, up to
   * RETIRE_MS of delay on a quiet link. 2: TPACKET_V2, a slot a frame, each
   * handed over as it lands — no delay, a slot of the largest frame's size.
   */
  version?: 2 | 3;
  /** V2: rx slots (default 4096 of 2 KiB, or 256 of 68 KiB with offloads). */
  rxFrames?: number;
  /**
   * Joins fanout group `fanout` (PACKET_FANOUT_HASH, with IP defragmentation):
   * the interface's frames are spread over the group's sockets by flow hash,
   * a flow always to the same one (one datapath worker each, workers.ts).
   */
  fanout?: number;
}

export class RingPort {
  readonly name: string;
  readonly fd: number;
  readonly kind = 'afpacket' as const;
  /** How frames move: reported by `fpo ctl stats` and the metrics. */
  readonly mode: string;
  /** Frames come and go with a virtio-net header (offload.ts). */
  readonly offload: boolean;
  /** TPACKET_V2 or V3. */
  readonly version: 2 | 3;
  /** V2: rx slots, their size. */
  private readonly rxFrames: number = 0;
  private readonly rxFrameBytes: number = 0;
  /** The tx header's status and length words, and where a frame's data starts in a slot. */
  private readonly hStatus: number;
  private readonly hLen: number;
  private readonly hSnap: number;
  /** The rx header's tp_mac, tp_sec (tp_nsec after it), VLAN TCI and TPID, and the room a tag put back needs. */
  private readonly hMac: number;
  private readonly hSec: number;
  private readonly hTci: number;
  private readonly hTpid: number;
  private readonly vlanRoom: number;
  private readonly txData: number;
  rxPackets = 0;
  txPackets = 0;
  /** Frames the kernel refused from the tx ring (TP_STATUS_WRONG_FORMAT) or that did not fit a slot. */
  txErrors = 0;
  /** Frames dropped because every tx slot was still the kernel's. */
  txRingFull = 0;
  /** send() calls that failed (the link down: frames stay in the ring, sent by a later send). */
  txSendErrors = 0;
  /** The longest frame the interface sends (its MTU, Ethernet header and one tag), read at open. */
  readonly maxFrame: number;
  /** Tags put back in front of frames the kernel had untagged. */
  rxVlanRestored = 0;
  private rxMissedSoFar = 0;

  private readonly mem: PortMemory;
  private readonly bytes: Uint8Array;
  private readonly dv: DataView;
  private readonly at: number;
  private readonly mapLen: number;
  private readonly blockBytes: number;
  private readonly blocks: number;
  private readonly txAt: number;
  private readonly txFrameBytes: number;
  private readonly txFrames: number;
  private readonly statsBuf = Buffer.alloc(12);

  // rx position: the block being read, the next frame in it, frames left in it.
  private block = 0;
  private pkt = 0;
  private left = 0;
  private inBlock = false;
  /** The first block (V2: slot) not yet given back, and how many from there are held: read, their frames maybe in the last batch. */
  private release = 0;
  private held = 0;
  private txHead = 0;

  constructor(name: string, opts: RingOptions = {}) {
    if (!/^[A-Za-z0-9._-]{1,15}$/.test(name)) throw new FpoError('FPO_ERR_USAGE', `afpacket device "${name}": 1 to 15 letters, digits, ".", "_", "-"`);
    this.name = name;
    this.blockBytes = opts.rxBlockBytes ?? 1 << 18;
    this.blocks = opts.rxBlocks ?? 32;
    this.offload = opts.offload ?? false;
    this.version = opts.version ?? 3;
    this.mode = `tpacket-v${this.version}${this.offload ? '+vnet' : ''}`;
    const v2 = this.version === 2;
    this.hStatus = v2 ? H2_STATUS : H_STATUS;
    this.hLen = v2 ? H2_LEN : H_LEN;
    this.hSnap = v2 ? H2_SNAPLEN : H_SNAPLEN;
    this.hMac = v2 ? H2_MAC : H_MAC;
    this.hSec = v2 ? H2_SEC : H_SEC;
    this.hTci = v2 ? H2_VLAN_TCI : H_VLAN_TCI;
    this.hTpid = v2 ? H2_VLAN_TPID : H_VLAN_TPID;
    this.vlanRoom = v2 ? VLAN_ROOM_V2 : VLAN_ROOM_V3;
    this.txData = v2 ? TX_DATA_V2 : TX_DATA_V3;
    if (v2) {
      // A slot holds the largest frame: 2 KiB, or with offloads a whole GSO packet (68 KiB, fewer slots).
      this.rxFrameBytes = this.offload ? 17 * 4096 : 2048;
      this.rxFrames = opts.rxFrames ?? (this.offload ? 256 : 4096);
    }
    // With offloads a tx slot holds a whole GSO packet: 68 KiB slots (17 pages), fewer of them.
    this.txFrameBytes = opts.txFrameBytes ?? (this.offload ? 17 * 4096 : 2048);
    this.txFrames = opts.txFrames ?? (this.offload ? 256 : 1024);
    const retireMs = opts.retireMs ?? 1;
    const c = libc();
    const ifindex = c.ifNameToIndex(name);
    if (ifindex === 0) throw new FpoError('FPO_ERR_IO', `afpacket ${name}: no such interface`);
    let mtu = 1500;
    try {
      mtu = Number(readFileSync(`/sys/class/net/${name}/mtu`, 'utf8').trim()) || 1500;
    } catch {
      // Not in sysfs (another namespace's view): the Ethernet default.
    }
    this.maxFrame = mtu + 18;
    // Protocol 0: the socket takes no frame until bind names the interface and ETH_P_ALL. A socket opened
    // with ETH_P_ALL takes every interface's frames until it is bound: other links' traffic in the ring.
    const fd = c.socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, 0);
    if (fd < 0) throw new FpoError('FPO_ERR_IO', `afpacket ${name}: socket failed (errno ${c.errno()}); fpo needs root for AF_PACKET ports`);
    this.fd = fd;
    let mappedAt = -1;
    let rxMapLen = 0;
    try {
      const opt = (what: string, level: number, key: number, val: Buffer): void => {
        if (c.setsockopt(fd, level, key, val, val.length) < 0) throw new FpoError('FPO_ERR_IO', `afpacket ${name}: ${what} failed (errno ${c.errno()})`);
      };
      const i32 = (v: number) => { const b = Buffer.alloc(4); b.writeInt32LE(v, 0); return b; };
      opt(`PACKET_VERSION TPACKET_V${this.version}`, SOL_PACKET, PACKET_VERSION, i32(v2 ? TPACKET_V2 : TPACKET_V3));
      opt('PACKET_IGNORE_OUTGOING', SOL_PACKET, PACKET_IGNORE_OUTGOING, i32(1));
      // A frame the kernel refuses from the tx ring is skipped, not left blocking every frame behind it
      // (without PACKET_LOSS the kernel's head stays on it). fpo refuses what it can tell first (maxFrame).
      opt('PACKET_LOSS', SOL_PACKET, PACKET_LOSS, i32(1));
      if (this.offload) opt('PACKET_VNET_HDR', SOL_PACKET, PACKET_VNET_HDR, i32(1));
      // struct tpacket_req3: block_size, block_nr, frame_size, frame_nr, retire_blk_tov, sizeof_priv, feature_req_word.
      const req = (blockSize: number, blockNr: number, frameSize: number, tov: number) => {
        const b = Buffer.alloc(28);
        b.writeUInt32LE(blockSize, 0);
        b.writeUInt32LE(blockNr, 4);
        b.writeUInt32LE(frameSize, 8);
        b.writeUInt32LE((blockSize / frameSize) * blockNr, 12);
        b.writeUInt32LE(tov, 16);
        return b;
      };
      if (v2) {
        // V2: blocks of slots (a block a page multiple holding whole slots); the V3-only words stay 0.
        const perBlock = Math.max(1, Math.floor((1 << 16) / this.rxFrameBytes));
        this.blockBytes = perBlock * this.rxFrameBytes;
        this.blocks = Math.ceil(this.rxFrames / perBlock);
        this.rxFrames = this.blocks * perBlock;
        opt(`PACKET_RX_RING (${this.rxFrames} slots of ${this.rxFrameBytes} bytes)`, SOL_PACKET, PACKET_RX_RING, req(this.blockBytes, this.blocks, this.rxFrameBytes, 0));
      } else {
        opt(`PACKET_RX_RING (${this.blocks} blocks of ${this.blockBytes} bytes)`, SOL_PACKET, PACKET_RX_RING, req(this.blockBytes, this.blocks, 2048, retireMs));
      }
      // tx: V3 sends frame by frame (no block transmit); the slots are grouped in 64 KiB blocks, as the ring wants.
      const txBlock = Math.max(1 << 16, this.txFrameBytes);
      const txBlocks = Math.ceil((this.txFrames * this.txFrameBytes) / txBlock);
      this.txFrames = txBlocks * (txBlock / this.txFrameBytes);
      opt(`PACKET_TX_RING (${this.txFrames} frames of ${this.txFrameBytes} bytes)`, SOL_PACKET, PACKET_TX_RING, req(txBlock, txBlocks, this.txFrameBytes, 0));
      const rxLen = this.blockBytes * this.blocks;
      this.mapLen = rxLen + txBlock * txBlocks;
      rxMapLen = this.mapLen;
      this.mem = PortMemory.get();
      this.at = this.mem.mapSocket(fd, this.mapLen, `afpacket ${name}`);
      mappedAt = this.at;
      this.txAt = this.at + rxLen;
      this.bytes = this.mem.bytes;
      this.dv = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
      // Bound after the rings are set, as packet_mmap.rst asks: no frame arrives before there is a ring to hold it.
      const sll = Buffer.alloc(20);
      sll.writeUInt16LE(AF_PACKET, 0);
      sll.writeUInt16LE(ETH_P_ALL_BE, 2);
      sll.writeInt32LE(ifindex, 4);
      if (c.bind(fd, sll, 20) < 0) throw new FpoError('FPO_ERR_IO', `afpacket ${name}: bind failed (errno ${c.errno()})`);
      if (opts.fanout !== undefined) opt(`PACKET_FANOUT group ${opts.fanout}`, SOL_PACKET, PACKET_FANOUT, i32((opts.fanout & 0xffff) | ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16)));
    } catch (e) {
      // A mapping of the socket keeps it (and its binding) alive: it goes first.
      if (mappedAt >= 0) PortMemory.get().release(mappedAt, rxMapLen);
      c.close(fd);
      throw e;
    }
  }

  /** Fast path: up to a batch of frames; returns how many. */
  fill(batch: PacketBatch, ppid: number, nowUs: number): number {
    return this.version === 2 ? this.fillV2(batch, ppid) : this.fillV3(batch, ppid, nowUs);
  }

  /** V2: frames from ready slots, in ring order; a batch's slots go back at the next fill. */
  private fillV2(batch: PacketBatch, ppid: number): number {
    const dv = this.dv;
    const u8 = this.bytes;
    const fb = this.rxFrameBytes;
    const at = this.at;
    for (; this.held > 0; this.held--) {
      dv.setUint32(at + this.release * fb + H2_STATUS, 0, true);
      this.release = this.release + 1 === this.rxFrames ? 0 : this.release + 1;
    }
    batch.batchSetBuffer(u8);
    batch.rawPcapLE = false;
    const vnet = this.offload;
    batch.vnet = vnet;
    const cap = batch.capacity;
    let n = 0;
    // At most every slot once: a slot read in this batch is still the batch's (status USER) until the next fill.
    const most = cap < this.rxFrames ? cap : this.rxFrames;
    while (n < most) {
      const h = at + this.block * fb;
      const status = dv.getUint32(h + H2_STATUS, true);
      if ((status & TP_STATUS_USER) === 0) break;
      this.take(batch, n, h, status, ppid, vnet);
      n++;
      this.held++;
      this.block = this.block + 1 === this.rxFrames ? 0 : this.block + 1;
    }
    batch.count = n;
    this.rxPackets += n;
    return n;
  }

  /**
   * Fast path: the frame whose ring header is at `h` (V2 or V3: this port's
   * offsets) as packet n of the batch, in place: its tag put back, its
   * timestamp, and its drop reason when it came cut or with a virtio-net
   * header that does not match it.
   */
  private take(batch: PacketBatch, n: number, h: number, status: number, ppid: number, vnet: boolean): void {
    const dv = this.dv;
    let mac = h + dv.getUint16(h + this.hMac, true);
    let snap = dv.getUint32(h + this.hSnap, true);
    let len = dv.getUint32(h + this.hLen, true);
    if ((status & TP_STATUS_VLAN_VALID) !== 0 && mac - h >= this.vlanRoom + (vnet ? VNET_HDR_LEN : 0) && snap >= 12) {
      const tpid = (status & TP_STATUS_VLAN_TPID_VALID) !== 0 ? dv.getUint16(h + this.hTpid, true) : 0x8100;
      mac = this.restoreTag(mac, tpid, dv.getUint16(h + this.hTci, true), vnet);
      snap += 4;
      len += 4;
    }
    batch.off[n] = mac;
    batch.caplen[n] = snap;
    batch.wirelen[n] = len;
    batch.tsA[n] = dv.getUint32(h + this.hSec, true);
    batch.tsB[n] = Math.floor(dv.getUint32(h + this.hSec + 4, true) / 1000); // tp_nsec follows tp_sec in both
    batch.ifIndex[n] = 0;
    batch.inPpid[n] = ppid;
    // A frame longer than the ring's room arrives cut (snaplen < len): dropped with its reason, never forwarded cut.
    batch.drop[n] = snap < len ? D.frameTooBig : vnet && !vnetValid(this.bytes, mac, snap) ? D.offloadBad : 0;
  }

  /**
   * Puts back the tag the kernel took out of the frame at `mac`: the MACs
   * (and a virtio-net header before them) move 4 bytes back, the tag goes
   * after them. Returns the frame's new start.
   */
  private restoreTag(mac: number, tpid: number, tci: number, vnet: boolean): number {
    const u8 = this.bytes;
    const dv = this.dv;
    if (vnet) {
      // The virtio-net header moves 4 back with the frame's start; its offsets grow by the tag.
      u8.copyWithin(mac - 4 - VNET_HDR_LEN, mac - VNET_HDR_LEN, mac);
      const v = mac - 4 - VNET_HDR_LEN;
      if ((u8[v] & VNET_NEEDS_CSUM) !== 0) dv.setUint16(v + 6, dv.getUint16(v + 6, true) + 4, true);
      const hl = dv.getUint16(v + 2, true);
      if (hl !== 0) dv.setUint16(v + 2, hl + 4, true);
    }
    u8.copyWithin(mac - 4, mac, mac + 12);
    dv.setUint16(mac + 8, tpid === 0 ? 0x8100 : tpid);
    dv.setUint16(mac + 10, tci);
    this.rxVlanRestored++;
    return mac - 4;
  }

  /** V3: frames from ready blocks; a block goes back at the next fill after its last frame. */
  private fillV3(batch: PacketBatch, ppid: number, _nowUs: number): number {
    const dv = this.dv;
    const u8 = this.bytes;
    const blockBytes = this.blockBytes;
    // Blocks whose frames went through in earlier batches go back to the kernel.
    for (; this.held > 0; this.held--) {
      dv.setUint32(this.at + this.release * blockBytes + BLK_STATUS, 0, true);
      this.release = this.release + 1 === this.blocks ? 0 : this.release + 1;
    }
    batch.batchSetBuffer(u8);
    batch.rawPcapLE = false;
    const vnet = this.offload;
    batch.vnet = vnet;
    const cap = batch.capacity;
    let n = 0;
    while (n < cap) {
      if (this.left === 0) {
        const base = this.at + this.block * blockBytes;
        if (this.inBlock) {
          // Done with this block: it goes back at the next fill (its frames may be in this batch).
          this.inBlock = false;
          this.held++;
          this.block = this.block + 1 === this.blocks ? 0 : this.block + 1;
          // Every block read since the last fill (blocks of a frame or two, retired by the timer): the next
          // one is the first of them, still USER because it is this batch's — not to be read twice.
          if (this.held === this.blocks) break;
          continue;
        }
        if ((dv.getUint32(base + BLK_STATUS, true) & TP_STATUS_USER) === 0) break;
        this.inBlock = true;
        this.left = dv.getUint32(base + BLK_NUM_PKTS, true);
        this.pkt = base + dv.getUint32(base + BLK_FIRST, true);
        continue;
      }
      const h = this.pkt;
      const status = dv.getUint32(h + H_STATUS, true);
      this.take(batch, n, h, status, ppid, vnet);
      n++;
      this.pkt = h + dv.getUint32(h + H_NEXT, true);
      this.left--;
    }
    batch.count = n;
    this.rxPackets += n;
    return n;
  }

  /** Fast path: packets idx[from .. from + n) into the tx ring, then one send. */
  writeBatch(batch: PacketBatch, idx: Uint16Array, from: number, n: number, enc?: Int32Array, encap?: Encap): void {
    const dv = this.dv;
    const u8 = this.bytes;
    const off = this.offload;
    const room = this.txFrameBytes - this.txData - (off ? VNET_HDR_LEN : 0);
    this.queued = 0;
    this.kicked = false;
    for (let j = from; j < from + n; j++) {
      const i = idx[j];
      const e = enc !== undefined ? enc[j] : TX_PLAIN;
      if (batch.vnet && (!off || e >= 0) && needsSoftware(batch, i)) {
        // A segment or a partial checksum this port (or the tunnel copy) cannot carry as is: cut and
        // finished in software, each frame into a slot of its own (segment()).
        this.curE = e;
        this.curEncap = encap;
        this.curHash = batch.hash[i];
        if (SoftOffload.get().cut(batch, i, this) === 0) this.txErrors++;
        continue;
      }
      const slot = this.takeSlot();
      if (slot < 0) continue;
      const data = slot + this.txData + (off ? VNET_HDR_LEN : 0);
      const len = writeFrame(u8, data, room, batch, i, e, encap);
      if (len < 0) { this.txErrors++; continue; }
      if (off) writeVnetHeader(u8, data - VNET_HDR_LEN, batch, i, e, len);
      // Longer than the interface sends and not a segment to cut: refused here, counted (the slot is reused).
      if (len > this.maxFrame && !(off && (u8[data - VNET_HDR_LEN + 1] & 0x7f) !== 0)) { this.txErrors++; continue; }
      this.commit(slot, len + (off ? VNET_HDR_LEN : 0));
    }
    if (this.queued > 0) this.send();
  }

  // The frame in progress of a packet cut in software: its tx code, encap and hash.
  private curE = TX_PLAIN;
  private curEncap: Encap | undefined;
  private curHash = 0;
  private queued = 0;
  private kicked = false;

  /** SegmentSink: one frame of a packet cut in software, into a slot as its packet's copy would go. */
  segment(src: Uint8Array, from: number, len: number): boolean {
    const slot = this.takeSlot();
    if (slot < 0) return false;
    const off = this.offload;
    const data = slot + this.txData + (off ? VNET_HDR_LEN : 0);
    const n = writeBytes(this.bytes, data, this.txFrameBytes - this.txData - (off ? VNET_HDR_LEN : 0), src, from, len, len, this.curHash, this.curE, this.curEncap);
    if (n < 0 || n > this.maxFrame) { this.txErrors++; return true; }
    if (off) this.bytes.fill(0, data - VNET_HDR_LEN, data);
    this.commit(slot, n + (off ? VNET_HDR_LEN : 0));
    return true;
  }

  /** SegmentSink: frames of a cut packet left uncut once the ring was full, counted as such. */
  segmentsLost(n: number): void {
    this.txRingFull += n;
  }

  /** The next tx slot, or -1 (counted as txRingFull) when the kernel still holds it after one send. */
  private takeSlot(): number {
    const dv = this.dv;
    const slot = this.txAt + this.txHead * this.txFrameBytes;
    let st = dv.getUint32(slot + this.hStatus, true);
    if (st === TP_STATUS_WRONG_FORMAT) {
      this.txErrors++;
      st = TP_STATUS_AVAILABLE;
    }
    if (st !== TP_STATUS_AVAILABLE) {
      // The kernel still holds this slot: one send (of this batch's frames and any left from before,
      // e.g. while the link was down) and a second look; a slot still held is a full ring, counted.
      if (!this.kicked) { this.send(); this.kicked = true; this.queued = 0; }
      if (dv.getUint32(slot + this.hStatus, true) !== TP_STATUS_AVAILABLE) { this.txRingFull++; return -1; }
    }
    return slot;
  }

  /** Hands a filled slot (len bytes after the header) to the kernel. */
  private commit(slot: number, len: number): void {
    const dv = this.dv;
    if (this.version === 3) dv.setUint32(slot + H_NEXT, 0, true);
    dv.setUint32(slot + this.hLen, len, true);
    dv.setUint32(slot + this.hSnap, len, true);
    dv.setUint32(slot + this.hStatus, TP_STATUS_SEND_REQUEST, true);
    this.txHead = this.txHead + 1 === this.txFrames ? 0 : this.txHead + 1;
    this.queued++;
    this.txPackets++;
  }

  /**
   * send() of what the tx ring holds. A socket error the kernel kept for us
   * (ENETDOWN after the link went down and up) fails the first call and is
   * then cleared: one more call sends.
   */
  private send(): void {
    if (libc().sendRing(this.fd, MSG_DONTWAIT) < 0) {
      this.txSendErrors++;
      libc().sendRing(this.fd, MSG_DONTWAIT);
    }
  }

  /** Frames the kernel dropped because no rx block was free (PACKET_STATISTICS; the kernel resets them at each read). */
  get rxMissed(): number {
    if (libc().getsockopt(this.fd, SOL_PACKET, PACKET_STATISTICS, this.statsBuf) >= 8) this.rxMissedSoFar += this.statsBuf.readUInt32LE(4);
    return this.rxMissedSoFar;
  }

  /** Where this port's rings are mapped (address, bytes): what must be unmapped for its socket to go. */
  mapping(): { addr: bigint; len: number } {
    return { addr: this.mem.addressOf(this.at), len: this.mapLen };
  }

  close(): void {
    void this.rxMissed; // the kernel's last drop count, read while the socket is there
    libc().close(this.fd);
    this.mem.release(this.at, this.mapLen);
  }
}
