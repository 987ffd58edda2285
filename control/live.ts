/**
 * LiveLoop: the rx side of live ports, as a poll-mode loop (like a DPDK
 * PMD, but sleeping when idle): each turn drains up to MAX_BURSTS batches
 * from every port and runs them through the datapath; when a whole turn
 * found nothing, it sleeps in poll() on all the ports' fds for up to
 * IDLE_MS, then yields to the event loop (control socket, timers) and turns
 * again; a turn that found only a few frames naps 50 µs (LIGHT, NAP_MS).
 * So a busy link is served a burst at a time, never one event-loop round
 * trip per packet, and an idle one costs no CPU. (The workers' loop,
 * control/workers.ts, takes ring ports only, where the nap measured no
 * change: it does not nap.)
 */
import { PacketBatch } from '../datapath/batch.js';
import { monotonicMs } from '../datapath/clock.js';
import type { Datapath } from '../datapath/datapath.js';
import { POLLIN, libc } from '../datapath/ports/libc.js';
import type { LivePort } from '../datapath/ports/live-port.js';

const MAX_BURSTS = 8;
const IDLE_MS = 2;
/**
 * A turn that found fewer than LIGHT frames is followed by a nap of NAP_MS
 * (interrupt mitigation, as NAPI and DPDK's power-saving loops do): frames
 * gather in the rings meanwhile, the next turn takes them as one batch, and
 * the core is left to the rest of the machine — on this 2-core machine the
 * sender and the receiving VMs. Measured (bench:live, 2026-12-04, three
 * alternating rounds, AF_XDP ports): fpo's CPU 2.92–2.98 → 2.28–2.35 s per
 * 3 s at the same forwarded rate (533–585 K → 558–594 K frames/s), and
 * iperf3's UDP flood delivered 124–132 K → 166–178 K datagrams/s (the
 * receiving iperf3 had the CPU the loop was spinning on); on TPACKET_V3
 * rings (which hand over a block at a time anyway) no change (133–161 K
 * either way). Costs at most ~50 µs of latency on a light link.
 */
const LIGHT = 64;
const NAP_MS = 0.05;
const PAUSE = new Int32Array(new SharedArrayBuffer(4));

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
    } else if (got < LIGHT) Atomics.wait(PAUSE, 0, 0, NAP_MS);
    setImmediate(() => this.turn());
  }
}
