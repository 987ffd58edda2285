/**
 * The worker threads of `fpo replay --workers N`, spawned on their own.
 *
 * A thread takes ~90 ms here to be up (Node's start of a worker ~55 ms,
 * then fpo's modules ~30 ms; measured 2026-12-04), and the main thread
 * switches alone until it is. So the command line spawns them as soon as it
 * has read `--workers`, before it loads the replay's own modules (~50 ms of
 * a whole-process run), and hands them to the replay (ReplayOptions
 * .threads); the replay spawns them itself when it is given none. This
 * module imports nothing of fpo's but the key size, so that loading it
 * costs next to nothing.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { KEY_WORDS } from '../datapath/classifier/flow-key.js';

// The threads run the compiled replay-workers module (under a TypeScript test runner this file is the .ts source).
const HERE = fileURLToPath(import.meta.url);
const WORKER_FILE = HERE.endsWith('.ts') ? join(dirname(HERE), '..', 'dist', 'control', 'replay-workers.js') : join(dirname(HERE), 'replay-workers.js');

// Words of a slot: state, ask, event index, answer length (words, or -1: on the port), spare, ready, join, beat;
// then inPpid and the key; then the answer to an upcall (fpag-thread.ts encodeInstalls).
export const SLOT_HEAD = 8 + 1 + KEY_WORDS;
export const ANSWER_WORDS = 16 * 1024;
export const SLOT_WORDS = SLOT_HEAD + ANSWER_WORDS;
/** The shared control words: doorbell (bumped on every request and by the chunk ring), stop. */
export const CTRL_WORDS = 4;

/** One spawned thread, as the replay's main thread sees it. */
export interface SpawnedThread {
  worker: Worker;
  port: MessagePort;
  slot: Int32Array;
  /** Set by its 'error' event: a crash outside the worker's own catch. */
  failed: string | null;
  /** Its exit code once it has exited (the 'exit' event). */
  exited: number | null;
}

/** Threads 1 .. n-1 of one replay and the control words they share. */
export interface SpawnedThreads {
  ctrl: Int32Array;
  list: SpawnedThread[];
  /** Handed to a replay (a set serves one replay). */
  taken: boolean;
}

/** Spawns threads 1 .. n-1 (unref'd: a set no replay takes does not keep the process alive). */
export function spawnReplayThreads(n: number): SpawnedThreads {
  const ctrl = new Int32Array(new SharedArrayBuffer(4 * CTRL_WORDS));
  const list: SpawnedThread[] = [];
  for (let k = 1; k < n; k++) {
    const slot = new Int32Array(new SharedArrayBuffer(4 * SLOT_WORDS));
    const { port1, port2 } = new MessageChannel();
    const worker = new Worker(WORKER_FILE, { workerData: { fpoReplayWorker: { ctrl, slot, port: port2 } }, transferList: [port2] });
    const t: SpawnedThread = { worker, port: port1, slot, failed: null, exited: null };
    worker.on('error', (e) => { t.failed ??= e.message; });
    worker.on('exit', (code) => { t.exited = code; });
    worker.unref();
    list.push(t);
  }
  return { ctrl, list, taken: false };
}

/** Ends a set no replay took. */
export function dropReplayThreads(s: SpawnedThreads | undefined): void {
  if (s === undefined || s.taken) return;
  s.taken = true;
  for (const t of s.list) void t.worker.terminate();
}
