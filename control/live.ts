/**
 * LiveLoop: the rx side of live ports, as a poll-mode loop (like a DPDK
 * PMD, but sleeping when idle): each turn drains up to MAX_BURSTS batches
 * from every port and runs them through the datapath; when a whole turn
 * found nothing, it sleeps in poll() on all the ports' fds for up to
 * IDLE_MS, then yields to the event loop (control socket, timers) and turns
 * again. So a busy link is served a burst at a time, never one event-loop
 * round trip per packet, and an idle one costs no CPU.
 */
import { PacketBatch } from '../datapath/batch.js';
import { monotonicMs } from '../datapath/clock.js';
import type { Datapath } from '../datapath/datapath.js';
import { POLLIN, libc } from '../datapath/ports/libc.js';
import type { LivePort } from '../datapath/ports/live-port.js';

const MAX_BURSTS = 8;
const IDLE_MS = 2;

export class LiveLoop {
  private readonly batch: PacketBatch;
  private readonly pollfds: Buffer;
  private running = false;
  private stopped: (() => void) | null = null;
  turns = 0;

  constructor(private readonly dp: Datapath, private readonly ports: { port: LivePort; ppid: number }[], batchCapacity = 256) {
    this.batch = new PacketBatch(batchCapacity);
    this.pollfds = Buffer.alloc(8 * ports.length);
    ports.forEach((p, i) => {
      this.pollfds.writeInt32LE(p.port.fd, i * 8);
      this.pollfds.writeInt16LE(POLLIN, i * 8 + 4);
    });
  }

  start(): void {
    if (this.running || this.ports.length === 0) return;
    this.running = true;
    setImmediate(() => this.turn());
  }

  /** Resolves when the loop has stopped (after its current turn). */
  stop(): Promise<void> {
    if (!this.running) return Promise.resolve();
    return new Promise((resolve) => {
      this.stopped = resolve;
      this.running = false;
    });
  }

  private turn(): void {
    if (!this.running) {
      this.stopped?.();
      return;
    }
    this.turns++;
    let got = 0;
    const nowMs = Date.now(); // packets' capture timestamps: the wall clock
    const dpNow = monotonicMs(); // the datapath's: monotonic (clock.ts)
    for (const { port, ppid } of this.ports) {
      for (let b = 0; b < MAX_BURSTS; b++) {
        const n = port.fill(this.batch, ppid, nowMs * 1000);
        if (n === 0) break;
        got += n;
        this.dp.process(this.batch, dpNow);
      }
    }
    if (got === 0) {
      this.dp.tick(dpNow); // no traffic: idle flows still expire, by the monotonic clock
      libc().poll(this.pollfds, this.ports.length, IDLE_MS);
    }
    setImmediate(() => this.turn());
  }
}
