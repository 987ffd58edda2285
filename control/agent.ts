/**
 * fpo agent: the guest side of the liveness channel. Runs inside the VM (its
 * network namespace here) and listens on a Unix socket — the stand-in for a
 * virtio-vsock or virtio-serial channel between a guest and its host, which
 * a network namespace shares with the host as a file path. The tunnel
 * monitor probes it again and again ({"type":"probe","seq":N} → {"type":
 * "alive","seq":N}); when the VM's tunnel goes down or comes back, the
 * monitor tells it ({"type":"tunnel","state":"down"|"up","peer","why"}),
 * and the agent prints that as a JSON line for the guest to act on.
 *
 * The channel is not trusted in either direction: the guest writes what it
 * likes into fpo's side. So each side reads it through a LineReader, which
 * holds at most AGENT_MAX_LINE characters of an unfinished line (the
 * messages are under 200): a longer line is refused and the connection
 * closed (the receive buffer had no bound, and a guest could grow fpo's
 * memory without end). fpo's side takes lines through Liveness.take, which
 * accepts only an answer to a probe it has sent ({"type":"alive","seq":N},
 * 1 <= N <= probes sent) and the agent's ack; anything else is refused with
 * a counted reason and changes nothing (an answer to a probe never sent, a
 * seq of 1e300, used to mark the VM alive for good).
 */
import { existsSync, unlinkSync } from 'node:fs';
import { createServer } from 'node:net';
import type { OffloadPolicy } from './guest-conntrack.js';

/** The longest line (characters) either side of the agent channel buffers. */
export const AGENT_MAX_LINE = 4096;

/** Why a line from the agent was refused. */
export const AGENT_REFUSALS = ['tooLong', 'notJson', 'badMessage', 'seqNotProbed'] as const;
export type AgentRefusal = (typeof AGENT_REFUSALS)[number];

/**
 * Splits a stream of text into lines, holding at most `maxLine` characters
 * of an unfinished one. push calls onLine for each complete line (without
 * its newline) and returns false, keeping nothing, when a line is longer
 * than maxLine: the caller closes the connection.
 */
export class LineReader {
  private rest = '';

  constructor(readonly maxLine = AGENT_MAX_LINE) {}

  /** Characters held of an unfinished line (never more than maxLine). */
  get buffered(): number {
    return this.rest.length;
  }

  push(chunk: string, onLine: (line: string) => void): boolean {
    let start = 0;
    let nl = chunk.indexOf('\n');
    while (nl >= 0) {
      if (this.rest.length + nl - start > this.maxLine) return this.overflow();
      const line = start === 0 && this.rest.length > 0 ? this.rest + chunk.slice(0, nl) : chunk.slice(start, nl);
      this.rest = '';
      onLine(line);
      start = nl + 1;
      nl = chunk.indexOf('\n', start);
    }
    if (this.rest.length + chunk.length - start > this.maxLine) return this.overflow();
    this.rest += chunk.slice(start);
    return true;
  }

  private overflow(): false {
    this.rest = '';
    return false;
  }
}

/**
 * fpo's side of one VM's liveness channel: probes sent and answers taken.
 * take() changes `answered` and `lastAlive` only for a valid answer; a
 * refusal changes its counter and nothing else.
 */
export class Liveness {
  /** Probes sent (or due and not sendable). */
  seq = 0;
  /** The highest probe answered. */
  answered = 0;
  /** When (Date.now()) the last answer came. */
  lastAlive = 0;
  /** Lines refused, by reason. */
  readonly refused: Record<AgentRefusal, number> = { tooLong: 0, notJson: 0, badMessage: 0, seqNotProbed: 0 };

  /** The next probe's number. */
  probe(): number {
    return ++this.seq;
  }

  /** One line from the agent: 'alive' (an answer taken), 'ack', or why it was refused. */
  take(line: string, now: number): 'alive' | 'ack' | AgentRefusal {
    let m: unknown;
    try {
      m = JSON.parse(line);
    } catch {
      return this.refuse('notJson');
    }
    if (m === null || typeof m !== 'object' || Array.isArray(m)) return this.refuse('badMessage');
    const type = (m as { type?: unknown }).type;
    if (type === 'ack') return 'ack';
    if (type !== 'alive') return this.refuse('badMessage');
    const seq = (m as { seq?: unknown }).seq;
    if (typeof seq !== 'number' || !Number.isInteger(seq)) return this.refuse('badMessage');
    if (seq < 1 || seq > this.seq) return this.refuse('seqNotProbed');
    if (seq > this.answered) this.answered = seq;
    this.lastAlive = now;
    return 'alive';
  }

  /** Counts a refusal (a line too long is counted here by the caller that saw it). */
  refuse(why: AgentRefusal): AgentRefusal {
    this.refused[why]++;
    return why;
  }
}

export async function runAgent(socketPath: string, name: string, opts: { conntrack?: OffloadPolicy } = {}): Promise<void> {
  if (existsSync(socketPath)) unlinkSync(socketPath);
  // A service VM: its conntrack hand-over rides the same channel (agent/conntrack-agent.ts).
  const ct = opts.conntrack === undefined ? null : new (await import('./agent/conntrack-agent.js')).ConntrackAgent(name, opts.conntrack);
  ct?.start();
  // The channels open now: closed on SIGINT/SIGTERM (server.close alone waits for them, and fpo keeps its channel open).
  const open = new Set<import('node:net').Socket>();
  const server = createServer((c) => {
    open.add(c);
    c.on('close', () => open.delete(c));
    const reader = new LineReader();
    c.setEncoding('utf8');
    c.on('error', () => undefined);
    ct?.attach(c);
    c.on('data', (d: string) => {
      const ok = reader.push(d, (line) => {
        let m: { type?: unknown; seq?: unknown; state?: unknown; peer?: unknown; why?: unknown; id?: unknown } | null;
        try { m = JSON.parse(line); } catch { return; }
        if (m === null || typeof m !== 'object') return;
        if (ct !== null && typeof m.type === 'string' && m.type.startsWith('ct-')) ct.fromFpo(m);
        else if (m.type === 'probe' && Number.isSafeInteger(m.seq)) c.write(JSON.stringify({ type: 'alive', seq: m.seq, agent: name }) + '\n');
        else if (m.type === 'tunnel') {
          process.stdout.write(JSON.stringify({ time: Date.now(), agent: name, tunnel: m.state, peer: m.peer, why: m.why }) + '\n');
          c.write(JSON.stringify({ type: 'ack' }) + '\n');
        }
      });
      if (!ok) {
        process.stderr.write(JSON.stringify({ time: Date.now(), agent: name, refused: 'tooLong', maxLine: AGENT_MAX_LINE }) + '\n');
        c.destroy();
      }
    });
  });
  // The signals taken before the socket is made: its file appears at bind, and a SIGTERM sent on seeing it
  // must stop the agent cleanly (socket removed, exit 0), not kill it by default.
  const stopped = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  process.stdout.write(JSON.stringify({ time: Date.now(), agent: name, listening: socketPath }) + '\n');
  await stopped;
  ct?.stop();
  server.close();
  for (const c of open) c.destroy();
  if (existsSync(socketPath)) unlinkSync(socketPath);
}
