/**
 * BfdEndpoint: BFD over UDP (RFC 5881) on one local address: receives on
 * port 3784; each session sends from its own source port in 49152–65535 with
 * TTL 255. One session per peer address (and so per interface: the local
 * address is one interface's). Received packets are checked (§6.8.6) and
 * the discarded ones counted by reason.
 *
 * TTL on receipt (RFC 5881 §5, GTSM): Node's dgram does not expose a
 * received packet's TTL. So, when it may (root), the endpoint reads BFD
 * packets from a raw IPv4/UDP socket opened through koffi, which sees the IP
 * header, and discards those whose TTL is not 255; the dgram socket still
 * holds the port (so the kernel does not answer the peer with ICMP) with a
 * minimal receive buffer, and its copies are ignored. Chosen over the
 * raw-socket package, which needs a native build at install, and over
 * recvmsg with IP_RECVTTL, which needs msghdr/cmsg layouts through the FFI,
 * for the same answer; measured here: a koffi read() of a packet costs
 * ~0.5 µs. Without root it falls back to dgram and counts `ttlUnchecked`.
 * raw-socket was measured against this (bench/control/bfd-socket.ts,
 * 2026-12-04): it gives the TTL the same way (the IP header of a raw read;
 * it has no recvmsg, so no IP_RECVTTL) but cannot attach the kernel filter
 * below (its setOption passes no pointer), allocates a Buffer and a string
 * a packet, and cost 5.3–5.9 µs of CPU a BFD packet against 1.7–2.0 here,
 * and 27–30 µs against 2.8–3.4 with four packets of other UDP traffic
 * beside each (it read all 800 K of them, and dropped up to 1.6 K BFD
 * packets); so it is not used.
 *
 * A raw UDP socket sees every UDP packet of the namespace — a tunnel's
 * VXLAN traffic included, a million a second when the switch is busy — so a
 * classic BPF program attached to it (SO_ATTACH_FILTER) lets the kernel keep
 * only UDP to this address and port: measured, without it the endpoint read
 * and threw away as many packets as it took (its own sends, in the scale
 * benchmark), and under live tunnel traffic it would read all of that.
 *
 * Sending: one UDP socket opened through the same FFI, sendto() straight
 * from the session's buffer (no copy, no libuv request, no callback); dgram
 * stays as the fallback when the FFI cannot open the socket. Measured with
 * 1000 sessions at 3 × 50 ms (~23 K packets/s each way): 38 % of a core at
 * each end with dgram, 33–34 % with sendto and the filter; a CPU profile
 * puts most of what is left in the kernel (sendto on loopback delivers the
 * packet in the sender's time), then GC (5 %) and the raw reads (4 %).
 */
import { createSocket, type Socket } from 'node:dgram';
import { DISCARD, STATE_NAMES, decode, type DiscardReason } from './packet.js';
import { Session, type SessionConfig } from './session.js';
import { libc } from '../../datapath/ports/libc.js';
import { TimerHeap } from './timers.js';

export const BFD_PORT = 3784;

export class BfdEndpoint {
  readonly timers = new TimerHeap();
  readonly sessions = new Map<string, Session>();
  private readonly byDisc = new Map<number, Session>();
  /** One sending socket for all sessions: one source port in 49152–65535 (RFC 5881 §4 asks the same port for a session's packets). */
  private txSocket: Socket | null = null;
  /** The same through the FFI (sendto), when it could be opened: -1 otherwise. */
  private txFd = -1;
  readonly discards: Partial<Record<DiscardReason, number>> = {};
  /** Sends that failed (e.g. the peer's port unreachable). */
  sendErrors = 0;
  private rxSocket: Socket | null = null;
  private nextDisc = 1 + Math.floor(Math.random() * 0x7fff0000);
  /** Called on every state change (for logs and the tunnel monitor). */
  onChange: (peer: string, s: Session, from: string, to: string, why: string) => void = () => undefined;

  constructor(readonly localAddress: string, private readonly port = BFD_PORT) {
    const p = localAddress.split('.').map(Number);
    this.localU32 = ((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) >>> 0;
  }

  /** Packets accepted without a TTL check (no raw socket). */
  ttlUnchecked = 0;
  /** UDP packets the raw socket read that were not BFD to this endpoint (the kernel's filter should keep this 0). */
  rawForeign = 0;
  private rawFd = -1;
  private rawTimer: NodeJS.Timeout | null = null;
  private readonly rawBuf = Buffer.alloc(2048);
  private readonly localU32: number;

  private openRaw(): boolean {
    try {
      const c = libc();
      const fd = c.socket(2 /* AF_INET */, 3 /* SOCK_RAW */ | 0x800 /* SOCK_NONBLOCK */, 17 /* IPPROTO_UDP */);
      if (fd < 0) return false;
      // A raw socket sees every UDP packet of the namespace: give it room for the
      // event loop's pauses (measured: with the default buffer, 1000 sessions at
      // 3 × 50 ms saw false Downs from drops during 20 ms stalls).
      const size = Buffer.alloc(4);
      size.writeInt32LE(16 << 20, 0);
      c.setsockopt(fd, 1 /* SOL_SOCKET */, 33 /* SO_RCVBUFFORCE */, size, 4);
      // Only UDP to this address and port, not a fragment's tail (the checks in drainRaw
      // stay: packets queued before the filter was attached pass through them).
      // The program reads the IPv4 header at offset 0 (a raw socket's view).
      c.attachFilter(fd, [
        [0x30, 0, 0, 9], // ldb [9]: protocol
        [0x15, 0, 8, 17], // UDP, or drop
        [0x20, 0, 0, 16], // ld [16]: destination address
        [0x15, 0, 6, this.localU32], // ours, or drop
        [0x28, 0, 0, 6], // ldh [6]: flags and fragment offset
        [0x45, 4, 0, 0x1fff], // a later fragment: drop
        [0xb1, 0, 0, 0], // ldxb 4 * ([0] & 0xf): header length
        [0x48, 0, 0, 2], // ldh [x + 2]: destination port
        [0x15, 0, 1, this.port], // ours: accept, or drop
        [0x06, 0, 0, 0xffff],
        [0x06, 0, 0, 0],
      ]);
      this.rawFd = fd;
      // Drain every millisecond: BFD's shortest intervals are tens of ms.
      this.rawTimer = setInterval(() => this.drainRaw(), 1);
      return true;
    } catch {
      return false;
    }
  }

  private drainRaw(): void {
    const c = libc();
    const b = this.rawBuf;
    for (let i = 0; i < 65536; i++) {
      const n = c.read(this.rawFd, b, b.length);
      if (n <= 0) return;
      const ihl = (b[0] & 15) * 4;
      if (n < ihl + 8 || b[9] !== 17) { this.rawForeign++; continue; }
      const dst = b.readUInt32BE(16);
      const dport = b.readUInt16BE(ihl + 2);
      if (dst !== this.localU32 || dport !== this.port) { this.rawForeign++; continue; }
      const from = `${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
      if (b[8] !== 255) {
        this.count('ttl');
        continue;
      }
      this.onPacket(b.subarray(ihl + 8, n), from, true);
    }
  }

  async listen(): Promise<void> {
    const raw = this.openRaw();
    const s = createSocket({ type: 'udp4', reuseAddr: true, recvBufferSize: raw ? 1 : undefined });
    s.on('message', (msg, rinfo) => { if (!raw) this.onPacket(msg, rinfo.address, false); });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(this.port, this.localAddress, () => resolve());
    });
    this.rxSocket = s;
  }

  /** Opens the sending socket through the FFI: UDP, bound to a source port in 49152–65535, TTL 255. */
  private openTxFd(): boolean {
    if (this.txFd >= 0) return true;
    try {
      const c = libc();
      const fd = c.socket(2 /* AF_INET */, 2 /* SOCK_DGRAM */ | 0x800 /* SOCK_NONBLOCK */, 0);
      if (fd < 0) return false;
      const ttl = Buffer.alloc(4);
      ttl.writeInt32LE(255, 0);
      c.setsockopt(fd, 0 /* IPPROTO_IP */, 2 /* IP_TTL */, ttl, 4);
      const sa = Buffer.alloc(16);
      sa.writeUInt16LE(2, 0);
      sa.writeUInt32BE(this.localU32, 4);
      for (let attempt = 0; attempt < 20; attempt++) {
        sa.writeUInt16BE(49152 + Math.floor(Math.random() * 16383), 2);
        if (c.bind(fd, sa, 16) === 0) {
          this.txFd = fd;
          return true;
        }
      }
      c.close(fd);
      return false;
    } catch {
      return false;
    }
  }

  /** A peer's address as a sockaddr_in, for sendto. */
  private static sockaddr(address: string, port: number): Buffer {
    const sa = Buffer.alloc(16);
    sa.writeUInt16LE(2, 0);
    sa.writeUInt16BE(port, 2);
    const p = address.split('.').map(Number);
    for (let i = 0; i < 4; i++) sa[4 + i] = p[i];
    return sa;
  }

  /** How a session's packets leave: sendto through the FFI, else dgram. */
  private async sendFn(peer: string, peerPort: number): Promise<(bytes: Uint8Array) => void> {
    if (this.openTxFd()) {
      const c = libc();
      const sa = BfdEndpoint.sockaddr(peer, peerPort);
      const fd = this.txFd;
      return (bytes) => { if (c.sendto(fd, bytes, bytes.length, 0, sa, 16) < 0) this.sendErrors++; };
    }
    const tx = await this.sender();
    // A copy: the session reuses its packet buffer, and dgram sends later.
    return (bytes) => tx.send(Buffer.from(bytes), peerPort, peer, (e) => { if (e) this.sendErrors++; });
  }

  private async sender(): Promise<Socket> {
    if (this.txSocket) return this.txSocket;
    for (let attempt = 0; ; attempt++) {
      const tx = createSocket({ type: 'udp4' });
      try {
        await new Promise<void>((resolve, reject) => {
          tx.once('error', reject);
          tx.bind({ address: this.localAddress, port: 49152 + Math.floor(Math.random() * 16383) }, () => resolve());
        });
      } catch (e) {
        tx.close();
        if (attempt < 10) continue;
        throw e;
      }
      tx.setTTL(255);
      // A peer that is gone answers with ICMP errors; BFD keeps sending regardless (counted).
      tx.on('error', () => { this.sendErrors++; });
      this.txSocket = tx;
      return tx;
    }
  }

  /** Adds (and starts) a session with `peer` (`key` tells apart several sessions to one address, for benchmarks). */
  async add(peer: string, config: SessionConfig, peerPort = BFD_PORT, key = peer): Promise<Session> {
    const send = await this.sendFn(peer, peerPort);
    return this.addWith(peer, config, send, key);
  }

  private addWith(peer: string, config: SessionConfig, send: (bytes: Uint8Array) => void, key: string): Session {
    const disc = this.nextDisc++;
    const session = new Session(disc, config, this.timers, {
      send,
      change: (s, from, to, why) => this.onChange(peer, s, STATE_NAMES[from], STATE_NAMES[to], why),
    });
    this.sessions.set(key, session);
    this.byDisc.set(disc, session);
    session.start();
    return session;
  }

  private count(r: DiscardReason): void {
    this.discards[r] = (this.discards[r] ?? 0) + 1;
  }

  private onPacket(msg: Buffer, from: string, ttlChecked: boolean): void {
    if (!ttlChecked) this.ttlUnchecked++;
    const p = decode(msg, true);
    if (typeof p === 'string') return this.count(p);
    let s = p.yourDisc !== 0 ? this.byDisc.get(p.yourDisc) : this.sessions.get(from);
    if (!s && p.yourDisc === 0 && this.passive) s = this.accept(from, p.myDisc);
    if (!s) return this.count('unknownSession');
    // §6.8.6: the A bit must agree with the session's configuration, and the section must verify.
    if (p.auth !== (s.auth !== null) || (s.auth !== null && !s.verifyAuth(msg, p.detectMult))) return this.count('auth');
    s.receive(p);
  }

  /**
   * Passive mode (RFC 5880 §6.1: a passive system waits for the peer's
   * first packet): a packet with your discriminator 0 from an unknown
   * session starts one with these intervals, answering to `replyPort`
   * (benchmarks: one endpoint as the far end of a thousand sessions).
   */
  passive: { config: SessionConfig; replyPort: number } | null = null;
  private readonly passiveSend = new Map<string, (bytes: Uint8Array) => void>();

  private accept(from: string, remoteDisc: number): Session | undefined {
    const key = `${from}#${remoteDisc}`;
    const known = this.sessions.get(key);
    if (known) return known;
    if (!this.openTxFd()) return undefined;
    let send = this.passiveSend.get(from);
    if (!send) {
      const c = libc();
      const sa = BfdEndpoint.sockaddr(from, this.passive!.replyPort);
      const fd = this.txFd;
      send = (bytes) => { if (c.sendto(fd, bytes, bytes.length, 0, sa, 16) < 0) this.sendErrors++; };
      this.passiveSend.set(from, send);
    }
    return this.addWith(from, this.passive!.config, send, key);
  }

  async close(): Promise<void> {
    this.timers.stop();
    if (this.rawTimer) clearInterval(this.rawTimer);
    if (this.rawFd >= 0) libc().close(this.rawFd);
    this.rawFd = -1;
    for (const s of this.sessions.values()) s.stop();
    this.txSocket?.close();
    if (this.txFd >= 0) libc().close(this.txFd);
    this.txFd = -1;
    this.rxSocket?.close();
  }

  static readonly discardText = DISCARD;
}
