/**
 * Helpers shared by the tests: temporary folders, running the built CLI,
 * and tools from Debian (tshark) that a test needs. A missing tool skips
 * the test with a printed reason — except under CI=true, where it fails,
 * so CI really runs every test.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PacketBatch } from '../datapath/batch.js';
import { CaptureReader } from '../datapath/ports/capture-reader.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const CLI = join(ROOT, 'dist', 'control', 'cli.js');
export const CORPUS = join(ROOT, '..', 'shared', 'corpus', 'tcpdump');
export const FIXTURES = join(ROOT, 'fixtures');

const made: string[] = [];
export function tempDir(tag = 'fpo'): string {
  const d = mkdtempSync(join(tmpdir(), `${tag}-`));
  made.push(d);
  return d;
}
export function cleanTemp(): void {
  while (made.length) rmSync(made.pop()!, { recursive: true, force: true });
}

/** What a test needs of vitest's context to skip itself: `ctx.skip(note)` throws. */
export interface Skippable { skip: (note?: string) => never }

function missing(ctx: Skippable, msg: string): never {
  // Under CI=true a test that cannot run is a failure, so CI really runs every test.
  if (process.env.CI === 'true') throw new Error(`${msg} (CI=true: a skip is a failure)`);
  console.warn(`SKIP: ${msg}`);
  return ctx.skip(msg);
}

/** True when `tool` (a command name, or an absolute path) can be run here. Decides nothing: see needTool. */
export function toolPresent(tool: string): boolean {
  return spawnSync('sh', ['-c', 'command -v "$1"', 'sh', tool], { encoding: 'utf8' }).status === 0;
}

/**
 * The one place that decides whether a test can run with the tools it needs:
 * each tool (a command, or an absolute path such as /usr/lib/frr/bfdd) must
 * run here, else the test is reported as skipped with the reason, or under
 * CI=true fails.
 */
export function needTool(ctx: Skippable, tool: string, reason: string): void {
  if (!toolPresent(tool)) missing(ctx, `${tool} is not installed: ${reason}`);
}

/** The test needs root: otherwise skipped with the reason (a failure under CI=true). */
export function needRoot(ctx: Skippable, reason: string): void {
  if (process.getuid?.() !== 0) missing(ctx, `not root: ${reason}`);
}

export interface CliResult { status: number; stdout: string; stderr: string }

export function runCli(args: string[], opts: { timeout?: number } = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: opts.timeout ?? 60_000 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** tshark -T fields over a capture: one array of field values per frame. */
export function tsharkFields(file: string, fields: string[], filter?: string): string[][] {
  const args = ['-r', file, '-T', 'fields', '-E', 'separator=|', '-E', 'occurrence=a', '-E', 'aggregator=,'];
  if (filter) args.push('-Y', filter);
  for (const f of fields) args.push('-e', f);
  const out = execFileSync('tshark', args, { encoding: 'utf8', maxBuffer: 256 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
  return out.split('\n').filter((l) => l.length > 0).map((l) => l.split('|'));
}

/** tshark's PDML: per frame, the list of (protocol, byte position). */
export function tsharkProtoPositions(file: string): { name: string; pos: number }[][] {
  const out = execFileSync('tshark', ['-r', file, '-T', 'pdml'], { encoding: 'utf8', maxBuffer: 256 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
  const frames: { name: string; pos: number }[][] = [];
  for (const packet of out.split('<packet>').slice(1)) {
    const protos: { name: string; pos: number }[] = [];
    for (const m of packet.matchAll(/<proto name="([^"]+)"[^>]*? pos="(\d+)"/g)) protos.push({ name: m[1], pos: Number(m[2]) });
    frames.push(protos);
  }
  return frames;
}

/** The captured bytes of every record of a capture, in order (fpo's own reader). */
export function captureFrames(path: string): Uint8Array[] {
  const r = new CaptureReader(path);
  const b = new PacketBatch(64);
  const out: Uint8Array[] = [];
  while (r.fill(b, 0) > 0) for (let i = 0; i < b.count; i++) out.push(b.buf.slice(b.off[i], b.off[i] + b.caplen[i]));
  r.close();
  return out;
}
