/**
 * BfdEndpoint: BFD over UDP (RFC 5881) on one local address: receives on
 * port 3784; each session sends from its own source port in 49152–65535 with
 * TTL 255. One session per peer address (and so per interface: the local
 * address is one interface's). Received packets are checked (§6.8.6) and
 * the discarded ones counted by reason.
 *
 * TTL on receipt: Node's dgram does not expose a received packet's TTL, so
 * the GTSM check of RFC 5881 §5 is not made here yet (the note: a raw
 * socket or IP_RECVTTL through an FFI would); it is counted as not checked.
 */
import { createSocket, type Socket } from 'node:dgram';
import { DISCARD, STATE_NAMES, decode, type DiscardReason } from './packet.js';
import { Session, type SessionConfig } from './session.js';
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

  constructor(readonly localAddress: string, private readonly port = BFD_PORT) {}

  async listen(): Promise<void> {
    const s = createSocket({ type: 'udp4', reuseAddr: true });
    s.on('message', (msg, rinfo) => this.onPacket(msg, rinfo.address));
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

  private onPacket(msg: Buffer, from: string): void {
    const p = decode(msg);
    if (typeof p === 'string') return this.count(p);
    const s = p.yourDisc !== 0 ? this.byDisc.get(p.yourDisc) : this.sessions.get(from);
    if (!s) return this.count('unknownSession');
    s.receive(p);
  }

  async close(): Promise<void> {
    this.timers.stop();
    for (const s of this.sessions.values()) s.stop();
    this.txSocket?.close();
    this.rxSocket?.close();
  }

  static readonly discardText = DISCARD;
}
