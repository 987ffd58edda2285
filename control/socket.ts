/**
 * What both ends of the control socket agree on: where it is by default and
 * the commands it takes, and how fpo run claims its path safely. Its own
 * module so that `fpo ctl` loads this, not the service (service.ts: the
 * datapath, pino, prom-client).
 *
 * The socket is the switch's whole control plane, so nobody else may reach
 * it, not even for a moment: fpo run binds it under umask 0177 (mode 0600
 * from the start, not chmod-ed after listen), and the default path is in a
 * folder only we can enter ($XDG_RUNTIME_DIR, else TMP/fpo-UID, made 0700
 * and checked to be ours and not a symlink). A path that already exists is
 * taken over only when it is a socket that nothing answers on (a crashed
 * service's); a regular file, a folder, a symlink or a live socket is
 * refused, naming the path.
 */
import { lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { FpoError } from '../datapath/errors.js';

/** The folder of fpo's own for the default socket when there is no $XDG_RUNTIME_DIR. */
export function privateSocketDir(): string {
  return join(tmpdir(), `fpo-${process.getuid?.() ?? 'user'}`);
}

/** The control socket's default path: $FPO_SOCKET, else fpo.sock in $XDG_RUNTIME_DIR, else in TMP/fpo-UID (0700). */
export function defaultSocket(): string {
  if (process.env.FPO_SOCKET) return process.env.FPO_SOCKET;
  if (process.env.XDG_RUNTIME_DIR) return join(process.env.XDG_RUNTIME_DIR, 'fpo.sock');
  return join(privateSocketDir(), 'fpo.sock');
}

/** The requests `fpo run` answers. */
export const COMMANDS = ['ping', 'show', 'dump-flows', 'stats', 'add-flow', 'del-flow', 'set-mapping', 'migrate', 'trace', 'inject', 'bfd', 'capture', 'conntrack', 'firewall', 'dirty-log', 'migrate-vm', 'attach'];

/**
 * Makes `dir` (mode 0700) when missing and checks that it is a real folder
 * (not a symlink), owned by us, that nobody else can enter or write.
 */
export function ensurePrivateDir(dir: string): void {
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new FpoError('FPO_ERR_IO', `${dir}: cannot make the socket's folder: ${(e as Error).message}`, { path: dir });
  }
  const st = lstatSync(dir);
  const uid = process.getuid?.();
  const why = st.isSymbolicLink() ? 'is a symlink' : !st.isDirectory() ? 'is not a folder' : uid !== undefined && st.uid !== uid ? `is owned by uid ${st.uid}, not ${uid}` : (st.mode & 0o077) !== 0 ? `has mode ${(st.mode & 0o777).toString(8)}; expected 700` : null;
  if (why) throw new FpoError('FPO_ERR_IO', `${dir}: the socket's folder ${why}; remove it or give --socket`, { path: dir });
}

/** Whether something accepts connections on the socket at `path` (ECONNREFUSED: nothing; a timeout counts as alive). */
function answers(path: string, timeoutMs = 1000): Promise<boolean | NodeJS.ErrnoException> {
  return new Promise((resolve) => {
    const c = connect(path);
    const t = setTimeout(() => { c.destroy(); resolve(true); }, timeoutMs);
    c.on('connect', () => { clearTimeout(t); c.destroy(); resolve(true); });
    c.on('error', (e: NodeJS.ErrnoException) => { clearTimeout(t); resolve(e.code === 'ECONNREFUSED' ? false : e); });
  });
}

/**
 * Readies `path` for listening: its folder made private when it is the
 * default one; an existing socket that nothing answers on removed; anything
 * else there refused with the path named.
 */
export async function claimSocketPath(path: string): Promise<void> {
  if (dirname(path) === privateSocketDir()) ensurePrivateDir(dirname(path));
  let st;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new FpoError('FPO_ERR_IO', `${path}: cannot use as the control socket: ${(e as Error).message}`, { path });
  }
  if (!st.isSocket()) {
    const what = st.isSymbolicLink() ? 'a symlink' : st.isDirectory() ? 'a folder' : st.isFile() ? 'a regular file' : 'not a socket';
    throw new FpoError('FPO_ERR_IO', `${path}: exists and is ${what}; not removed — give another --socket or remove it`, { path });
  }
  const live = await answers(path);
  if (live === true) throw new FpoError('FPO_ERR_IO', `${path}: a service is listening on this socket already; stop it or give another --socket`, { path });
  if (live !== false) throw new FpoError('FPO_ERR_IO', `${path}: cannot tell whether a service listens here: ${live.message}`, { path });
  // A socket nothing answers on: a service that is gone left it.
  unlinkSync(path);
}
