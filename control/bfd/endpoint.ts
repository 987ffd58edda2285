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
      if (n < ihl + 8 || b[9] !== 17) continue;
      const dst = b.readUInt32BE(16);
      const dport = b.readUInt16BE(ihl + 2);
      if (dst !== this.localU32 || dport !== this.port) continue;
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
    const tx = await this.sender();
    const disc = this.nextDisc++;
    const session = new Session(disc, config, this.timers, {
      // A copy: the session reuses its packet buffer, and dgram sends later.
      send: (bytes) => tx.send(Buffer.from(bytes), peerPort, peer, (e) => { if (e) this.sendErrors++; }),
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
    const s = p.yourDisc !== 0 ? this.byDisc.get(p.yourDisc) : this.sessions.get(from);
    if (!s) return this.count('unknownSession');
    // §6.8.6: the A bit must agree with the session's configuration, and the section must verify.
    if (p.auth !== (s.auth !== null) || (s.auth !== null && !s.auth.verify(msg, p.detectMult))) return this.count('auth');
    s.receive(p);
  }

  async close(): Promise<void> {
    this.timers.stop();
    if (this.rawTimer) clearInterval(this.rawTimer);
    if (this.rawFd >= 0) libc().close(this.rawFd);
    this.rawFd = -1;
    for (const s of this.sessions.values()) s.stop();
    this.txSocket?.close();
    this.rxSocket?.close();
  }

  static readonly discardText = DISCARD;
}
