/**
 * Connection: one client of fpo run's control socket, with every bound the
 * service keeps on it. Its own module so that service.ts holds what the
 * requests do, and this file how bytes come and go.
 *
 * Why bounds: a client that pipelines requests and never reads the replies
 * (200 k of them took the service from 65 MB to 1.7 GB), or that sends a body
 * faster than the datapath takes it, must cost the service a fixed amount of
 * memory, not one that grows with what the client sends. So reading follows
 * the service's progress:
 *
 *   socket ──data──▶ input queue ──nextLine()──▶ request ──▶ reply() ──▶ socket
 *                    (≤ limit, then              (one at a     (≥ MAX_QUEUED
 *                     the socket is paused)       time)         unsent: wait for 'drain')
 *
 * - Input: bytes read but not yet parsed stay in a queue; at its limit
 *   (a request line's bound, or BODY_QUEUE while a body streams in) the
 *   socket is paused and the kernel's buffer, then the client's writes,
 *   take the back-pressure. Parsing resumes it.
 * - Output: after a reply, when more than MAX_QUEUED bytes wait unsent, the
 *   next request is not read until 'drain'. So a client that does not read
 *   holds at most MAX_QUEUED plus one reply, and no more of its input.
 * - Requests on one connection are answered one at a time, in order: a reply
 *   never overtakes the reply of an earlier request.
 *
 * Bodies: a request may be followed by exactly `bytes` raw bytes (inject:
 * the capture, streamed). `body(n)` hands them out as a CaptureSource as they
 * arrive; `skipBody()` drops what its consumer did not take, so the next
 * request line is found where the body ends.
 */
import type { Socket } from 'node:net';
import { FpoError } from '../datapath/errors.js';
import type { CaptureSource } from '../datapath/ports/capture-reader.js';

/** Longest request line, in bytes (not counting the newline). */
export const MAX_REQUEST = 64 * 1024;
/** Clients connected at once; one more is answered with an error line and closed. */
export const MAX_CLIENTS = 64;
/** Reply bytes waiting to be sent to one client before the service stops reading its requests. */
export const MAX_QUEUED = 1024 * 1024;
/** Bytes of a request body read ahead of its consumer before the socket is paused. */
export const BODY_QUEUE = 4 * 1024 * 1024;
/** Largest body a request may declare (an inject's capture). */
export const MAX_BODY = 16 * 1024 * 1024 * 1024;
/** An inject whose body brings no byte for this long while the datapath waits for it is cut: the connection closed, the capture ended truncated (one client must not hold every other inject). */
export const BODY_IDLE_MS = 10_000;

/** A request line longer than MAX_REQUEST: answered, then the connection is closed (where the next line starts is unknown). */
export class TooLong extends FpoError {
  constructor() {
    super('FPO_ERR_USAGE', `request: longer than ${MAX_REQUEST} bytes; closing`);
  }
}

export class Connection {
  readonly sock: Socket;
  /** Bytes read and not yet parsed, oldest first; `head` bytes of chunks[0] are already taken. */
  private chunks: Buffer[] = [];
  private head = 0;
  private queued = 0;
  /** Leading queued bytes known to hold no newline. */
  private scanned = 0;
  /** The body being read: bytes of it not yet taken. */
  private bodyLeft = 0;
  private closed = false;
  /** Refused: input is dropped until the client closes. */
  private discard = false;
  private waiter: (() => void) | null = null;

  constructor(sock: Socket) {
    this.sock = sock;
    sock.on('data', (d: Buffer) => {
      if (this.discard) return;
      this.chunks.push(d);
      this.queued += d.length;
      if (this.queued >= this.limit()) sock.pause();
      this.wake();
    });
    const gone = () => {
      this.closed = true;
      this.wake();
    };
    sock.on('end', gone);
    sock.on('close', gone);
    sock.on('error', gone);
  }

  /** True once the client has closed its side (or the connection failed): nothing more will be read; replies may still be sent. */
  get ended(): boolean {
    return this.closed;
  }

  /** How much unparsed input is held before the socket is paused. */
  private limit(): number {
    return this.bodyLeft > 0 ? BODY_QUEUE : MAX_REQUEST + 1;
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** Resolves at the next data, end or close. */
  private wait(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const prev = this.waiter;
      this.waiter = () => { prev?.(); resolve(); };
    });
  }

  /** Takes `n` queued bytes (n ≤ queued), copying them to `dst` at `off` when given; resumes reading below the limit. */
  private take(n: number, dst?: Uint8Array, off = 0): void {
    let left = n;
    while (left > 0) {
      const c = this.chunks[0];
      const k = Math.min(left, c.length - this.head);
      if (dst) dst.set(c.subarray(this.head, this.head + k), off + (n - left));
      left -= k;
      this.head += k;
      if (this.head === c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    this.queued -= n;
    this.scanned = Math.max(0, this.scanned - n);
    if (this.sock.isPaused() && this.queued < this.limit() && !this.closed) this.sock.resume();
  }

  /**
   * The next request line (without its newline), or null when the client has
   * closed. Throws TooLong for a line over MAX_REQUEST bytes. Bytes after the
   * last newline at close are not a request.
   */
  async nextLine(): Promise<string | null> {
    for (;;) {
      const len = this.findLine();
      if (len >= 0) {
        if (len > MAX_REQUEST) throw new TooLong();
        const line = Buffer.allocUnsafe(len);
        this.take(len, line);
        this.take(1); // the newline
        return line.toString('utf8');
      }
      if (this.scanned > MAX_REQUEST) throw new TooLong();
      if (this.closed) return null;
      await this.wait();
    }
  }

  /**
   * The length of the first line held (bytes before its newline), or -1.
   * Bytes already scanned are not scanned again, and nothing is copied until
   * a line is whole: a client that sends a line a byte at a time costs one
   * pass over it, not one per byte.
   */
  private findLine(): number {
    let skip = this.scanned;
    let before = 0;
    for (let i = 0; i < this.chunks.length; i++) {
      const c = this.chunks[i];
      const start = i === 0 ? this.head : 0;
      const len = c.length - start;
      if (skip < len) {
        const nl = c.indexOf(10, start + skip);
        if (nl >= 0) return before + (nl - start);
        skip = 0;
      } else {
        skip -= len;
      }
      before += len;
    }
    this.scanned = before;
    return -1;
  }

  /** The next `n` bytes as a body: a CaptureSource that hands them out as they arrive. */
  body(n: number, name: string): Body {
    this.bodyLeft = n;
    if (this.sock.isPaused() && this.queued < this.limit() && !this.closed) this.sock.resume();
    return new Body(this, n, name);
  }

  /** Drops what is left of the current body (its consumer stopped early), so the next line is found. */
  async skipBody(): Promise<void> {
    while (this.bodyLeft > 0) {
      const k = Math.min(this.bodyLeft, this.queued);
      if (k > 0) this.takeBody(k);
      else if (this.closed) break;
      else await this.wait();
    }
    this.bodyLeft = 0;
  }

  /** Body bytes not yet taken (held or still to come). */
  bodyRemaining(): number {
    return this.bodyLeft;
  }

  /** Body bytes held now (≤ what is left of the body). */
  bodyQueued(): number {
    return Math.min(this.bodyLeft, this.queued);
  }

  /** True while body bytes are still to come (not all taken, the client still there). */
  bodyOpen(): boolean {
    return this.bodyLeft > 0 && !this.closed;
  }

  /** Takes n body bytes (n ≤ bodyQueued()). */
  takeBody(n: number, dst?: Uint8Array, off = 0): void {
    this.bodyLeft -= n;
    this.take(n, dst, off);
  }

  /** Resolves when more input has come or the client has gone. */
  more(): Promise<void> {
    return this.wait();
  }

  /**
   * Sends one reply line. When the client has not taken what was sent before
   * (more than MAX_QUEUED bytes wait), resolves only once they drain or the
   * connection closes: the caller reads no further request until then.
   */
  async reply(obj: unknown): Promise<void> {
    const s = this.sock;
    if (s.destroyed || !s.writable) return;
    s.write(JSON.stringify(obj) + '\n');
    if (s.writableLength <= MAX_QUEUED) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        s.off('drain', done);
        s.off('close', done);
        resolve();
      };
      s.on('drain', done);
      s.on('close', done);
    });
  }

  /**
   * Sends a last reply and closes. What the client still sends is read and
   * dropped until it closes too (so its writes do not fail before it reads
   * the reply), for at most a second.
   */
  refuse(obj: unknown): void {
    const s = this.sock;
    if (s.destroyed) return;
    this.discard = true;
    this.chunks = [];
    this.queued = 0;
    if (s.isPaused()) s.resume();
    s.end(JSON.stringify(obj) + '\n');
    s.once('end', () => s.destroy());
    setTimeout(() => s.destroy(), 1000).unref();
  }

  /** Ends the service's side once what was sent has gone (the client closed its side first). */
  end(): void {
    if (!this.sock.destroyed) this.sock.end();
  }

  /** Closes at once (service shutdown). */
  destroy(): void {
    this.closed = true;
    this.sock.destroy();
    this.wake();
  }
}

/**
 * A request's body as a CaptureSource: read() copies what has arrived,
 * returns -1 when nothing has yet, and 0 at the end — which is early when
 * the client went away (the reader then reports a truncated capture).
 */
export class Body implements CaptureSource {
  readonly name: string;
  readonly size: number;
  private readonly conn: Connection;

  constructor(conn: Connection, size: number, name: string) {
    this.conn = conn;
    this.size = size;
    this.name = name;
  }

  read(buf: Uint8Array, off: number, len: number): number {
    const have = this.conn.bodyQueued();
    if (have === 0) return this.conn.bodyOpen() ? -1 : 0;
    const n = Math.min(len, have);
    this.conn.takeBody(n, buf, off);
    return n;
  }

  /** Resolves when `n` bytes are held, or the body cannot bring them (its end, or the client gone). */
  async atLeast(n: number): Promise<void> {
    while (this.conn.bodyOpen() && this.conn.bodyQueued() < Math.min(n, this.conn.bodyRemaining())) await this.more();
  }

  /** Set when the body was cut for bringing nothing for BODY_IDLE_MS. */
  idledOut = false;

  /** Resolves when more body bytes may have come; after BODY_IDLE_MS of nothing, closes the connection (the body ends there). */
  more(): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.idledOut = true;
        this.conn.destroy();
        resolve();
      }, BODY_IDLE_MS);
      void this.conn.more().then(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  // The connection owns the socket; a body has nothing of its own to close.
  close(): void {}
}
