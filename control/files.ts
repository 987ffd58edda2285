/**
 * Small file and process facts the control side asks in several places
 * (replay's outputs, the service's state and its lock).
 */
import { statSync } from 'node:fs';
import { resolve } from 'node:path';

/** The file's identity, "dev:ino" (the same through a symlink or a hard link), or undefined when it cannot be stat'ed. */
export function fileId(path: string): string | undefined {
  try {
    const st = statSync(path, { bigint: true });
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

/** Whether two paths name one file: the same path once resolved, or (both existing) the same file. */
export function sameFile(a: string, b: string): boolean {
  if (resolve(a) === resolve(b)) return true;
  const x = fileId(a);
  return x !== undefined && x === fileId(b);
}

/** Whether process `pid` (not this one) is alive: kill(pid, 0) says without signalling it. */
export function processRunning(pid: number): boolean {
  if (pid === process.pid || !Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // alive, someone else's
  }
}
