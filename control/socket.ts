/**
 * What both ends of the control socket agree on: where it is by default and
 * the commands it takes. Its own module so that `fpo ctl` loads this, not
 * the service (service.ts: the datapath, pino, prom-client).
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The control socket's default path: $FPO_SOCKET, else fpo.sock in $XDG_RUNTIME_DIR or the temp folder. */
export function defaultSocket(): string {
  return process.env.FPO_SOCKET ?? join(process.env.XDG_RUNTIME_DIR ?? tmpdir(), 'fpo.sock');
}

/** The requests `fpo run` answers. */
export const COMMANDS = ['ping', 'show', 'dump-flows', 'stats', 'add-flow', 'del-flow', 'set-mapping', 'migrate', 'trace', 'inject', 'bfd'];
